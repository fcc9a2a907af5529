"""The Celery app and the scan task: at-least-once delivery made exactly-once in effect by the scan record.

A delivery claims its scan (see `server.jobs`), runs the video pipeline, and stores the verdict document. It is safe
to run twice: a finished scan is never redone, and a message that no longer owns its scan is dropped. Failures the
document marks `retryable` are retried with exponential backoff; the attempt counter (deliveries that started,
crashes included) ends a scan as `failed` once `max_attempts` is used up, so a video that kills workers cannot loop.

`ScanApp` is the Celery app of one gateway or worker, made from that process's `Settings` and configured when it is
made (Celery's app factory; the scan task is a `shared_task`, so every app has it). The model is loaded and TF
Serving channels are opened after the fork (`worker_process_init`), never at import: a TensorFlow model used before
fork hangs the child.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from celery import Celery, current_app, shared_task, signals
from celery.exceptions import SoftTimeLimitExceeded

from server import jobs
from server.config import ServerSettings, Settings
from server.db import session_scope

if TYPE_CHECKING:
    from scanner.pipeline import Scanner
    from server.recovery import Recovery

log = logging.getLogger(__name__)

TASK_NAME = "mesoscan.scan"
_DOWNLOAD_STAGES = {"resolving", "downloading", "probing", "done"}


def celery_config(settings: ServerSettings) -> dict:
    from server.health import is_redis

    redis = is_redis(settings.broker_url)
    return {
        "broker_url": settings.broker_url,
        "result_backend": None,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": settings.queue,
        # The scan task's delivery: acknowledged once it ends, redelivered when its worker dies.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": settings.worker_prefetch,
        "worker_concurrency": settings.worker_concurrency,
        "task_soft_time_limit": settings.task_soft_time_limit_s,
        "task_time_limit": settings.task_time_limit_s,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 3,
        "broker_transport_options": (
            {
                "visibility_timeout": settings.visibility_timeout_s,
                "socket_timeout": 5,
                "socket_connect_timeout": 3,
                "retry_on_timeout": True,
            }
            if redis
            else {}
        ),
        # An enqueue must fail fast (503) when the broker is down, not hang the request.
        "task_publish_retry_policy": {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5},
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_send_task_events": False,
        **(
            {  # `serve --dev`: the worker is a thread of the gateway's process
                "worker_hijack_root_logger": False,
                "worker_redirect_stdouts": False,
                "broker_transport_options": {"polling_interval": 0.1},  # kombu's 1 s would delay every scan
            }
            if settings.broker_url.startswith("memory://")
            else {}
        ),
    }


class ScanApp(Celery):
    """The Celery app of one gateway or worker process, configured from its settings when it is made.

    The gateway publishes scans through it; a worker runs them, each pool process with its own scanners (made on
    first use, after the fork) and, in the worker's main process, the recovery sweep."""

    def __init__(self, settings: Settings):
        super().__init__("mesoscan")
        self.conf.update(celery_config(settings.server))
        self.settings = settings
        self.recovery: Recovery | None = None
        self._scanners: dict[str, Scanner] = {}
        self._scanners_lock = threading.Lock()

    def publish(self, scan_id: str, task_id: str) -> None:
        """Send one scan's task; raises kombu's OperationalError when the broker is unreachable."""
        # No time limits in the message: each worker applies its own settings' (the task's would be this process's).
        self.tasks[TASK_NAME].apply_async(
            args=[scan_id], task_id=task_id, queue=self.settings.server.queue, time_limit=None, soft_time_limit=None
        )

    def scanner(self, model: str) -> Scanner:
        """This process's Scanner for `model`, made on first use (after the fork)."""
        from scanner.pipeline import Scanner

        with self._scanners_lock:
            if model not in self._scanners:
                self._scanners[model] = Scanner(
                    self.settings.scanner, model=model, serving_settings=self.settings.serving
                )
            return self._scanners[model]

    def close_scanners(self) -> None:
        with self._scanners_lock:
            scanners, self._scanners = list(self._scanners.values()), {}
        for scanner in scanners:
            try:
                scanner.close()
            except Exception as exc:
                log.debug("closing a scanner: %s", exc)


