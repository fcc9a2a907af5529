"""API keys on requests and per-key rate limits (Flask-Limiter, counters in Redis shared by all gateways).

Authentication runs before the limiter, so limits count per key (per client address in open mode). Submissions
(POST) and reads (GET) have separate limits; a key may carry its own submission limit; a batch costs one submission
per URL. Failed authentications count per client address (`auth_failure_limit`), checked before a key is looked
up, so a flood of unknown keys is answered 429 without reaching the database. Known keys are cached in a bounded
LRU (unknown ones in a smaller one of their own), so a flood can evict entries but never wipes the cache.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict

from flask import Blueprint, Flask, current_app, g, request
from flask_limiter import Limiter
from limits import parse as parse_limit

from server.db import session_scope
from server.errors import ApiError
from server.keys import HEADER, find_key, hash_key

log = logging.getLogger(__name__)

KEY_CACHE_TTL_S = 10.0
"""Keys are looked up at most this often per process: a revoked key stops working within this time."""

KNOWN_KEYS_CACHED = 10_000
UNKNOWN_KEYS_CACHED = 1_024


class KeyCache:
    """digest → (looked up at, key id or None, its rate limit): two LRUs, so unknown keys cannot evict known ones."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: OrderedDict[str, tuple[float, int | None, str | None]] = OrderedDict()
        self._unknown: OrderedDict[str, tuple[float, int | None, str | None]] = OrderedDict()

    def get(self, digest: str, now: float) -> tuple[int | None, str | None] | None:
        with self._lock:
            for table in (self._known, self._unknown):
                hit = table.get(digest)
                if hit is not None and now - hit[0] < KEY_CACHE_TTL_S:
                    table.move_to_end(digest)
                    return hit[1], hit[2]
        return None

    def put(self, digest: str, now: float, found: tuple[int | None, str | None]) -> None:
        table, size = (self._known, KNOWN_KEYS_CACHED) if found[0] is not None else (self._unknown, UNKNOWN_KEYS_CACHED)
        with self._lock:
            self._known.pop(digest, None)
            self._unknown.pop(digest, None)
            table[digest] = (now, *found)
            while len(table) > size:
                table.popitem(last=False)

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


def _lookup(db_url: str, raw: str) -> tuple[int | None, str | None]:
    """(key id or None when unknown/revoked, its own rate limit), cached briefly."""
    digest = hash_key(raw)
    now = time.monotonic()
    if (hit := key_cache.get(digest, now)) is not None:
        return hit
    with session_scope(db_url) as session:
        record = find_key(session, raw)
        found = (record.id, record.rate_limit) if record is not None else (None, None)
    key_cache.put(digest, now, found)
    return found


def forget_cached_keys() -> None:
    key_cache.clear()


PUBLIC_ENDPOINTS = {"api.openapi"}


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
    """Sets g.api_key_id (None in open mode); 401 when the key is missing, unknown or revoked."""
    if request.blueprint != "api" or request.endpoint in PUBLIC_ENDPOINTS or request.method == "OPTIONS":
        return
    settings = current_app.config["MESOSCAN"]
    g.api_key_id, g.key_rate_limit = None, None
    raw = request.headers.get(HEADER)
    if settings.open_mode and not raw:
        return
    challenge = {"WWW-Authenticate": f'ApiKey header="{HEADER}"'}
    _check_failure_budget(raw)
    if not raw:
        _refuse_unauthenticated(f"send an API key in the {HEADER} header", challenge)
    key_id, rate_limit = _lookup(settings.database_url, raw)
    if key_id is None:
        _refuse_unauthenticated("unknown or revoked API key", challenge)
    g.api_key_id, g.key_rate_limit = key_id, rate_limit


def rate_key() -> str:
    key_id = g.get("api_key_id")
    return f"key:{key_id}" if key_id is not None else f"addr:{request.remote_addr}"


def current_limit() -> str:
    settings = current_app.config["MESOSCAN"]
    if request.method == "POST":
        return g.get("key_rate_limit") or settings.rate_limit
    return settings.read_rate_limit


def submission_cost() -> int:
    """What a request costs against its budget: one per URL of a batch, one for anything else."""
    if request.method != "POST" or request.endpoint != "api.create_batch":
        return 1
    try:
        body = request.get_json(silent=True)
    except RecursionError:
        body = None
    urls = body.get("urls") if isinstance(body, dict) else None
    cap = current_app.config["MESOSCAN"].max_batch_urls
    return max(1, min(len(urls), cap)) if isinstance(urls, list) else 1


def init_limits(app: Flask, api: Blueprint) -> Limiter:
    settings = app.config["MESOSCAN"]
    app.before_request(authenticate)  # before the limiter's own hook: limits are per key
    limiter = Limiter(
        key_func=rate_key,
        storage_uri=settings.limiter_storage,
        storage_options={"socket_timeout": 1, "socket_connect_timeout": 1}
        if settings.limiter_storage.startswith("redis")
        else {},
        strategy="fixed-window",
        headers_enabled=False,
        swallow_errors=True,  # a limiter whose Redis is down lets requests through rather than failing them
        in_memory_fallback_enabled=True,
        key_prefix="mesoscan",
    )
    # One submission budget and one read budget per key, shared by all endpoints.
    limiter.shared_limit(
        current_limit,
        scope=lambda _endpoint: "submit" if request.method == "POST" else "read",
        exempt_when=lambda: request.endpoint in PUBLIC_ENDPOINTS,
        cost=submission_cost,
        # tested before, charged after: a refused batch does not use up the rest of the budget
        deduct_when=lambda response: response.status_code != 429,
    )(api)
    limiter.init_app(app)
    app.extensions["mesoscan_limiter"] = limiter
    return limiter
