"""Per-key rate limits (Flask-Limiter, counters in Redis shared by all gateways).

Authentication (`server.auth`) runs before the limiter, so limits count per key (per client address in open mode).
Submissions (POST) and reads (GET) have separate limits; a key may carry its own submission limit; a batch costs one
submission per URL.
"""

from __future__ import annotations

from flask import Blueprint, Flask, current_app, g, request
from flask_limiter import Limiter

from server.auth import PUBLIC_ENDPOINTS, authenticate, requester
from server.health import is_redis


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
        key_func=requester,
        storage_uri=settings.limiter_storage,
        storage_options={"socket_timeout": 1, "socket_connect_timeout": 1}
        if is_redis(settings.limiter_storage)
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
