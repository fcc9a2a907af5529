"""Uploaded videos: multipart bodies streamed into `MESOSCAN_UPLOAD_DIR`, checked, queued and stored by scan id.

A body is read in chunks through Werkzeug's sans-IO multipart decoder and the `file` part goes straight to a private
`.part-*` file while its sha256 is computed; the size limit (and the key's daily byte budget) is checked on every
chunk, so an oversized upload is refused the moment it passes the limit and nothing of it stays on disk. Names on
disk never come from the request: a finished upload is probed (`not_a_video`, `corrupt_video`, `too_long` answer
at once with 422), recorded as a queued scan and renamed to the scan's id; the worker opens `<dir>/<scan id>` and
removes it when the scan ends. `sweep` (run by the workers' recovery job) removes what crashes left behind.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from flask import Request
from sqlalchemy import select
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData

from server.config import ServerSettings
from server.db import session_scope
from server.errors import ApiError
from server.jobs import ID_PATTERN, storable
from server.models import DONE, FINAL, QUEUED, Scan, utcnow

log = logging.getLogger(__name__)

FILE_PART = "file"
PART_PREFIX = ".part-"
CHUNK = 256 * 1024
FORM_OVERHEAD = 64 * 1024
"""Bytes a multipart body may hold beyond the file: part headers and the small text fields."""
MAX_FIELD_BYTES = 4096
MAX_FILE_NAME = 255
ACCEPT = ".mp4,.m4v,.mov,.webm,.mkv,.avi,.ts,.mts,.flv,.wmv,.mpg,.mpeg,.ogv,.3gp,video/*"
"""The `accept` list of the web page's file input (the probe decides; this only guides the file chooser)."""
_CONTROL = re.compile("[\x00-\x1f\x7f]")


# --- storage -------------------------------------------------------------------------------------------------------


def stored_path(settings: ServerSettings, scan_id: str) -> Path:
    """Where the upload of `scan_id` waits for its worker (the id is checked: never a path from outside)."""
    if not ID_PATTERN.match(scan_id):
        raise ValueError(f"not a scan id: {scan_id!r}")
    return settings.upload_dir / scan_id


def remove_stored(settings: ServerSettings, scan_id: str) -> bool:
    return _unlink(stored_path(settings, scan_id))


def display_name(raw: str | None) -> str:
    """The file name as the client gave it, made storable: control characters replaced, at most 255 characters.
    It is only ever shown (escaped), never used as a path."""
    name = storable(_CONTROL.sub("\ufffd", raw or "")).strip()
    return (name or "upload")[:MAX_FILE_NAME]


def _upload_dir(settings: ServerSettings) -> Path:
    settings.upload_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return settings.upload_dir


# --- the daily byte budget -----------------------------------------------------------------------------------------


class Budget:
    """Upload bytes per key (or address) and UTC day, counted in the rate limiter's storage (Redis in production,
    so every gateway shares it). A declared body size is reserved up front; the reservation is corrected to the
    bytes actually received once the upload ends."""

    def __init__(self, storage, settings: ServerSettings, who: str):
        self.storage, self.limit = storage, int(settings.upload_daily_mb * 1_000_000)
        self.key = f"mesoscan/upload-bytes/{who}/{utcnow().date().isoformat()}"
        self.reset_s = _seconds_to_midnight()
        self.reserved = 0

    def _incr(self, amount: int) -> int:
        return int(self.storage.incr(self.key, self.reset_s + 3600, amount))

    def exceeded(self, message: str) -> ApiError:
        return ApiError(429, "upload_budget_exceeded", message, headers={"Retry-After": str(self.reset_s)})

    def reserve(self, declared: int) -> int:
        """Reserve `declared` bytes; returns how many file bytes this upload may still send today."""
        used = self._incr(declared) - declared
        self.reserved = declared
        left = self.limit - used
        if left <= 0 or declared > left + FORM_OVERHEAD:
            self._incr(-declared)
            self.reserved = 0
            raise self.exceeded(
                f"this key's daily upload budget ({self.limit / 1e6:g} MB) is used up"
                if left <= 0
                else f"this upload is larger than what is left of today's upload budget "
                f"({max(left, 0) / 1e6:.1f} of {self.limit / 1e6:g} MB)"
            )
        return left

    def settle(self, received: int) -> None:
        if received != self.reserved:
            self._incr(received - self.reserved)
        self.reserved = received


