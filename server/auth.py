"""API keys on requests: who sent a request (`g.api_key_id`), checked before the rate limiter counts it.

Failed authentications count per client address (`auth_failure_limit`), checked before a key is looked up, so a
flood of unknown keys is answered 429 without reaching the database. Known keys are cached briefly in a bounded LRU
(unknown ones in a smaller one of their own), so a flood can evict entries but never wipes the cache.

Budgets (rate limits, the daily upload bytes) count against `requester()`: a key is named by its hash, never by its
row id, so a key made in a recreated database does not inherit the counts of an earlier key with the same id.
"""

from __future__ import annotations

import logging
import threading
import time

from cachetools import TTLCache
from flask import current_app, g, request
from limits import parse as parse_limit

from server.db import session_scope
from server.errors import ApiError
from server.keys import HEADER, find_key, hash_key

log = logging.getLogger(__name__)

KEY_CACHE_TTL_S = 10.0
"""Keys are looked up at most this often per process: a revoked key stops working within this time."""

KNOWN_KEYS_CACHED = 10_000
UNKNOWN_KEYS_CACHED = 1_024

PUBLIC_ENDPOINTS = {"api.openapi"}
"""API endpoints that need no key (and count against no budget)."""

Found = tuple[int | None, str | None]
"""(key id, or None when unknown or revoked; the key's own rate limit)."""


class KeyCache:
    """key digest → Found, for KEY_CACHE_TTL_S: two LRUs, so unknown keys cannot evict known ones."""

    def __init__(self, known: int = KNOWN_KEYS_CACHED, unknown: int = UNKNOWN_KEYS_CACHED) -> None:
        self._lock = threading.Lock()
        self._known: TTLCache[str, Found] = TTLCache(known, KEY_CACHE_TTL_S)
        self._unknown: TTLCache[str, Found] = TTLCache(unknown, KEY_CACHE_TTL_S)

    def get(self, digest: str) -> Found | None:
        with self._lock:
            return self._known.get(digest) or self._unknown.get(digest)

    def put(self, digest: str, found: Found) -> None:
        with self._lock:
            self._known.pop(digest, None)
            self._unknown.pop(digest, None)
            (self._known if found[0] is not None else self._unknown)[digest] = found

    def known(self, digest: str) -> bool:
        with self._lock:
            return digest in self._known

    def __len__(self) -> int:
        with self._lock:
            return len(self._known) + len(self._unknown)

    def clear(self) -> None:
        with self._lock:
            self._known.clear()
            self._unknown.clear()


key_cache = KeyCache()


def look_up(db_url: str, raw: str) -> Found:
    """The key `raw` names (its id is None when unknown or revoked), cached briefly."""
    digest = hash_key(raw)
    if (hit := key_cache.get(digest)) is not None:
        return hit
    with session_scope(db_url) as session:
        record = find_key(session, raw)
        found = (record.id, record.rate_limit) if record is not None else (None, None)
    key_cache.put(digest, found)
    return found


def forget_cached_keys() -> None:
    key_cache.clear()


def use_key(db_url: str, raw: str | None) -> bool:
    """Make `raw` this request's key (g.api_key_id, g.key_rate_limit); False, and no key, when it is unknown."""
    g.api_key_id, g.key_rate_limit, g.api_key_digest = None, None, None
    if not raw:
        return False
    key_id, rate_limit = look_up(db_url, raw)
    if key_id is None:
        return False
    g.api_key_id, g.key_rate_limit, g.api_key_digest = key_id, rate_limit, hash_key(raw)
    return True


def requester() -> str:
    """Whom this request's budgets count against: its key (by hash), or its address when it has none."""
    digest = g.get("api_key_digest")
    return f"key:{digest[:32]}" if digest else f"addr:{request.remote_addr}"


def _failures():
    """(rate limiter strategy, parsed auth_failure_limit) of this app."""
    limiter = current_app.extensions["mesoscan_limiter"]
    return limiter.limiter, parse_limit(current_app.config["MESOSCAN"].auth_failure_limit)


def _refuse_unauthenticated(message: str, challenge: dict[str, str]) -> None:
    """Count a failed authentication against the client address, then answer 401."""
    strategy, limit = _failures()
    try:
        strategy.hit(limit, "auth-failures", request.remote_addr or "")
    except Exception as exc:  # the limiter's storage is down: authentication still answers
        log.debug("auth failure not counted: %s", exc)
    raise ApiError(401, "unauthorized", message, headers=challenge)


def _check_failure_budget(raw: str | None) -> None:
    """429 for an address over its failed-authentication budget, before any lookup (a cached known key passes)."""
    if raw and key_cache.known(hash_key(raw)):
        return
    strategy, limit = _failures()
    try:
        allowed = strategy.test(limit, "auth-failures", request.remote_addr or "")
        reset = strategy.get_window_stats(limit, "auth-failures", request.remote_addr or "").reset_time
    except Exception as exc:
        log.debug("auth failure budget not checked: %s", exc)
        return
    if not allowed:
        raise ApiError(
            429,
            "rate_limited",
            "too many requests with a missing or unknown API key from this address; retry later",
            headers={"Retry-After": str(max(1, int(reset - time.time())))},
        )


def authenticate() -> None:
    """Before every API request: sets the request's key (none in open mode); 401 when the key is missing, unknown
    or revoked."""
    if request.blueprint != "api" or request.endpoint in PUBLIC_ENDPOINTS or request.method == "OPTIONS":
        return
    settings = current_app.config["MESOSCAN"]
    raw = request.headers.get(HEADER)
    use_key(settings.database_url, None)
    if settings.open_mode and not raw:
        return
    challenge = {"WWW-Authenticate": f'ApiKey header="{HEADER}"'}
    _check_failure_budget(raw)
    if not raw:
        _refuse_unauthenticated(f"send an API key in the {HEADER} header", challenge)
    if not use_key(settings.database_url, raw):
        _refuse_unauthenticated("unknown or revoked API key", challenge)
