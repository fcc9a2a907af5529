"""The life of a scan record: submission with de-duplication, claiming by a worker, progress, and the final result.

Every transition is one conditional UPDATE, so gateways and workers on several machines agree without locks:

- one live job per (normalized URL, model): `active_key` is unique while a scan is queued or running;
- a scan belongs to one Celery message at a time (`task_id`): a delivery of any other message is dropped, and a
  redelivery of the owning message (its worker died) may take the scan over once its heartbeat has gone stale;
- a scan becomes final once: the first worker to finish writes the verdict, later ones change nothing.

Every function works in the caller's `Session` (from `server.db.session_scope`): its statements commit with the
caller's transaction, so a gateway request can submit many scans in one.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import and_, delete, func, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from scanner.batch_input import normalize_url  # the same rules for batches run here and by a gateway
from server.models import ACTIVE, DONE, FAILED, FINAL, QUEUED, RUNNING, BatchItem, Scan, ScanSubmission, utcnow


def new_id() -> str:
    """Unguessable (128 bits): a report link is shared, but ids must not be enumerable."""
    return secrets.token_urlsafe(16)


ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""What a scan, batch or submission id may look like (checked before one from a URL reaches a query or a path)."""


def new_task_id() -> str:
    return uuid.uuid4().hex


def active_key(model: str, version: int, normalized_url: str) -> str:
    return hashlib.sha256(f"{model}\0{version}\0{normalized_url}".encode()).hexdigest()


# --- the gateway's side ------------------------------------------------------------------------------------------


@dataclass
class Submission:
    scan: Scan
    outcome: Literal["cached", "joined", "created"]
    """cached: a recent verdict answers it; joined: an identical scan is already queued or running; created: new."""
    page_url: str | None = None
    """This submission's own page URL (never another key's)."""
    page_token: str | None = None
    """The id of its `ScanSubmission` record, for a report link that shows that page URL."""


def submit(
    session: Session,
    *,
    url: str,
    page_url: str | None,
    model: str,
    version: int,
    api_key_id: int | None,
    cache_ttl_s: float,
) -> Submission:
    """Answer from the cache, join the live scan of the same URL, or create a queued scan (published by the caller
    after commit, with `scan.task_id`). Two statements: one lookup, one conflict-safe insert; a page URL is stored
    with this key's submission, not on the shared scan."""
    submission = _find_or_create(
        session, url=url, model=model, version=version, api_key_id=api_key_id, cache_ttl_s=cache_ttl_s
    )
    if page_url:
        record = ScanSubmission(
            id=new_id(), scan_id=submission.scan.id, api_key_id=api_key_id, page_url=page_url, created_at=utcnow()
        )
        session.add(record)
        submission.page_url, submission.page_token = page_url, record.id
    return submission


def page_of(session: Session, scan_id: str, api_key_id: int | None, token: str | None = None) -> ScanSubmission | None:
    """The latest submission with a page URL of this scan by this key (or the one `token` names)."""
    query = select(ScanSubmission).where(ScanSubmission.scan_id == scan_id)
    if token is not None:
        query = query.where(ScanSubmission.id == token)
    else:
        query = query.where(
            ScanSubmission.api_key_id.is_(None) if api_key_id is None else ScanSubmission.api_key_id == api_key_id
        )
    return session.scalars(query.order_by(ScanSubmission.created_at.desc()).limit(1)).first()