# --- receiving -----------------------------------------------------------------------------------------------------


@dataclass
class Upload:
    """A multipart body received: its text fields, and the `file` part on disk (a `.part-*` file) when sent."""

    fields: dict[str, str] = field(default_factory=dict)
    path: Path | None = None
    file_name: str | None = None
    size: int = 0
    sha256: str | None = None

    def discard(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None


def _boundary(request: Request) -> bytes:
    boundary = request.mimetype_params.get("boundary", "")
    if not boundary or len(boundary) > 200:
        raise ApiError(400, "invalid_request", "a multipart/form-data body needs a boundary")
    return boundary.encode("latin-1", "replace")


def receive(
    request: Request,
    settings: ServerSettings,
    before_file: Callable[[dict[str, str]], int],
    upload: Upload | None = None,
) -> Upload:
    """Stream the request's multipart body: text fields into memory (small), the `file` part into the upload
    directory. `before_file(fields)` runs when the file part starts (authenticate, check limits) and returns the
    most bytes the file may have. Raises ApiError (400, 413, 429); nothing is left on disk when it does. A file
    part without a file name (a browser form whose file input is empty) is skipped."""
    upload = upload if upload is not None else Upload()
    request.max_content_length = settings.max_upload_bytes + FORM_OVERHEAD
    try:
        stream = request.stream  # 413 at once when Content-Length already says too much
    except RequestEntityTooLarge:
        raise _too_much(settings, settings.max_upload_bytes) from None
    decoder = MultipartDecoder(_boundary(request), max_form_memory_size=CHUNK + FORM_OVERHEAD, max_parts=16)
    out = None
    digest = hashlib.sha256()
    limit = 0
    current: str | None = None
    text = bytearray()
    try:
        done = False
        while not done:
            event = decoder.next_event()
            if isinstance(event, NeedData):
                chunk = stream.read(CHUNK)
                decoder.receive_data(chunk or None)
            elif isinstance(event, File) and event.name == FILE_PART and upload.path is None and event.filename:
                limit = before_file(dict(upload.fields))
                upload.file_name = display_name(event.filename)
                upload.path = _upload_dir(settings) / f"{PART_PREFIX}{secrets.token_urlsafe(12)}"
                fd = os.open(upload.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                out = os.fdopen(fd, "wb")
                current = FILE_PART
            elif isinstance(event, (Field, File)):
                current, text = (event.name if isinstance(event, Field) else None), bytearray()
            elif isinstance(event, Data):
                if current == FILE_PART and out is not None:
                    upload.size += len(event.data)
                    if upload.size > limit:
                        raise _too_much(settings, limit)
                    digest.update(event.data)
                    out.write(event.data)
                    if not event.more_data:
                        out.close()
                        out, current = None, "(done)"
                elif current is not None:
                    text += event.data
                    if len(text) > MAX_FIELD_BYTES:
                        raise ApiError(400, "invalid_request", f"the form field {current!r} is too long")
                    if not event.more_data:
                        upload.fields[current] = _field_text(current, bytes(text))
                        current = None
            elif isinstance(event, Epilogue):
                done = True
    except ApiError:
        _abandon(out, upload)
        raise
    except RequestEntityTooLarge:
        _abandon(out, upload)
        raise _too_much(settings, settings.max_upload_bytes) from None
    except ClientDisconnected:
        _abandon(out, upload)
        raise ApiError(400, "upload_incomplete", "the upload ended before the whole body arrived") from None
    except (ValueError, UnicodeDecodeError):
        _abandon(out, upload)
        raise ApiError(400, "invalid_request", "the body is not valid multipart/form-data") from None
    except BaseException:  # the client went away mid-read (the WSGI server's own errors), Ctrl-C, ...
        _abandon(out, upload)
        raise
    if out is not None:  # the body ended inside the file part
        _abandon(out, upload)
        raise ApiError(400, "upload_incomplete", "the upload ended before the whole file arrived")
    if upload.path is not None:
        upload.sha256 = digest.hexdigest()
    return upload


def _field_text(name: str, raw: bytes) -> str:
    try:
        value = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_request", f"the form field {name!r} is not UTF-8 text") from None
    if "\x00" in value:
        raise ApiError(400, "invalid_request", f"the form field {name!r} may not contain NUL characters")
    return value


def _seconds_to_midnight() -> int:
    now = utcnow()
    tomorrow = dt.datetime.combine(now.date() + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    return max(1, int((tomorrow - now).total_seconds()))


def _too_much(settings: ServerSettings, limit: int) -> ApiError:
    if limit < settings.max_upload_bytes:
        return ApiError(
            429,
            "upload_budget_exceeded",
            "this upload passed what is left of today's upload budget",
            headers={"Retry-After": str(_seconds_to_midnight())},
        )
    return ApiError(413, "too_large", f"the file is larger than the {settings.max_upload_mb:g} MB upload limit")


def _abandon(out, upload: Upload) -> None:
    if out is not None:
        out.close()
    upload.discard()


# --- accepting an upload -------------------------------------------------------------------------------------------


def accept(
    request: Request,
    settings: ServerSettings,
    identify: Callable[[dict[str, str]], tuple[int | None, str]],
    resolve_model: Callable[[str | None], tuple[str, int]],
) -> tuple[Upload, dict]:
    """Receive an upload with its checks: `identify(fields)` authenticates the sender (and charges its rate limit),
    returning (API key id, the key or address the byte budget counts against); `resolve_model(name)` checks the
    model field, (name, version), before any file byte is stored. Returns the upload and {api_key_id, model,
    version} (empty when no file was sent)."""
    from flask import current_app

    upload = Upload()
    state: dict = {}

    def before_file(fields: dict[str, str]) -> int:
        api_key_id, who = identify(fields)
        if settings.upload_daily_mb <= 0:
            raise ApiError(403, "uploads_disabled", "this gateway does not accept uploads; send a URL")
        model, version = resolve_model(fields.get("model") or None)
        state.update(api_key_id=api_key_id, model=model, version=version)
        budget = Budget(current_app.extensions["mesoscan_limiter"].storage, settings, who)
        try:
            left = budget.reserve(request.content_length or 0)
        except ApiError:
            raise
        except Exception as exc:  # like the rate limiter: its storage being down refuses nobody
            log.warning("upload budget not checked: %s", exc)
            return settings.max_upload_bytes
        state["budget"] = budget
        return min(settings.max_upload_bytes, left)

    try:
        receive(request, settings, before_file, upload)
    finally:
        if "budget" in state:
            try:
                state.pop("budget").settle(upload.size)
            except Exception as exc:  # the limiter's storage is down: uploads are not refused for it
                log.warning("upload budget not updated: %s", exc)
    return upload, state


# --- submitting ----------------------------------------------------------------------------------------------------


def upload_source(source: dict, file_name: str) -> dict:
    """The verdict document's `source` for an upload: the original name, no URL."""
    from scanner.document import UploadSource

    return UploadSource.of(source, file_name).to_dict()


def submit_upload(
    settings: ServerSettings, upload: Upload, *, model: str, version: int, api_key_id: int | None
) -> tuple[Scan, str]:
    """Answer from a recent verdict for the same bytes (a new finished scan that reuses it: `cached`), or probe the
    file, record a queued scan and move the file to its id (`created`; the caller publishes `scan.task_id`).
    Raises ApiError 422 when the probe refuses the file. The `.part-*` file is gone afterwards either way."""
    from server import jobs

    if upload.path is None or upload.sha256 is None:
        raise ValueError("no file was received")
    try:
        now = utcnow()
        values = {
            "url": f"upload:{upload.sha256}",
            "normalized_url": f"upload:{upload.sha256}",
            "page_url": None,
            "model": model,
            "model_version": version,
            "active_key": None,
            "attempts": 0,
            "api_key_id": api_key_id,
            "created_at": now,
            "sha256": upload.sha256,
            "upload_name": upload.file_name,
            "upload_bytes": upload.size,
        }
        with session_scope(settings.database_url) as session:
            earlier = jobs.recent_verdict(session, upload.sha256, model, version, settings.cache_ttl_s)
            if earlier is not None:
                document = {**earlier.result, "source": upload_source(earlier.result["source"], upload.file_name)}
                scan = Scan(
                    id=jobs.new_id(),
                    status=DONE,
                    result=jobs.storable(document),
                    label=(document.get("verdict") or {}).get("label"),
                    reused_from=earlier.id,
                    started_at=now,
                    finished_at=now,
                    **values,
                )
                session.add(scan)
                return scan, "cached"
        _probe(settings, upload.path)
        with session_scope(settings.database_url) as session:
            scan = Scan(id=jobs.new_id(), status=QUEUED, task_id=jobs.new_task_id(), enqueued_at=now, **values)
            session.add(scan)
        upload.path.rename(stored_path(settings, scan.id))  # after commit: a stored file always has its record
        upload.path = None
        return scan, "created"
    finally:
        upload.discard()


def _probe(settings: ServerSettings, path: Path) -> None:
    from flask import current_app

    from scanner.errors import ScanError
    from scanner.probe import probe_video

    try:
        scanner = current_app.config["MESOSCAN_SCANNER"]
        probe_video(path, scanner.max_duration_s, max_frames=scanner.max_frames, max_pixels=scanner.max_frame_pixels)
    except ScanError as exc:
        # The probe names the file it opened (a random .part name): say "the file" instead.
        message = exc.message.replace(path.name, "the file")
        raise ApiError(422, exc.code, message) from None


# --- the recovery sweep --------------------------------------------------------------------------------------------


def sweep(settings: ServerSettings) -> int:
    """Remove stored uploads whose scan ended or no longer exists (a worker that crashed after the scan ended, a
    scan removed), and partial uploads older than `upload_timeout_s` (a gateway that died mid-upload). Returns the
    number of files removed."""
    directory = settings.upload_dir
    if not directory.is_dir():
        return 0
    now = time.time()
    stored: list[str] = []
    removed = 0
    with os.scandir(directory) as entries:
        for entry in entries:
            if not entry.is_file(follow_symlinks=False):
                continue
            if entry.name.startswith(PART_PREFIX):
                if now - entry.stat(follow_symlinks=False).st_mtime > settings.upload_timeout_s:
                    removed += _unlink(directory / entry.name)
            elif ID_PATTERN.match(entry.name):
                stored.append(entry.name)
    for start in range(0, len(stored), 500):
        ids = stored[start : start + 500]
        with session_scope(settings.database_url) as session:
            status = dict(session.execute(select(Scan.id, Scan.status).where(Scan.id.in_(ids))).tuples().all())
        for scan_id in ids:
            if status.get(scan_id) in (None, *FINAL):
                removed += _unlink(directory / scan_id)
    if removed:
        log.info("uploads: removed %d stored file(s) whose scan ended or whose upload was abandoned", removed)
    return removed


def _unlink(path: Path) -> bool:
    """Remove `path`; False when it was already gone."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


# --- the worker's side ---------------------------------------------------------------------------------------------


def upload_name(settings: ServerSettings, scan_id: str) -> str | None:
    with session_scope(settings.database_url) as session:
        return session.scalar(select(Scan.upload_name).where(Scan.id == scan_id))


def scan_stored(scanner, settings: ServerSettings, scan_id: str, file_name: str, progress) -> dict:
    """Scan the stored upload of `scan_id` (found by id, never by a path from a request)."""
    from scanner.document import VideoSource
    from scanner.verdict import failed_document

    path = stored_path(settings, scan_id)
    if path.is_file():
        document = scanner.scan_file(path, progress)
    else:  # removed by hand, or a gateway died between recording the scan and storing its file
        document = failed_document(
            source=VideoSource.unknown(),
            model=None,
            code="internal_error",
            message="the uploaded file is no longer stored; upload it again",
        )
    document["source"] = upload_source(document["source"], file_name)
    return document
