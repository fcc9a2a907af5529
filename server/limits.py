"""API keys on requests and per-key rate limits (Flask-Limiter, counters in Redis shared by all gateways).

Authentication runs before the limiter, so limits count per key (per client address in open mode). Submissions
(POST) and reads (GET) have separate limits; a key may carry its own submission limit.
"""

from __future__ import annotations

import threading
import time

from flask import Blueprint, Flask, current_app, g, request
from flask_limiter import Limiter

from server.db import session_scope
from server.errors import ApiError
from server.keys import HEADER, find_key, hash_key

KEY_CACHE_TTL_S = 10.0
"""Keys are looked up at most this often per process: a revoked key stops working within this time."""

_cache_lock = threading.Lock()
_key_cache: dict[str, tuple[float, int | None, str | None]] = {}


def _lookup(db_url: str, raw: str) -> tuple[int | None, str | None]:
    """(key id or None when unknown/revoked, its own rate limit), cached briefly."""
    digest = hash_key(raw)
    now = time.monotonic()
    with _cache_lock:
        hit = _key_cache.get(digest)
        if hit and now - hit[0] < KEY_CACHE_TTL_S:
            return hit[1], hit[2]
    with session_scope(db_url) as session:
        record = find_key(session, raw)
        found = (record.id, record.rate_limit) if record is not None else (None, None)
    with _cache_lock:
        if len(_key_cache) > 10_000:
            _key_cache.clear()
        _key_cache[digest] = (now, *found)
    return found


def forget_cached_keys() -> None:
    with _cache_lock:
        _key_cache.clear()


PUBLIC_ENDPOINTS = {"api.openapi"}


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
    if not raw:
        raise ApiError(401, "unauthorized", f"send an API key in the {HEADER} header", headers=challenge)
    key_id, rate_limit = _lookup(settings.database_url, raw)
    if key_id is None:
        raise ApiError(401, "unauthorized", "unknown or revoked API key", headers=challenge)
    g.api_key_id, g.key_rate_limit = key_id, rate_limit


def rate_key() -> str:
    key_id = g.get("api_key_id")
    return f"key:{key_id}" if key_id is not None else f"addr:{request.remote_addr}"


def current_limit() -> str:
    settings = current_app.config["MESOSCAN"]
    if request.method == "POST":
        return g.get("key_rate_limit") or settings.rate_limit
    return settings.read_rate_limit


def init_limits(app: Flask, api: Blueprint) -> Limiter:
    settings = app.config["MESOSCAN"]
    app.before_request(authenticate)  # before the limiter's own hook: limits are per key
    limiter = Limiter(
        key_func=rate_key,
        storage_uri=settings.limiter_storage,
        storage_options={"socket_timeout": 1, "socket_connect_timeout": 1}
        if settings.limiter_storage.startswith("redis") else {},
        strategy="fixed-window",
        headers_enabled=False,
        swallow_errors=True,  # a limiter whose Redis is down lets requests through rather than failing them
        in_memory_fallback_enabled=True,
        key_prefix="mesoscan",
    )
    # One submission budget and one read budget per key, shared by all endpoints.
    limiter.shared_limit(current_limit, scope=lambda _endpoint: "submit" if request.method == "POST" else "read",
                         exempt_when=lambda: request.endpoint in PUBLIC_ENDPOINTS)(api)
    limiter.init_app(app)
    app.extensions["mesoscan_limiter"] = limiter
    return limiter
