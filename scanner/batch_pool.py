"""Scan worker processes for `mesoscan batch`: each one loads the model once and scans one video at a time.

Workers are fresh interpreters (`python -m scanner.batch_pool`), never forks: a TensorFlow model used in a parent
hangs a forked child, and the parent of a batch never imports TensorFlow at all. Settings reach a worker through its
environment (`MESOSCAN_FRAMES`, `MESOSCAN_COMPUTE_THREADS`, ...). Tasks go in on the worker's stdin, results come back
on a pipe of their own (JSON lines), so nothing a library prints can corrupt them.

A worker ends on EOF, on SIGTERM (the scan in hand unwinds and its temp files go) and when its parent dies
(`kill -9` of a batch): a watchdog thread notices the new parent and stops the worker the same way.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

STOP_GRACE_S = 15.0
"""How long stopped workers get to clean up before they are killed."""


@dataclass
class Event:
    kind: str
    """`ready` (model loaded), `done` (a result) or `exit` (the worker is gone)."""
    worker: Worker
    key: str | None = None
    doc: dict | None = None
    maxrss_kb: int = 0


@dataclass
class Worker:
    process: subprocess.Popen
    results: Any
    """The read end of the worker's result pipe."""
    task: str | None = None
    """The key of the item it is scanning, None when idle."""
    started_at: float = 0.0
    maxrss_kb: int = 0
    reader: threading.Thread | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid


class WorkerPool:
    """`size` scan workers; `submit` hands an item to an idle one, `events` yields what they report."""

    def __init__(self, size: int, env: dict[str, str], temp_dir: str):
        self.size, self.env, self.temp_dir = size, env, temp_dir
        self.workers: list[Worker] = []
        self.events: queue.Queue[Event] = queue.Queue()
        self.peak_rss_kb = 0

    def start(self) -> WorkerPool:
        for _ in range(self.size):
            self.workers.append(self._spawn())
        return self

    def _spawn(self) -> Worker:
        read_fd, write_fd = os.pipe()
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "scanner.batch_pool", str(write_fd), str(os.getpid()), self.temp_dir],
                stdin=subprocess.PIPE,
                stdout=sys.stderr.fileno(),
                env=self.env,
                pass_fds=(write_fd,),
                start_new_session=True,
            )  # Ctrl-C reaches the batch, which stops its workers itself
        finally:
            os.close(write_fd)
        worker = Worker(process, os.fdopen(read_fd, "rb"))
        worker.reader = threading.Thread(
            target=self._read, args=(worker,), name=f"batch-worker-{process.pid}", daemon=True
        )
        worker.reader.start()
        return worker

    def _read(self, worker: Worker) -> None:
        with worker.results:
            for line in worker.results:
                try:
                    message = json.loads(line)
                except json.JSONDecodeError:
                    continue
                self.events.put(
                    Event(message["event"], worker, message.get("key"), message.get("doc"), message.get("maxrss_kb", 0))
                )
        worker.process.wait()
        self.events.put(Event("exit", worker))

    def idle(self) -> list[Worker]:
        return [w for w in self.workers if w.task is None and w.process.poll() is None]

    def busy(self) -> list[Worker]:
        return [w for w in self.workers if w.task is not None]

    def submit(self, worker: Worker, key: str, kind: str, value: str) -> None:
        assert worker.process.stdin is not None
        worker.task, worker.started_at = key, time.monotonic()
        try:
            worker.process.stdin.write(json.dumps({"key": key, "kind": kind, "value": value}).encode() + b"\n")
            worker.process.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it died: its `exit` event reports the item

    def finished(self, event: Event) -> None:
        """Book-keeping for an event: the worker is idle again (`done`) or replaced (`exit`)."""
        worker = event.worker
        if event.kind == "done":
            worker.task = None
            worker.maxrss_kb = max(worker.maxrss_kb, event.maxrss_kb)
            self.peak_rss_kb = max(self.peak_rss_kb, worker.maxrss_kb)
        elif event.kind == "exit" and worker in self.workers:
            self.workers.remove(worker)

    def replace(self) -> None:
        """Start workers until the pool has its size again (after one died)."""
        while len(self.workers) < self.size:
            self.workers.append(self._spawn())

    def stop(self) -> None:
        """Ask every worker to end (EOF when idle, SIGTERM when scanning); kill those that do not in time."""
        for worker in self.workers:
            with contextlib.suppress(OSError, ValueError):
                worker.process.stdin.close()  # type: ignore[union-attr]
            if worker.task is not None and worker.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for worker in self.workers:
            try:
                worker.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
        for worker in self.workers:
            if worker.reader is not None:
                worker.reader.join(timeout=2)
        self.workers.clear()


# --- the worker process ------------------------------------------------------------------------------------------


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)  # the batch is gone: stop the scan in hand, clean up, exit


def _send(out, message: dict[str, Any]) -> None:
    out.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
    out.flush()


def _serve(out) -> None:
    from scanner.config import ScannerSettings
    from scanner.document import VideoSource
    from scanner.errors import ScanError
    from scanner.pipeline import Scanner
    from scanner.verdict import failed_document
    from serving.config import ServingSettings, load

    scanner = Scanner(load(ScannerSettings), serving_settings=load(ServingSettings))  # the batch's environment
    try:
        with contextlib.suppress(ScanError):
            scanner.model_info()  # load the model now; a model that cannot load fails each item with its code
        _send(out, {"event": "ready", "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss})
        for line in sys.stdin.buffer:
            task = json.loads(line)
            try:
                scan = scanner.scan_file if task["kind"] == "file" else scanner.scan_url
                doc = scan(task["value"])
            except Exception as exc:  # a bug, not a property of the video: reported for this item, the batch goes on
                doc = failed_document(
                    source=VideoSource.unknown(task["value"] if task["kind"] == "url" else None),
                    model=None,
                    code="internal_error",
                    message=f"the scan stopped with an internal error: {type(exc).__name__}",
                )
            _send(
                out,
                {
                    "event": "done",
                    "key": task["key"],
                    "doc": doc,
                    "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                },
            )
    finally:
        scanner.close()


def main(argv: list[str]) -> None:
    """`python -m scanner.batch_pool RESULT_FD PARENT_PID BATCH_TEMP_DIR` (started by WorkerPool)."""
    out_fd, parent_pid, temp_dir = int(argv[0]), int(argv[1]), argv[2]
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="parent-watch", daemon=True).start()
    from serving.quiet import filter_stderr

    filter_stderr()
    try:
        with os.fdopen(out_fd, "wb") as out:
            _serve(out)
    except KeyboardInterrupt:
        sys.exit(143)
    except BrokenPipeError:
        sys.exit(0)
    finally:
        if os.getppid() != parent_pid:  # the batch was killed: its temp dir is left to its workers
            shutil.rmtree(temp_dir, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