def _scan_app(sender=None) -> ScanApp | None:
    """The app a worker signal is about: the sender's (consumer, worker), else the process's current one (a pool
    process: Celery makes the worker's app current there before `worker_process_init`)."""
    app = getattr(sender, "app", None) or current_app._get_current_object()
    return app if isinstance(app, ScanApp) else None


@signals.worker_process_init.connect
def _after_fork(**_kwargs) -> None:
    """In each new pool process: fresh database pools, then load the default model (or open its channel)."""
    from server.db import forget_parent_engines

    forget_parent_engines()
    app = _scan_app()
    if app is None:
        return
    model = app.settings.serving.model
    try:
        info = app.scanner(model).model_info()
        log.info("worker process ready: %s v%s via %s", info["name"], info["version"], info["backend"])
    except Exception as exc:  # scans report model_unavailable (and retry) until the backend is up
        log.warning("worker process could not load model %s now: %s", model, exc)


@signals.worker_process_shutdown.connect
def _before_exit(**_kwargs) -> None:
    app = _scan_app()
    if app is not None:
        app.close_scanners()


@signals.worker_ready.connect
def _start_recovery(sender=None, **_kwargs) -> None:
    from server.recovery import Recovery

    app = _scan_app(sender)
    if app is not None:
        app.recovery = Recovery(app.settings.server, app.publish).start()


@signals.worker_shutdown.connect
def _stop_recovery(sender=None, **_kwargs) -> None:
    app = _scan_app(sender)
    if app is not None and app.recovery is not None:
        app.recovery.stop()


# --- the task ------------------------------------------------------------------------------------------------------


class Progress:
    """The pipeline's progress callback: writes stage and fraction to the scan record, at most twice a second
    (stage changes at once); a thread keeps the heartbeat going through long silent stretches."""

    def __init__(self, db_url: str, scan_id: str, task_id: str, heartbeat_s: float):
        self.db_url, self.scan_id, self.task_id = db_url, scan_id, task_id
        self.heartbeat_s = heartbeat_s
        self.stage, self.fraction = "fetch", 0.0
        self._written = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{scan_id}", daemon=True)

    def __call__(self, stage: str, fraction: float | None) -> None:
        stage = "fetch" if stage in _DOWNLOAD_STAGES else stage
        with self._lock:
            changed = stage != self.stage
            self.stage = stage
            if fraction is not None:
                self.fraction = fraction
            elif changed:
                self.fraction = 0.0
            if not changed and time.monotonic() - self._written < 0.5:
                return
            self._written = time.monotonic()
            stage, fraction = self.stage, self.fraction
        self._write(stage, fraction)

    def _write(self, stage: str | None, fraction: float | None) -> None:
        try:
            with session_scope(self.db_url) as session:
                jobs.heartbeat(session, self.scan_id, self.task_id, stage, fraction)
        except Exception as exc:  # progress is best effort; the result write is not
            log.warning("scan %s: progress not recorded: %s", self.scan_id, exc)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            self._write(None, None)

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _backoff(s: ServerSettings, attempt: int) -> float:
    return min(s.retry_backoff_s * 2 ** (attempt - 1), s.retry_backoff_max_s)


def _retry(task, s: ServerSettings, scan_id: str, task_id: str, countdown: float) -> str:
    """Send the scan's message again after `countdown` seconds.

    Celery's in-memory broker (`serve --dev`) never delivers a message published from inside a running task (the solo
    pool runs tasks in the consumer's own thread), so there a timer thread publishes it when the backoff ends."""
    if not s.broker_url.startswith("memory://"):
        raise task.retry(countdown=countdown)
    timer = threading.Timer(countdown, _publish_quietly, (task.app, scan_id, task_id))
    timer.daemon = True
    timer.start()
    return "retrying"