def _find_or_create(
    session: Session, *, url: str, model: str, version: int, api_key_id: int | None, cache_ttl_s: float
) -> Submission:
    normalized = normalize_url(url)
    key = active_key(model, version, normalized)
    wanted = [Scan.active_key == key]
    if cache_ttl_s > 0:
        since = utcnow() - dt.timedelta(seconds=cache_ttl_s)
        wanted.append(
            and_(
                Scan.normalized_url == normalized,
                Scan.model == model,
                Scan.model_version == version,
                Scan.status == DONE,
                Scan.finished_at >= since,
            )
        )
    found = session.scalars(select(Scan).where(or_(*wanted))).all()
    done = sorted((s for s in found if s.status == DONE), key=lambda s: s.finished_at, reverse=True)
    if done:
        return Submission(done[0], "cached")
    if live := next((s for s in found if s.active_key == key), None):
        return Submission(live, "joined")
    now = utcnow()
    values = {
        "id": new_id(),
        "url": url.strip(),
        "normalized_url": normalized,
        "page_url": None,
        "model": model,
        "model_version": version,
        "status": QUEUED,
        "active_key": key,
        "task_id": new_task_id(),
        "attempts": 0,
        "api_key_id": api_key_id,
        "created_at": now,
        "enqueued_at": now,
    }
    postgresql = session.get_bind().dialect.name == "postgresql"
    if postgresql:
        # Enqueueing does not wait for the WAL flush (the commit's disk sync, the tail of enqueue latency): a
        # database server crash could lose the last fraction of a second of queued scans, never a verdict (the
        # worker's writes stay synchronous); their messages then find no record and are dropped.
        session.execute(text("SET LOCAL synchronous_commit TO OFF"))
    insert = postgresql_insert if postgresql else sqlite_insert
    table = Scan.__table__
    created = session.execute(
        insert(table).values(**values).on_conflict_do_nothing(index_elements=["active_key"]).returning(table.c.id)
    ).scalar_one_or_none()
    if created is None:  # another request created the same live scan a moment ago
        live = session.scalars(select(Scan).where(Scan.active_key == key)).first()
        if live is not None:
            return Submission(live, "joined")
        raise IntegrityError("scan insert", values, Exception("conflict without a live scan"))
    return Submission(Scan(**values), "created")


def forget_unpublished(session: Session, scan_ids: list[str]) -> None:
    """Scans created for a request whose tasks could not be sent: removed, so they block nobody."""
    if scan_ids:
        session.execute(update(BatchItem).where(BatchItem.scan_id.in_(scan_ids)).values(scan_id=None))
        session.execute(delete(Scan).where(Scan.id.in_(scan_ids), Scan.status == QUEUED, Scan.attempts == 0))


# --- the worker's side -------------------------------------------------------------------------------------------


@dataclass
class Claim:
    outcome: Literal["claimed", "busy", "gone"]
    """claimed: run it; busy: a live delivery runs it now (retry later); gone: final, or owned by another message."""
    attempts: int = 0
    url: str = ""
    model: str = ""
    version: int = 0


def claim(session: Session, scan_id: str, task_id: str, worker: str, stale_after_s: float) -> Claim:
    now = utcnow()
    stale_before = now - dt.timedelta(seconds=stale_after_s)
    taken = session.execute(
        update(Scan)
        .where(
            Scan.id == scan_id,
            Scan.task_id == task_id,
            or_(
                Scan.status == QUEUED,
                and_(Scan.status == RUNNING, or_(Scan.heartbeat_at.is_(None), Scan.heartbeat_at < stale_before)),
            ),
        )
        .values(
            status=RUNNING,
            attempts=Scan.attempts + 1,
            worker=worker[:255],
            heartbeat_at=now,
            stage="fetch",
            fraction=0.0,
        )
        .execution_options(synchronize_session=False)
    ).rowcount
    scan = session.get(Scan, scan_id, populate_existing=True)
    if scan is None:
        return Claim("gone")
    if taken:
        if scan.started_at is None:
            scan.started_at = now
        return Claim("claimed", scan.attempts, scan.url, scan.model, scan.model_version)
    if scan.status == RUNNING and scan.task_id == task_id:
        return Claim("busy")
    return Claim("gone")


def heartbeat(
    session: Session, scan_id: str, task_id: str, stage: str | None = None, fraction: float | None = None
) -> None:
    values: dict = {"heartbeat_at": utcnow()}
    if stage is not None:
        values["stage"] = stage
    if fraction is not None:
        values["fraction"] = max(0.0, min(1.0, float(fraction)))
    session.execute(
        update(Scan)
        .where(Scan.id == scan_id, Scan.task_id == task_id, Scan.status == RUNNING)
        .values(**values)
        .execution_options(synchronize_session=False)
    )


def find_by_content(session: Session, scan_id: str, sha256: str, model: str, version: int, ttl_s: float) -> Scan | None:
    """Record the downloaded video's hash on the scan, and return a recent verdict for the same bytes and model."""
    session.execute(
        update(Scan).where(Scan.id == scan_id).values(sha256=sha256).execution_options(synchronize_session=False)
    )
    return recent_verdict(session, sha256, model, version, ttl_s, other_than=scan_id)


