"""`mesoscan batch`: scan a list of video URLs, in worker processes here or through a gateway, resumably.

Outputs in `--out DIR`: `results.jsonl` (the journal: one complete line per finished row, appended, flushed and
fsynced as items finish, rewritten in input order when the batch ends), `results.csv`, `report.html` and
`batch.json` (the settings the results were made with; a later run with other settings is refused). Re-running the
same command resumes: rows with a verdict are not scanned again.

Exit status: 0 every row got a verdict, 1 some failed, 2 usage error (bad option, unreadable or empty input,
unwritable or mismatched DIR), 3 the gateway cannot be reached or refuses the key, 10 `--fail-on` matched,
130 Ctrl-C, 143 SIGTERM (the journal keeps every finished row).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import heapq
import itertools
import json
import os
import queue
import signal
import sys
import tempfile
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from scanner.batch_input import FORMATS, BatchInput, InputError, Row, Target, read_input, target_for
from scanner.errors import ScanError
from serving.files import atomic_write_bytes, private_temp_dir

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_GATEWAY, EXIT_FAIL_ON = 0, 1, 2, 3, 10
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}
RESULTS, RESULTS_CSV, REPORT, MANIFEST = "results.jsonl", "results.csv", "report.html", "batch.json"
WORKER_MEMORY_MB = 1500
"""About what one scan worker needs at its peak (measured by tests/bench/bench_batch.py, with headroom): the
default concurrency never plans more workers than the available memory holds."""
RETRY_BACKOFF_S, RETRY_BACKOFF_MAX_S = 1.0, 30.0
MAX_WORKER_DEATHS = 5
"""Workers that die without a video in hand (they cannot start) before the batch gives up."""


class BatchUsageError(click.ClickException):
    exit_code = EXIT_USAGE


class BatchGatewayError(click.ClickException):
    exit_code = EXIT_GATEWAY


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _available_mb() -> int:
    """Memory the kernel can give without swapping (MemAvailable: free memory plus reclaimable caches)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return WORKER_MEMORY_MB * _cores()


