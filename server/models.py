"""The stored records: API keys, scans (the verdict document as JSON), submissions' page URLs, batches and their
items."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, BigInteger, DateTime, ForeignKey, Index, Integer, String, Text, TypeDecorator
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
ACTIVE = (QUEUED, RUNNING)
FINAL = (DONE, FAILED)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every database (SQLite keeps them naive, so add UTC back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        value = value.astimezone(dt.UTC) if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


Document = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    pass


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(16))
    """The key's first characters, shown by `mesoscan keys list` to tell keys apart."""
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    """sha256 of the whole key: keys are 256-bit random, so a fast hash is enough and lookups stay O(1)."""
    rate_limit: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class Scan(Base):
    __tablename__ = "scans"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    normalized_url: Mapped[str] = mapped_column(Text)
    page_url: Mapped[str | None] = mapped_column(Text)
    """Unused since migration 0003 (always NULL): a page URL belongs to one submission (`ScanSubmission`), never to the
    verdict other users' submissions share."""
    model: Mapped[str] = mapped_column(String(100))
    model_version: Mapped[int] = mapped_column(Integer)
    """Verdicts are reused only for the same model name and version."""
    status: Mapped[str] = mapped_column(String(16), default=QUEUED)
    active_key: Mapped[str | None] = mapped_column(String(64), unique=True)
    """sha256(model, normalized URL) while queued or running, NULL after: one live job per URL and model."""
    task_id: Mapped[str | None] = mapped_column(String(64))
    """The Celery message that currently owns the scan; deliveries of any other message are dropped."""
    stage: Mapped[str | None] = mapped_column(String(16))
    fraction: Mapped[float | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(255))
    sha256: Mapped[str | None] = mapped_column(String(64))
    upload_name: Mapped[str | None] = mapped_column(Text)
    """The original file name of an uploaded video (as given, untrusted text); NULL for a URL scan."""
    upload_bytes: Mapped[int | None] = mapped_column(BigInteger)
    label: Mapped[str | None] = mapped_column(String(16))
    error_code: Mapped[str | None] = mapped_column(String(32))
    result: Mapped[dict | None] = mapped_column(Document)
    reused_from: Mapped[str | None] = mapped_column(String(32))
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    enqueued_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_scans_cache", "normalized_url", "model", "model_version", "finished_at"),
        Index("ix_scans_content", "sha256", "model", "model_version", "finished_at"),
        Index("ix_scans_status", "status"),
    )


class ScanSubmission(Base):
    """One key's submission of a URL with the page it was found on: private to that key (and to the report link
    made for it), while the scan and its verdict are shared by everyone who submits the same URL."""

    __tablename__ = "submissions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    """Unguessable: the report link of this submission carries it (`/scans/<scan id>?s=<id>`)."""
    scan_id: Mapped[str] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"))
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"))
    page_url: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (Index("ix_submissions_scan_key", "scan_id", "api_key_id", "created_at"),)


class Batch(Base):
    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    model: Mapped[str] = mapped_column(String(100))
    model_version: Mapped[int] = mapped_column(Integer)
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    items: Mapped[list[BatchItem]] = relationship(
        order_by="BatchItem.position", lazy="raise", cascade="all, delete-orphan", passive_deletes=True
    )


class BatchItem(Base):
    __tablename__ = "batch_items"

    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    scan_id: Mapped[str | None] = mapped_column(ForeignKey("scans.id", ondelete="SET NULL"))
    error_code: Mapped[str | None] = mapped_column(String(32))
    """Set when the URL was refused at submission (invalid or blocked): no scan was made."""
    error_message: Mapped[str | None] = mapped_column(Text)
    scan: Mapped[Scan | None] = relationship(lazy="raise")