def recent_verdict(
    session: Session, sha256: str, model: str, version: int, ttl_s: float, other_than: str | None = None
) -> Scan | None:
    """The latest scan of the same video bytes and model that finished `done` within `ttl_s` (None when 0)."""
    if ttl_s <= 0:
        return None
    query = select(Scan).where(
        Scan.sha256 == sha256,
        Scan.model == model,
        Scan.model_version == version,
        Scan.status == DONE,
        Scan.finished_at >= utcnow() - dt.timedelta(seconds=ttl_s),
    )
    if other_than is not None:
        query = query.where(Scan.id != other_than)
    return session.scalars(query.order_by(Scan.finished_at.desc()).limit(1)).first()


def back_to_queue(session: Session, scan_id: str, task_id: str) -> None:
    """Before a retry: the scan waits again (same message id, so the retry may claim it)."""
    session.execute(
        update(Scan)
        .where(Scan.id == scan_id, Scan.task_id == task_id, Scan.status == RUNNING)
        .values(status=QUEUED, stage=None, fraction=None, enqueued_at=utcnow())
        .execution_options(synchronize_session=False)
    )


UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
"""What PostgreSQL cannot store as text: NUL characters and lone surrogates."""


def storable(value):
    """The document with NUL characters and lone surrogates replaced (a video title may hold them; PostgreSQL's
    JSON cannot)."""
    if isinstance(value, str):
        return UNSTORABLE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [storable(v) for v in value]
    return value


def finish(session: Session, scan_id: str, document: dict, reused_from: str | None = None) -> bool:
    """Store the verdict document; True when this call made the scan final (False: it already was)."""
    document = storable(document)
    status = DONE if document.get("status") == "done" else FAILED
    verdict = document.get("verdict") or {}
    error = document.get("error") or {}
    sha256 = (document.get("source") or {}).get("sha256")
    values = {
        "status": status,
        "result": document,
        "label": verdict.get("label"),
        "error_code": error.get("code"),
        "finished_at": utcnow(),
        "active_key": None,
        "stage": None,
        "fraction": None,
        "reused_from": reused_from,
    }
    if sha256:
        values["sha256"] = sha256
    return bool(
        session.execute(
            update(Scan)
            .where(Scan.id == scan_id, Scan.status.not_in(FINAL))
            .values(**values)
            .execution_options(synchronize_session=False)
        ).rowcount
    )


# --- recovery ----------------------------------------------------------------------------------------------------


def lost_scans(
    session: Session,
    *,
    stale_before: dt.datetime,
    queued_before: dt.datetime,
    broker_lost_before: dt.datetime | None,
    limit: int = 500,
) -> list[tuple[str, str | None]]:
    """(id, task_id) of scans whose message is probably gone: running without a heartbeat, queued for too long, or
    queued before the broker lost its data."""
    queued_cutoff = max(queued_before, broker_lost_before) if broker_lost_before else queued_before
    rows = session.execute(
        select(Scan.id, Scan.task_id)
        .where(
            or_(
                and_(Scan.status == RUNNING, or_(Scan.heartbeat_at.is_(None), Scan.heartbeat_at < stale_before)),
                and_(Scan.status == QUEUED, Scan.enqueued_at <= queued_cutoff),
            )
        )
        .order_by(Scan.created_at)
        .limit(limit)
    )
    return [(row.id, row.task_id) for row in rows]


def count_queued(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Scan).where(Scan.status == QUEUED)) or 0


def reassign(session: Session, scan_id: str, old_task_id: str | None) -> str | None:
    """Give the scan a new message id (the caller publishes it); None when someone else changed it first."""
    new = new_task_id()
    changed = session.execute(
        update(Scan)
        .where(
            Scan.id == scan_id,
            Scan.status.in_(ACTIVE),
            Scan.task_id.is_(None) if old_task_id is None else Scan.task_id == old_task_id,
        )
        .values(task_id=new, status=QUEUED, stage=None, fraction=None, enqueued_at=utcnow())
        .execution_options(synchronize_session=False)
    ).rowcount
    return new if changed else None