def default_concurrency() -> int:
    """One worker per core, no more than the available memory holds, at least one."""
    return max(1, min(_cores(), _available_mb() // WORKER_MEMORY_MB))


# --- the journal -------------------------------------------------------------------------------------------------


def _line(entry: dict) -> bytes:
    try:
        return json.dumps(entry, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"
    except UnicodeEncodeError:  # a lone surrogate from the input: escaped instead
        return json.dumps(entry, separators=(",", ":")).encode("ascii") + b"\n"


class Journal:
    """`results.jsonl`: complete lines appended with one write and an fsync each, so a batch killed at any instant
    loses only the items in flight; a torn last line (a crash mid-write) is dropped when read."""

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def load(self) -> list[dict]:
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            os.truncate(self.path, end)
        entries = []
        for line in data[:end].splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict) and isinstance(entry.get("result"), dict) and "row" in entry:
                    entries.append(entry)
        return entries

    def append(self, entries: list[dict]) -> None:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        data = memoryview(b"".join(_line(e) for e in entries))
        while data:
            written = os.write(self._fd, data)
            data = data[written:]
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def rewrite(self, entries: list[dict]) -> None:
        """The final file, in input order, replacing the journal atomically."""
        self.close()
        atomic_write_bytes(self.path, b"".join(_line(entry) for entry in entries))


# --- items -------------------------------------------------------------------------------------------------------


@dataclass
class Item:
    """One video to scan, for every row that names it (after normalisation)."""

    target: Target
    rows: list[Row]
    doc: dict | None = None
    attempts: int = 0
    """Scans tried, over every run."""
    tries: int = 0
    """Scans tried in this run."""
    budget_from: int = 0
    """Attempts before this run's retry budget began (`--retry-failed` gives a failed item a fresh one)."""
    report_url: str | None = None

    @property
    def key(self) -> str:
        return self.target.key


def _entry(row: Row, url: str | None, doc: dict, attempts: int, report_url: str | None) -> dict[str, Any]:
    return {
        "row": row.number,
        "input": row.fields,
        "url": url,
        "attempts": attempts,
        "report_url": report_url,
        "result": doc,
    }


def _failed(url: Any, code: str, message: str, retryable: bool = False) -> dict:
    from scanner.document import VideoSource
    from scanner.verdict import failed_document

    source = VideoSource.unknown(url if isinstance(url, str) else None)
    return failed_document(source=source, model=None, code=code, message=message, retryable=retryable)


@dataclass
class Options:
    input: str
    out_dir: Path
    format: str | None = None
    model: str | None = None
    frames: int | None = None
    keyframes: bool | None = None
    concurrency: int | None = None
    retries: int = 2
    retry_failed: bool = False
    gateway: str | None = None
    fail_on: str = "never"


@dataclass
class Outcome:
    exit_code: int
    labels: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)
    scanned: int = 0
    """Videos scanned (or asked of the gateway) in this run, retries not counted."""
    elapsed_s: float = 0.0
    peak_worker_rss_mb: float | None = None
    workers: int = 0
    startup_s: float | None = None
    """In-process: from starting the workers to every one of them having its model loaded."""


class _Stop:
    """SIGINT and SIGTERM only set a flag: the batch loop finishes the journal line in hand and stops."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __bool__(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    def __enter__(self) -> _Stop:
        import threading

        if threading.current_thread() is threading.main_thread():
            for signum in EXIT_SIGNAL:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


class Progress:
    """One bar on a terminal (done/failed/remaining, the items in hand), plain lines otherwise."""

    def __init__(self, total: int, done: int, failed: int, terminal: bool):
        self.total, self.done, self.failed = total, done, failed
        self.current: dict[str, str] = {}
        self.bar = None
        if terminal:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                initial=done + failed,
                unit="row",
                file=sys.stderr,
                dynamic_ncols=True,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}] {postfix}",
            )
            self._refresh()

    def _refresh(self) -> None:
        if self.bar is not None:
            now = ", ".join(self.current.values())
            left = self.total - self.done - self.failed
            self.bar.set_postfix_str(
                f"done {self.done} failed {self.failed} left {left}" + (f" | now: {now}" if now else "")
            )

    def started(self, item: Item) -> None:
        value = item.target.value.rstrip("/")
        self.current[item.key] = (value.rsplit("/", 1)[-1] or value)[:40]
        self._refresh()

    def finished(self, item: Item) -> None:
        self.current.pop(item.key, None)
        doc = item.doc or {}
        for row in item.rows:
            if doc.get("status") == "done":
                self.done += 1
                verdict = doc["verdict"]
                p = verdict["fake_probability"]
                text = f"{verdict['label']}{f' {p:.2f}' if p is not None else ''}"
            else:
                self.failed += 1
                text = f"failed [{doc['error']['code']}] {doc['error']['message']}"
            line = f"[{self.done + self.failed}/{self.total}] row {row.number} {item.target.value}: {text}"
            if self.bar is not None:
                self.bar.update(1)
            else:
                click.echo(line, err=True)
        self._refresh()

    def note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            click.echo(text, err=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --- the batch ---------------------------------------------------------------------------------------------------


class Batch:
    def __init__(self, options: Options, terminal: bool = False):
        self.options = options
        self.terminal = terminal
        self.out = options.out_dir
        self.journal = Journal(self.out / RESULTS)
        self.stop = _Stop()
        self.items: dict[str, Item] = {}
        self.invalid: dict[int, dict] = {}
        self.row_items: list[tuple[Row, Item | None]] = []
        self.settings = None
        self.model_label = ""
        self.retry_heap: list[tuple[float, int, Item]] = []
        self._seq = itertools.count()
        self.progress: Progress | None = None
        self.outcome = Outcome(EXIT_OK)
        self.resumed = False

    # preparation: everything that can be wrong with the command is found before any scan -----------------------

    def prepare(self) -> None:
        o = self.options
        if o.gateway and (o.frames is not None or o.keyframes or o.concurrency is not None):
            raise BatchUsageError(
                "--frames, --keyframes and --concurrency apply to in-process scans; with --gateway "
                "the gateway's workers decide them"
            )
        try:
            self.input = read_input(o.input, o.format)  # type: ignore[arg-type]
        except InputError as exc:
            raise BatchUsageError(str(exc)) from None
        fingerprint = self._fingerprint()
        self._claim_out_dir(fingerprint)
        self._build_items(self.input)
        self._resume(self.journal.load())

    def _fingerprint(self) -> dict[str, Any]:
        o = self.options
        if o.gateway:
            self.model_label = o.model or "the gateway's default"
            return {"mode": "gateway", "gateway": o.gateway.strip().rstrip("/"), "model": {"name": o.model}}
        from scanner.config import ScannerSettings
        from serving.config import ServingSettings, SettingsError, load
        from serving.errors import ServingError
        from serving.registry import get_model

        overrides = {k: v for k, v in {"frames": o.frames, "keyframes": o.keyframes}.items() if v is not None}
        try:
            self.settings = load(ScannerSettings, **overrides)
            serving = load(ServingSettings)
            spec = get_model(o.model or serving.model, serving)
        except (SettingsError, ServingError) as exc:
            raise BatchUsageError(str(exc)) from None
        self.model_label = f"{spec.name} v{spec.version}"
        return {
            "mode": "in-process",
            "gateway": None,
            "model": {"name": spec.name, "version": spec.version},
            "frames": self.settings.frames,
            "keyframes": self.settings.keyframes,
        }

    def _claim_out_dir(self, fingerprint: dict) -> None:
        manifest = self.out / MANIFEST
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            if manifest.exists():
                earlier = json.loads(manifest.read_text()).get("settings", {})
                if earlier != fingerprint:
                    raise BatchUsageError(
                        f"{self.out} holds results made with other settings ({_describe(earlier)}), not "
                        f"{_describe(fingerprint)}: results of different models or frame counts are never mixed "
                        "in one directory; use another --out"
                    )
            elif (self.out / RESULTS).exists():
                raise BatchUsageError(
                    f"{self.out} has a {RESULTS} but no {MANIFEST}: not a batch directory "
                    "this command can resume; use another --out"
                )
            else:
                self._write_manifest(
                    {"settings": fingerprint, "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
                )
            probe = tempfile.NamedTemporaryFile(dir=self.out, prefix=".write-check-")  # noqa: SIM115
            probe.close()
        except (OSError, json.JSONDecodeError) as exc:
            raise BatchUsageError(
                f"cannot use {self.out} as the output directory: {getattr(exc, 'strerror', None) or exc}"
            ) from None

    def _write_manifest(self, data: dict) -> None:
        atomic_write_bytes(self.out / MANIFEST, (json.dumps(data, indent=2) + "\n").encode())

    def _build_items(self, batch_input: BatchInput) -> None:
        policy = None
        if self.settings is not None:
            from scanner.netguard import AddressPolicy

            policy = AddressPolicy.from_settings(self.settings)
        for row in batch_input.rows:
            try:
                target = target_for(row, policy, allow_local=self.options.gateway is None)
            except ScanError as exc:
                self.invalid[row.number] = _failed(row.url, exc.code, exc.message)
                self.row_items.append((row, None))
                continue
            item = self.items.get(target.key)
            if item is None:
                item = self.items[target.key] = Item(target, [])
            item.rows.append(row)
            self.row_items.append((row, item))

    def _resume(self, journal: list[dict]) -> None:
        o = self.options
        self.resumed = bool(journal)
        earlier = {e["url"]: e for e in journal if isinstance(e.get("url"), str)}
        for item in self.items.values():
            entry = earlier.get(item.key)
            if entry is None:
                continue
            doc = entry["result"]
            item.attempts = int(entry.get("attempts") or 1)
            if doc.get("status") == "done":
                item.doc, item.report_url = doc, entry.get("report_url")
                continue
            retryable = bool((doc.get("error") or {}).get("retryable"))
            if o.retry_failed:
                item.budget_from = item.attempts
            elif not (retryable and item.attempts <= o.retries):
                item.doc, item.report_url = doc, entry.get("report_url")
        journaled_invalid = {e["row"] for e in journal if e.get("url") is None}
        fresh = [
            (row, doc)
            for (row, item) in self.row_items
            if item is None
            for doc in [self.invalid[row.number]]
            if row.number not in journaled_invalid
        ]
        if fresh:
            self.journal.append([_entry(row, None, doc, 0, None) for row, doc in fresh])

    # running ----------------------------------------------------------------------------------------------------

    def run(self) -> Outcome:
        started = time.monotonic()
        todo = [item for item in self.items.values() if item.doc is None]
        done = sum(
            1
            for _, item in self.row_items
            if item is not None and item.doc is not None and item.doc["status"] == "done"
        )
        failed = len(self.row_items) - done - sum(len(item.rows) for item in todo)
        if self.resumed:
            click.echo(
                f"{len(self.row_items)} rows, {len(self.items)} distinct videos; "
                f"{len(self.row_items) - sum(len(i.rows) for i in todo)} rows already have a result "
                f"in {self.out}, {len(todo)} videos to scan",
                err=True,
            )
        self.progress = Progress(len(self.row_items), done, failed, self.terminal)
        try:
            with self.stop:
                if todo and self.options.gateway:
                    self._run_gateway(todo)
                elif todo:
                    self._run_local(todo)
        finally:
            self.progress.close()
            self.journal.close()
        self.outcome.elapsed_s = time.monotonic() - started
        if self.stop:
            self.outcome.exit_code = EXIT_SIGNAL[self.stop.signum]  # type: ignore[index]
            click.echo(
                f"stopped: every finished row is in {self.out / RESULTS}; run the same command again to resume",
                err=True,
            )
            return self.outcome
        self._finish_outputs()
        return self.outcome

    def _done(self, item: Item, doc: dict, retry: bool = True) -> None:
        """A scan's result: retried later when it may be transient, else journaled for each of its rows."""
        item.attempts += 1
        item.tries += 1
        if item.tries == 1:
            self.outcome.scanned += 1
        error = doc.get("error") or {}
        retries_left = item.attempts - item.budget_from <= self.options.retries  # over every run of the batch
        if retry and doc["status"] == "failed" and error.get("retryable") and retries_left:
            delay = min(RETRY_BACKOFF_S * 2 ** (item.tries - 1), RETRY_BACKOFF_MAX_S)
            assert self.progress is not None
            self.progress.note(
                f"retrying {item.target.value} in {delay:g} s ({error.get('code')}: {error.get('message')})"
            )
            heapq.heappush(self.retry_heap, (time.monotonic() + delay, next(self._seq), item))
            return
        item.doc = doc
        self.journal.append([_entry(row, item.key, doc, item.attempts, item.report_url) for row in item.rows])
        assert self.progress is not None
        self.progress.finished(item)

    def _worker_env(self, workers: int, temp_dir: str) -> dict[str, str]:
        assert self.settings is not None
        budget = self.settings.compute_threads or _cores()
        env = dict(os.environ)
        env.update(
            {
                "MESOSCAN_FRAMES": str(self.settings.frames),
                "MESOSCAN_KEYFRAMES": "1" if self.settings.keyframes else "0",
                "MESOSCAN_COMPUTE_THREADS": str(max(1, budget // workers)),
                "MESOSCAN_TEMP_DIR": temp_dir,
                "MESOSCAN_MODEL": self.model_label.rsplit(" v", 1)[0],
                "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
            }
        )
        return env

    def _run_local(self, todo: list[Item]) -> None:
        assert self.settings is not None
        with private_temp_dir(self.settings.temp_dir, "mesoscan-batch-") as temp_dir:  # the workers' temp files
            self._run_workers(todo, str(temp_dir))

    def _run_workers(self, todo: list[Item], temp_dir: str) -> None:
        from scanner.batch_pool import WorkerPool

        assert self.progress is not None
        size = min(self.options.concurrency or default_concurrency(), len(todo))
        waiting: deque[Item] = deque(todo)
        in_hand: dict[str, Item] = {}
        deaths = ready = 0
        pool = WorkerPool(size, self._worker_env(size, temp_dir), temp_dir)
        self.outcome.workers = size
        try:
            started = time.monotonic()
            pool.start()
            while (waiting or self.retry_heap or in_hand) and not self.stop:
                while self.retry_heap and self.retry_heap[0][0] <= time.monotonic():
                    waiting.append(heapq.heappop(self.retry_heap)[2])
                for worker in pool.idle():
                    if not waiting:
                        break
                    item = waiting.popleft()
                    in_hand[item.key] = item
                    pool.submit(worker, item.key, item.target.kind, item.target.value)
                    self.progress.started(item)
                try:
                    event = pool.events.get(timeout=0.2)
                except queue.Empty:
                    continue
                task = event.worker.task
                pool.finished(event)
                if event.kind == "ready":
                    ready += 1
                    if ready == size and self.outcome.startup_s is None:
                        self.outcome.startup_s = round(time.monotonic() - started, 2)
                elif event.kind == "done" and event.key in in_hand:
                    self._done(in_hand.pop(event.key), event.doc)  # type: ignore[arg-type]
                elif event.kind == "exit" and not self.stop:
                    status = event.worker.process.returncode
                    if task is not None and task in in_hand:
                        item = in_hand.pop(task)
                        self._done(
                            item,
                            _failed(
                                item.target.value,
                                "internal_error",
                                f"the scan worker died (exit status {status}) while scanning this video",
                                retryable=True,
                            ),
                        )
                    else:
                        deaths += 1
                        if deaths > MAX_WORKER_DEATHS:
                            raise click.ClickException(
                                f"the scan workers keep dying (last exit status {status}); see the messages above"
                            )
                    if waiting or self.retry_heap or in_hand:
                        pool.replace()
        finally:
            self.outcome.peak_worker_rss_mb = round(pool.peak_rss_kb / 1024, 1) if pool.peak_rss_kb else None
            pool.stop()

    def _run_gateway(self, todo: list[Item]) -> None:
        from scanner.batch_gateway import Gateway, GatewayError, GatewayRequestError, RateLimitedError

        assert self.progress is not None
        assert self.options.gateway is not None
        gateway = Gateway(
            self.options.gateway,
            os.environ.get("MESOSCAN_API_KEY") or None,
            should_stop=lambda: bool(self.stop),
            log=self.progress.note,
        )
        try:
            limit = gateway.check()
            batches: list[tuple[str, list[Item]]] = []
            # (chunk, 429s met): a chunk refused twice is split, since a gateway may charge its rate limit per URL
            chunks = deque((todo[start : start + limit], 0) for start in range(0, len(todo), limit))
            while chunks:
                if self.stop:
                    return
                chunk, refused = chunks.popleft()
                try:
                    answer = gateway.submit(
                        [item.target.value for item in chunk], self.options.model, raise_429=len(chunk) > 1
                    )
                except RateLimitedError:
                    if refused == 0:
                        chunks.appendleft((chunk, 1))
                    else:
                        half = len(chunk) // 2
                        self.progress.note(
                            f"the gateway's rate limit refuses {len(chunk)} URLs at once: sending "
                            f"{half} and {len(chunk) - half}"
                        )
                        chunks.extendleft([(chunk[half:], 0), (chunk[:half], 0)])
                    continue
                model = answer.get("model") or {}
                if model.get("name"):
                    self.model_label = f"{model['name']} v{model.get('version')}"
                batches.append((answer["status_url"], chunk))
                for item in chunk:
                    self.progress.started(item)
            delay = 0.5
            while batches and not self.stop:
                gateway._sleep(delay)
                progressed = False
                for status_url, chunk in list(batches):
                    if self.stop:
                        return
                    status = gateway.get(status_url)
                    open_items = 0
                    for item, answer in zip(chunk, status["items"], strict=True):
                        if item.doc is not None:
                            continue
                        doc = self._gateway_doc(gateway, item, answer)
                        if doc is None:
                            open_items += 1
                            continue
                        self._done(item, doc, retry=False)  # the gateway retries transient failures itself
                        progressed = True
                    if not open_items:
                        batches.remove((status_url, chunk))
                delay = 0.5 if progressed else min(delay * 1.5, 10.0)
        except GatewayError as exc:
            if self.stop:
                return
            raise BatchGatewayError(str(exc)) from None
        except GatewayRequestError as exc:
            raise BatchUsageError(str(exc)) from None

    def _gateway_doc(self, gateway, item: Item, answer: dict) -> dict | None:
        from scanner.verdict import schema

        status = answer.get("status")
        if status == "rejected":
            error = answer.get("error") or {}
            codes = schema()["properties"]["error"]["properties"]["code"]["enum"]
            code = error.get("code") if error.get("code") in codes else "invalid_url"
            return _failed(
                item.target.value, code, f"row {item.rows[0].number}: rejected by the gateway: {error.get('message')}"
            )
        if status not in ("done", "failed"):
            return None
        scan = gateway.scan(answer["scan_id"])
        item.report_url = answer.get("report_url") or scan.get("report_url")
        result = scan.get("result")
        if not isinstance(result, dict):
            return _failed(item.target.value, "internal_error", "the gateway returned no verdict document")
        return result

    # the end ----------------------------------------------------------------------------------------------------

    def entries(self) -> list[dict]:
        out = []
        for row, item in self.row_items:
            if item is None:
                out.append(_entry(row, None, self.invalid[row.number], 0, None))
            else:
                assert item.doc is not None
                out.append(_entry(row, item.key, item.doc, item.attempts, item.report_url))
        return out

    def _finish_outputs(self) -> None:
        from scanner.batch_report import label_of, write_csv, write_html

        entries = self.entries()
        gateway = self.options.gateway is not None
        self.journal.rewrite(entries)
        write_csv(self.out / RESULTS_CSV, entries, self.input.columns, gateway)
        finished_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        write_html(
            self.out / REPORT,
            entries,
            {
                "model": self.model_label,
                "gateway": self.options.gateway,
                "frames": self.settings.frames if self.settings else None,
                "keyframes": self.settings.keyframes if self.settings else False,
                "finished_at": finished_at,
            },
        )
        labels = Counter(label_of(e["result"]) for e in entries)
        failures = Counter(e["result"]["error"]["code"] for e in entries if e["result"]["status"] == "failed")
        self.outcome.labels, self.outcome.failures = labels, failures
        manifest = json.loads((self.out / MANIFEST).read_text())
        manifest["last_run"] = {
            "finished_at": finished_at,
            "rows": len(entries),
            "labels": dict(labels),
            "failures": dict(failures),
            "scanned": self.outcome.scanned,
            "elapsed_s": round(self.outcome.elapsed_s, 2),
            "workers": self.outcome.workers,
            "peak_worker_rss_mb": self.outcome.peak_worker_rss_mb,
            "workers_startup_s": self.outcome.startup_s,
        }
        self._write_manifest(manifest)
        matched = {"fake": {"fake"}, "uncertain": {"fake", "uncertain"}, "never": set()}[self.options.fail_on]
        if any(labels.get(label) for label in matched):
            self.outcome.exit_code = EXIT_FAIL_ON
        elif labels.get("failed"):
            self.outcome.exit_code = EXIT_FAILED


def _describe(fingerprint: dict) -> str:
    model = fingerprint.get("model") or {}
    if fingerprint.get("mode") == "gateway":
        return f"gateway {fingerprint.get('gateway')}, model {model.get('name') or 'default'}"
    return (
        f"model {model.get('name')} v{model.get('version')}, {fingerprint.get('frames')} frames"
        f"{', key frames only' if fingerprint.get('keyframes') else ''}"
    )


def summary(batch: Batch, outcome: Outcome) -> str:
    labels = ", ".join(f"{label} {n}" for label, n in outcome.labels.most_common()) or "none"
    lines = [f"{sum(outcome.labels.values())} rows: {labels}"]
    if outcome.failures:
        lines.append("failures: " + ", ".join(f"{code} {n}" for code, n in outcome.failures.most_common()))
    rate = outcome.scanned / (outcome.elapsed_s / 60) if outcome.elapsed_s > 0 and outcome.scanned else 0.0
    workers = f", {outcome.workers} workers" if outcome.workers else ""
    memory = f", peak {outcome.peak_worker_rss_mb:.0f} MiB per worker" if outcome.peak_worker_rss_mb else ""
    lines.append(
        f"scanned {outcome.scanned} videos in {outcome.elapsed_s:.1f} s ({rate:.1f} videos/min{workers}{memory})"
    )
    lines.append(f"results: {batch.out / RESULTS}, {batch.out / RESULTS_CSV}, {batch.out / REPORT}")
    return "\n".join(lines)


def run_batch(options: Options, terminal: bool = False) -> tuple[Batch, Outcome]:
    batch = Batch(options, terminal)
    batch.prepare()
    return batch, batch.run()


@click.command()
@click.argument("input_path", metavar="INPUT")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Directory for results.jsonl, results.csv and report.html (re-run to resume).",
)
@click.option(
    "--format",
    "input_format",
    type=click.Choice(FORMATS),
    default=None,
    help="Input format (default: from the extension; standard input: jsonl if it starts with {, else txt).",
)
@click.option("--model", "model_name", default=None, help="Registered model (default: MESOSCAN_MODEL).")
@click.option("--frames", type=click.IntRange(1, 1024), default=None, help="Frames to sample per video (default 32).")
@click.option("--keyframes", is_flag=True, default=None, help="Decode key frames only (fast mode).")
@click.option(
    "--concurrency",
    type=click.IntRange(1, 64),
    default=None,
    help="Videos scanned at once, one worker process each (default: the cores the memory allows).",
)
@click.option(
    "--retries",
    type=click.IntRange(0, 10),
    default=2,
    show_default=True,
    help="Retries of a transient failure (network, a busy model), with backoff.",
)
@click.option("--retry-failed", is_flag=True, help="Scan rows that failed in an earlier run again.")
@click.option(
    "--gateway",
    default=None,
    metavar="URL",
    help="Scan through a MesoScan gateway (POST /api/v1/batches); API key from MESOSCAN_API_KEY.",
)
@click.option(
    "--fail-on",
    type=click.Choice(["fake", "uncertain", "never"]),
    default="never",
    show_default=True,
    help="Exit with status 10 when a video is labelled fake (or fake or uncertain).",
)
def batch(
    input_path: str,
    out_dir: Path,
    input_format: str | None,
    model_name: str | None,
    frames: int | None,
    keyframes: bool | None,
    concurrency: int | None,
    retries: int,
    retry_failed: bool,
    gateway: str | None,
    fail_on: str,
) -> None:
    """Scan every video URL of INPUT (a text list, a CSV with a `url` column, JSONL; `-` for standard input).

    Exit status: 0 every row got a verdict, 1 some failed, 2 usage error, 3 gateway unreachable or key refused,
    10 --fail-on matched, 130/143 interrupted (re-run the same command to resume).
    """
    options = Options(
        input_path,
        out_dir,
        input_format,
        model_name,
        frames,
        keyframes,
        concurrency,
        retries,
        retry_failed,
        gateway,
        fail_on,
    )
    terminal = sys.stderr.isatty() or sys.stdout.isatty()  # `mesoscan` routes stderr through a filter pipe
    batch_, outcome = run_batch(options, terminal)
    if outcome.exit_code not in EXIT_SIGNAL.values():
        click.echo(summary(batch_, outcome))
    sys.exit(outcome.exit_code)
