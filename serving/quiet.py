"""Drop TensorFlow's C++ start-up chatter from a command's stderr, keep everything else.

TensorFlow 2.21 logs several lines at import and at first device probe (oneDNN notice, CUDA probing,
CPU feature guard) before absl logging is initialised, so `TF_CPP_MIN_LOG_LEVEL` cannot silence them.
The `mesoscan` command routes file descriptor 2 through a pipe and filters those lines out.
"""

from __future__ import annotations

import atexit
import os
import re
import sys
import threading

NOISE = re.compile(
    rb"^(WARNING: All log messages before absl::InitializeLog|[IE]0000 \S+ +\d+ "
    rb"(port|cudart_stub|cpu_feature_guard|cuda_platform|cuda_executor|cuda_diagnostics)\.cc:"
    rb"|To enable the following instructions: |INFO: Created TensorFlow Lite XNNPACK delegate for CPU)"
)


def filter_stderr() -> None:
    """Route fd 2 through a filter thread until the process exits. Safe to call once per process."""
    if getattr(filter_stderr, "_installed", False):
        return
    filter_stderr._installed = True  # type: ignore[attr-defined]
    original = os.dup(2)
    read_end, write_end = os.pipe()
    sys.stderr.flush()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        pending = b""
        while chunk := os.read(read_end, 65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            out = b"".join(line + b"\n" for line in lines if not NOISE.match(line))
            # A partial line (a progress bar redrawn with \r) goes out at once unless it may be noise.
            if pending and not NOISE.match(pending) and not pending.startswith((b"I0000", b"E0000", b"WARN", b"To ")):
                out, pending = out + pending, b""
            if out:
                os.write(original, out)
        if pending and not NOISE.match(pending):
            os.write(original, pending)

    thread = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    thread.start()

    def restore() -> None:
        sys.stderr.flush()
        os.dup2(original, 2)  # closes the pipe's last write end: the pump sees EOF and drains
        thread.join(timeout=2)

    atexit.register(restore)
