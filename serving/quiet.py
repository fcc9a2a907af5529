"""Drop TensorFlow's and LiteRT's native start-up lines from a short command's stderr, keep everything else.

TensorFlow 2.21 writes several lines when it is imported and at its first device probe (oneDNN notice, CUDA
probing, CPU feature guard), and LiteRT one when it makes its XNNPACK delegate. They come before absl logging is
initialised, so `TF_CPP_MIN_LOG_LEVEL` cannot silence them. `native_output_filtered()` routes file descriptor 2
through a filter only while such a step runs. `mesoscan` calls `quiet_native_startup()` for its short commands
(never for `serve` or `worker`, whose stderr is a log their child processes share): from then on the first
`import tensorflow` of the process, wherever it happens, and every `startup_step()` block run filtered. Outside
those steps fd 2 is the process's own (a terminal stays a terminal, so progress bars show).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from types import ModuleType

NOISE = re.compile(
    rb"^(WARNING: All log messages before absl::InitializeLog|[IE]0000 \S+ +\d+ "
    rb"(port|cudart_stub|cpu_feature_guard|cuda_platform|cuda_executor|cuda_diagnostics)\.cc:"
    rb"|To enable the following instructions: |INFO: Created TensorFlow Lite XNNPACK delegate for CPU)"
)
MAYBE_NOISE = (b"I0000", b"E0000", b"WARN", b"To ", b"INFO")
"""Starts of partial lines held back until their end shows whether they are noise."""


def _pump(read_end: int, out: int) -> None:
    """Copy `read_end` to `out` until every writer has closed it, leaving out NOISE lines."""
    pending = b""
    while chunk := os.read(read_end, 65536):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        data = b"".join(line + b"\n" for line in lines if not NOISE.match(line))
        # A partial line (a progress bar redrawn with \r) goes out at once unless it may be noise.
        if pending and not pending.startswith(MAYBE_NOISE):
            data, pending = data + pending, b""
        if data:
            os.write(out, data)
    if pending and not NOISE.match(pending):
        os.write(out, pending)
    os.close(read_end)
    os.close(out)


_lock = threading.Lock()
_depth = 0
_saved_fd = -1
_pump_thread: threading.Thread | None = None


@contextmanager
def native_output_filtered() -> Iterator[None]:
    """While the block runs, fd 2 goes through a filter thread that drops NOISE lines; then fd 2 is restored.

    Blocks may overlap (from several threads): fd 2 is restored when the last one ends. Output written meanwhile
    by other threads passes through unchanged and at once. The thread drains until every copy of the pipe's write
    end is closed, so a child process started meanwhile keeps a working stderr.
    """
    global _depth, _saved_fd, _pump_thread
    with _lock:
        if _depth == 0:
            sys.stderr.flush()
            _saved_fd = os.dup(2)
            read_end, write_end = os.pipe()
            _pump_thread = threading.Thread(
                target=_pump, args=(read_end, os.dup(_saved_fd)), name="stderr-filter", daemon=True
            )
            _pump_thread.start()
            os.dup2(write_end, 2)
            os.close(write_end)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                sys.stderr.flush()
                os.dup2(_saved_fd, 2)  # closes fd 2's copy of the write end: the thread drains and ends
                os.close(_saved_fd)
                _pump_thread.join(timeout=1)  # what the block wrote comes out before what follows it


class _QuietLoader(importlib.abc.Loader):
    """TensorFlow's own loader, run inside `native_output_filtered()` together with the first device probe."""

    def __init__(self, loader: importlib.abc.Loader):
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = module.__spec__.loader = self.loader  # what TensorFlow's code sees is its own loader
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # its later INFO and WARNING lines too
        with native_output_filtered():
            self.loader.exec_module(module)
            module.config.list_physical_devices()  # the CUDA probe, which logs; thread pools stay configurable


class _QuietTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path=None, target=None) -> importlib.machinery.ModuleSpec | None:
        if fullname != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once: the real finders answer from here on
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


_quiet = False


def quiet_native_startup() -> None:
    """Filter this process's native start-up lines: TensorFlow's (at its first import, if it is not imported yet)
    and those of `startup_step()` blocks."""
    global _quiet
    _quiet = True
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietTensorFlow) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlow())


def startup_step() -> AbstractContextManager:
    """A block that starts a native library: `native_output_filtered()` after `quiet_native_startup()`, else
    nothing."""
    return native_output_filtered() if _quiet else nullcontext()


def filter_stderr() -> None:
    """Route fd 2 through the filter until the process exits (a batch worker process, whose stderr is a pipe)."""
    if getattr(filter_stderr, "_installed", False):
        return
    filter_stderr._installed = True  # type: ignore[attr-defined]
    window = native_output_filtered()
    window.__enter__()

    import atexit

    atexit.register(window.__exit__, None, None, None)
