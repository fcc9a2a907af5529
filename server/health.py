"""Liveness and readiness: `/healthz` (the process answers); `/readyz` (broker, database, model backend reachable)."""

from __future__ import annotations

import functools
import threading

from cachetools import TTLCache
from flask import Blueprint, current_app, jsonify
from sqlalchemy import text

bp = Blueprint("health", __name__)

MODEL_CHECK_TTL_S = 5.0
_model_check_lock = threading.Lock()
_model_check: TTLCache[str, dict] = TTLCache(16, MODEL_CHECK_TTL_S)


def is_redis(url: str) -> bool:
    """A Redis URL (the broker's, the rate limiter's): `redis_client` can talk to it."""
    return url.startswith(("redis://", "rediss://"))


@functools.cache
def redis_client(url: str):
    """A small shared client per URL with short timeouts (health checks and metrics must not hang)."""
    import redis

    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2, health_check_interval=10)


def check_broker(url: str) -> dict:
    if url.startswith("memory://"):
        return {"ok": True, "detail": "in-process broker (development mode)"}
    try:
        redis_client(url).ping()
    except Exception as exc:
        return {"ok": False, "detail": f"broker unreachable: {type(exc).__name__}: {exc}"}
    return {"ok": True, "detail": "reachable"}


def check_database(url: str) -> dict:
    from server.db import current_revision, get_engine, head_revision

    try:
        engine, _ = get_engine(url)
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        revision = current_revision(url)
    except Exception as exc:
        return {"ok": False, "detail": f"database unreachable: {type(exc).__name__}"}
    if revision != head_revision():
        return {
            "ok": False,
            "detail": f"database schema at {revision}, expected {head_revision()}: run `mesoscan db upgrade`",
        }
    return {"ok": True, "detail": f"reachable, schema {revision}"}


def check_model_backend(settings) -> dict:
    """The backend of `settings` (the model side's) can score with the default model: TF Serving answers for it,
    or (embedded) the workers can load it. Cached for a few seconds: readiness probes come often."""
    key = f"{settings.model_backend}|{settings.tfserving_url}|{settings.model}"
    with _model_check_lock:
        if (result := _model_check.get(key)) is None:
            result = _model_check[key] = _probe_model_backend(settings)
        return result


def _probe_model_backend(settings) -> dict:
    from serving.errors import ServingError
    from serving.registry import get_model, is_installed

    try:
        spec = get_model(settings.model, settings)
    except ServingError as exc:
        return {"ok": False, "detail": str(exc)}
    if settings.model_backend == "embedded":
        where = "installed" if is_installed(spec, settings) else "fetched by the workers on first use"
        return {"ok": True, "detail": f"embedded in the workers: {spec.name} v{spec.version} ({where})"}
    from serving.predictor import get_predictor

    try:
        with get_predictor(spec.name, settings) as predictor:
            predictor.check()
    except ServingError as exc:
        return {"ok": False, "detail": f"model_unavailable: {exc}"}
    except Exception as exc:  # a backend library failing in an unexpected way is still "not ready"
        return {"ok": False, "detail": f"model_unavailable: {type(exc).__name__}: {exc}"}
    return {
        "ok": True,
        "detail": f"{settings.model_backend} at {settings.tfserving_url} serves {spec.name} v{spec.version}",
    }


@bp.get("/healthz")
def healthz():
    return jsonify(status="ok")


_ready_lock = threading.Lock()
_ready: TTLCache[tuple, dict] = TTLCache(16, MODEL_CHECK_TTL_S)


def _checks(settings, serving) -> dict:
    """The three checks, kept for MODEL_CHECK_TTL_S per process: probes may come often, and from anyone."""
    key = (settings.broker_url, settings.database_url, serving.model_backend, serving.tfserving_url, serving.model)
    with _ready_lock:
        if (checks := _ready.get(key)) is None:
            checks = _ready[key] = {
                "broker": check_broker(settings.broker_url),
                "database": check_database(settings.database_url),
                "model_backend": check_model_backend(serving),
            }
        return checks


@bp.get("/readyz")
def readyz():
    checks = _checks(current_app.config["MESOSCAN"], current_app.config["MESOSCAN_SERVING"])
    ready = all(c["ok"] for c in checks.values())
    return jsonify(status="ready" if ready else "unavailable", checks=checks), 200 if ready else 503