def _publish_quietly(app: ScanApp, scan_id: str, task_id: str) -> None:
    try:
        app.publish(scan_id, task_id)
    except Exception as exc:  # the recovery sweep sends it again later
        log.warning("scan %s: retry not sent: %s", scan_id, exc)


def _failed(url: str, code: str, message: str, file_name: str | None = None) -> dict:
    from scanner.document import UploadSource, VideoSource
    from scanner.verdict import failed_document

    source = VideoSource.unknown(url) if file_name is None else UploadSource.of(VideoSource.unknown(), file_name)
    return failed_document(source=source, model=None, code=code, message=message, retryable=False)


def _record_timings(s: ServerSettings, document: dict) -> None:
    from server.health import is_redis, redis_client

    if not is_redis(s.broker_url):
        return
    from server.metrics import record_stage_timings

    try:
        record_stage_timings(redis_client(s.broker_url), document.get("timings_ms") or {})
    except Exception as exc:
        log.info("stage timings not recorded: %s", exc)


@shared_task(name=TASK_NAME, bind=True, max_retries=None)  # delivery options: `celery_config`
def scan_task(self, scan_id: str) -> str:
    app: ScanApp = self.app
    s = app.settings.server
    task_id = self.request.id
    with session_scope(s.database_url) as session:
        claim = jobs.claim(session, scan_id, task_id, self.request.hostname or "worker", s.stale_after_s)
    if claim.outcome == "gone":
        return "skipped"
    if claim.outcome == "busy":  # a live delivery has it: look again once its heartbeat could have gone stale
        return _retry(self, s, scan_id, task_id, s.stale_after_s)
    from server import uploads

    file_name = uploads.upload_name(s, scan_id) if claim.url.startswith("upload:") else None
    if claim.attempts > s.max_attempts:
        gave_up = _failed(
            claim.url,
            "internal_error",
            f"gave up after {s.max_attempts} attempts: the scan kept crashing or timing out its worker",
            file_name,
        )
        with session_scope(s.database_url) as session:
            jobs.finish(session, scan_id, gave_up)
        if file_name is not None:
            uploads.remove_stored(s, scan_id)
        return "failed"

    reused: list[str] = []

    def reuse(source: dict) -> dict | None:
        sha = source.get("sha256")
        if not sha:
            return None
        with session_scope(s.database_url) as session:
            earlier = jobs.find_by_content(session, scan_id, sha, claim.model, claim.version, s.cache_ttl_s)
        if earlier is None or earlier.result is None:
            return None
        reused.append(earlier.id)
        return {**earlier.result, "source": source}

    with Progress(s.database_url, scan_id, task_id, s.heartbeat_s) as progress:
        try:
            if file_name is not None:  # an upload: its bytes were matched against earlier verdicts at the gateway
                document = uploads.scan_stored(app.scanner(claim.model), s, scan_id, file_name, progress)
            else:
                document = app.scanner(claim.model).scan_url(claim.url, progress=progress, reuse=reuse)
        except SoftTimeLimitExceeded:
            document = _failed(
                claim.url, "timeout", f"the scan took longer than {s.task_soft_time_limit_s:g} s", file_name
            )
        except Exception:
            log.exception("scan %s crashed", scan_id)
            document = _failed(claim.url, "internal_error", "the scan failed unexpectedly; it was logged", file_name)

    error = document.get("error") or {}
    if document.get("status") == "failed" and error.get("retryable") and claim.attempts < s.max_attempts:
        log.info("scan %s: %s (attempt %d of %d), retrying", scan_id, error.get("code"), claim.attempts, s.max_attempts)
        with session_scope(s.database_url) as session:
            jobs.back_to_queue(session, scan_id, task_id)
        return _retry(self, s, scan_id, task_id, _backoff(s, claim.attempts))
    with session_scope(s.database_url) as session:
        finished = jobs.finish(session, scan_id, document, reused[0] if reused else None)
    if finished and not reused and document.get("status") == "done":
        _record_timings(s, document)
    if file_name is not None:  # the scan is final: its upload is not needed any more
        uploads.remove_stored(s, scan_id)
    return document.get("status", "failed")
