"""API keys: made once and shown once, stored as a sha256 hash, looked up by that hash, revoked by id."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from limits import parse as parse_limit
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.models import ApiKey, utcnow

KEY_PREFIX = "msk_"
HEADER = "X-API-Key"


class ApiKeyError(ValueError):
    """A key operation that cannot be done (unknown key, bad rate limit)."""


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True)
class NewKey:
    id: int
    name: str
    key: str
    """The secret: shown once, never stored."""


def check_rate_limit(text: str) -> str:
    """A Flask-Limiter rate such as `120/minute` or `10/second;500/hour`; raises ApiKeyError when unparsable."""
    try:
        for part in text.split(";"):
            parse_limit(part)
    except ValueError as exc:
        raise ApiKeyError(f"rate limit {text!r} is not like '120/minute': {exc}") from None
    return text


def create_key(session: Session, name: str, rate_limit: str | None = None) -> NewKey:
    name = name.strip()
    if not name or len(name) > 100:
        raise ApiKeyError("a key needs a name of 1 to 100 characters")
    if rate_limit is not None:
        check_rate_limit(rate_limit)
    raw = KEY_PREFIX + secrets.token_urlsafe(32)
    record = ApiKey(name=name, prefix=raw[:12], key_hash=hash_key(raw), rate_limit=rate_limit, created_at=utcnow())
    session.add(record)
    session.flush()
    return NewKey(id=record.id, name=name, key=raw)


def list_keys(session: Session, include_revoked: bool = False) -> list[ApiKey]:
    query = select(ApiKey).order_by(ApiKey.id)
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    return list(session.scalars(query))


def revoke_key(session: Session, key_id: int) -> ApiKey:
    record = session.get(ApiKey, key_id)
    if record is None:
        raise ApiKeyError(f"no API key with id {key_id}")
    if record.revoked_at is None:
        record.revoked_at = utcnow()
    return record


def find_key(session: Session, raw: str) -> ApiKey | None:
    """The live key whose secret is `raw`, or None (unknown or revoked)."""
    if not raw or len(raw) > 200:
        return None
    record = session.scalars(select(ApiKey).where(ApiKey.key_hash == hash_key(raw))).first()
    if record is None or record.revoked_at is not None:
        return None
    return record
