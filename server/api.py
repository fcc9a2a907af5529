"""The JSON API under /api/v1: submit scans and batches, read their status and verdict documents."""

from __future__ import annotations

import json
import logging
import threading
import urllib.parse
from typing import Annotated, Any

from cachetools import LRUCache, TTLCache
from flask import Blueprint, current_app, g, jsonify, request, url_for
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import delete, select

from scanner.errors import InvalidUrlError, ScanError
from server import jobs, uploads
from server.db import read_scope, session_scope
from server.errors import ApiError
from server.jobs import ID_PATTERN, UNSTORABLE
from server.metrics import SUBMISSIONS
from server.models import ACTIVE, FINAL, Batch, BatchItem, Scan, utcnow

log = logging.getLogger(__name__)

bp = Blueprint("api", __name__, url_prefix="/api/v1")

STATUSES = ("queued", "running", "done", "failed", "rejected")


def _storable(text: str) -> str:
    """No NUL and no lone surrogates: neither can be stored as text (PostgreSQL refuses them)."""
    if UNSTORABLE.search(text):
        raise ValueError("text may not contain NUL characters or lone surrogates")
    return text


Text = Annotated[str, AfterValidator(_storable)]


class ScanRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Text = Field(min_length=1, max_length=2048)
    page_url: Text | None = Field(default=None, max_length=2048)
    model: Text | None = Field(default=None, max_length=100)


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    urls: list[Annotated[Text, Field(max_length=2048)]] = Field(min_length=1)
    model: Text | None = Field(default=None, max_length=100)


def _settings():
    return current_app.config["MESOSCAN"]


def _body(schema: type[BaseModel]) -> Any:
    try:
        data = request.get_json()  # 415 unless JSON, 400 when unparsable, 413 over MAX_CONTENT_LENGTH
    except RecursionError:  # deeply nested arrays or objects, well under the size limit
        raise ApiError(400, "invalid_request", "the JSON body is nested too deeply") from None
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        details = [
            {"field": ".".join(str(p) for p in e["loc"]) or "(body)", "problem": e["msg"]}
            for e in exc.errors(include_url=False, include_input=False)
        ]
        raise ApiError(
            400,
            "invalid_request",
            "the request body does not match the API: " + "; ".join(f"{d['field']}: {d['problem']}" for d in details),
            details=details,
        ) from None


def _policy():
    """The video pipeline's URL policy, made from the app's pipeline settings once per app."""
    policy = current_app.extensions.get("mesoscan_url_policy")
    if policy is None:
        from scanner.netguard import AddressPolicy

        scanner = current_app.config["MESOSCAN_SCANNER"]
        policy = current_app.extensions["mesoscan_url_policy"] = AddressPolicy.from_settings(scanner)
    return policy


def check_video_url(url: str, policy=None) -> str:
    """The SSRF rules of the video pipeline, at the door: raises ScanError (invalid_url, blocked_address)."""
    settings = _settings()
    if len(url) > settings.max_url_length:
        raise InvalidUrlError(f"the URL is longer than {settings.max_url_length} characters")
    (policy or _policy()).check_url(url)
    if _has_credentials(url):
        raise InvalidUrlError("URLs with a user name or password are not accepted (they would be stored and shown)")
    return url.strip()


def _has_credentials(url: str) -> bool:
    try:
        parts = urllib.parse.urlsplit(url.strip())
    except ValueError:
        return False
    return "@" in parts.netloc


def _check_page_url(url: str | None) -> str | None:
    if url is None or not url.strip():
        return None
    try:
        parts = urllib.parse.urlsplit(url.strip())
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ApiError(400, "invalid_url", "page_url is not a valid URL") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise ApiError(400, "invalid_url", "page_url must be an http(s) URL")
    if _has_credentials(url):
        raise ApiError(400, "invalid_url", "page_url may not hold a user name or password")
    return url.strip()


def external_url(endpoint: str, **values) -> str:
    """An absolute URL under the configured public URL; never built from a request's `Host` header in production
    (open mode: the request's host, which the app checked is a loopback name; no public URL: a relative URL)."""
    settings = _settings()
    path = url_for(endpoint, **values)
    if settings.public_url:
        return settings.public_url.rstrip("/") + path
    if settings.open_mode:
        return request.host_url.rstrip("/") + path
    return path


MODELS_TTL_S = 60.0
"""Registered models are listed at most this often per process (a newly trained model is accepted within a minute)."""
FINAL_ANSWERS_CACHED = 256


class _Caches:
    """An app's answers kept in memory: those of finished scans (they never change again), the registered models."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.final: LRUCache[tuple[str, str], bytes] = LRUCache(FINAL_ANSWERS_CACHED)
        self.models: TTLCache[str, tuple[str, dict[str, int]]] = TTLCache(1, MODELS_TTL_S)


@bp.record_once
def _add_caches(state) -> None:
    state.app.extensions["mesoscan_caches"] = _Caches()


def _caches() -> _Caches:
    return current_app.extensions["mesoscan_caches"]


def _models() -> tuple[str, dict[str, int]]:
    """(default model, {name: version}) of the registry, cached briefly per app."""
    caches = _caches()
    with caches.lock:
        found = caches.models.get("registry")
    if found is None:
        from serving.registry import list_models

        settings = current_app.config["MESOSCAN_SERVING"]
        found = (settings.model, {spec.name: spec.version for spec in list_models(settings)})
        with caches.lock:
            caches.models["registry"] = found
    return found


def _model(name: str | None) -> tuple[str, int]:
    default, models = _models()
    name = default if name is None else name
    if name not in models:
        raise ApiError(
            400,
            "unknown_model",
            f"unknown model {name!r}; registered models: {', '.join(models)} (see `mesoscan models list`)",
        )
    return name, models[name]


def _iso(value) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def scan_json(
    scan: Scan, cached: bool | None = None, page_url: str | None = None, page_token: str | None = None
) -> dict:
    """The scan as the API shows it; `page_url` is the requester's own (its `page_token` goes into the report link)."""
    upload = {"file_name": scan.upload_name, "size_bytes": scan.upload_bytes} if scan.upload_name is not None else None
    out = {
        "id": scan.id,
        "url": None if upload else scan.url,
        "upload": upload,
        "page_url": page_url,
        "model": {"name": scan.model, "version": scan.model_version},
        "status": scan.status,
        "progress": (
            {"stage": scan.stage, "fraction": round(scan.fraction or 0.0, 4)}
            if scan.status == "running" and scan.stage in ("fetch", "analyze", "classify")
            else None
        ),
        "attempts": scan.attempts,
        "created_at": _iso(scan.created_at),
        "started_at": _iso(scan.started_at),
        "finished_at": _iso(scan.finished_at),
        "status_url": external_url("api.get_scan", scan_id=scan.id),
        "report_url": (
            external_url("pages.report", scan_id=scan.id, s=page_token)
            if page_token
            else external_url("pages.report", scan_id=scan.id)
        ),
        "reused_from": scan.reused_from,
        "result": scan.result if scan.status in ("done", "failed") else None,
    }
    if cached is not None:
        out["cached"] = cached
    return out


def _publish(created: list[Scan]) -> None:
    """Send the new scans' tasks; when the broker is down, forget them and answer 503."""
    publish = current_app.extensions["celery"].publish
    sent: set[str] = set()
    try:
        for scan in created:
            publish(scan.id, scan.task_id)  # type: ignore[arg-type]
            sent.add(scan.id)
    except Exception as exc:
        log.warning("broker unavailable, %d scan(s) not queued: %s", len(created) - len(sent), exc)
        with session_scope(_settings().database_url) as session:
            jobs.forget_unpublished(session, [s.id for s in created if s.id not in sent])
        if sent:  # some went out: their records stay and they will run
            log.warning("a partly queued request: %d scan(s) were sent before the broker failed", len(sent))
        raise ApiError(
            503, "broker_unavailable", "the job queue is unreachable; try again shortly", headers={"Retry-After": "10"}
        ) from None


def create_upload_scan():
    """`POST /api/v1/scans` with a multipart body: the `file` part (and an optional `model` field) becomes a scan.
    The key was checked and the submission counted by the rate limiter before the body is read."""
    from server.auth import requester

    settings = _settings()
    upload, state = uploads.accept(request, settings, lambda _fields: (g.get("api_key_id"), requester()), _model)
    if upload.path is None:
        raise ApiError(
            400,
            "invalid_request",
            f"send the video as a `{uploads.FILE_PART}` part with a file name (or JSON with a `url`)",
        )
    try:
        scan, outcome = uploads.submit_upload(
            settings, upload, model=state["model"], version=state["version"], api_key_id=state["api_key_id"]
        )
    except ApiError:
        SUBMISSIONS.labels("rejected").inc()
        raise
    if outcome == "created":
        publish_upload(scan)
    SUBMISSIONS.labels(outcome).inc()
    cached = outcome == "cached"
    response = jsonify(scan_json(scan, cached=cached))
    if not cached:
        response.status_code = 202
        response.headers["Location"] = external_url("api.get_scan", scan_id=scan.id)
    return response


def publish_upload(scan: Scan) -> None:
    """Send the scan's task; when the broker is down its record and its stored file go (503)."""
    try:
        _publish([scan])
    except ApiError:
        uploads.remove_stored(_settings(), scan.id)
        raise


def submit_url(raw_url: str, page_url: str | None, model_name: str | None, api_key_id: int | None) -> jobs.Submission:
    """One video URL becomes a scan, or the answer of an earlier one for the same URL and model: checked, recorded,
    its task sent, counted (the API's `POST /scans` and the web page's form)."""
    try:
        url = check_video_url(raw_url)
    except ScanError as exc:
        SUBMISSIONS.labels("rejected").inc()
        raise ApiError(400, exc.code, exc.message) from None
    page_url = _check_page_url(page_url)
    model, version = _model(model_name)
    settings = _settings()
    with session_scope(settings.database_url) as session:
        submission = jobs.submit(
            session,
            url=url,
            page_url=page_url,
            model=model,
            version=version,
            api_key_id=api_key_id,
            cache_ttl_s=settings.cache_ttl_s,
        )
    if submission.outcome == "created":
        _publish([submission.scan])
    SUBMISSIONS.labels(submission.outcome).inc()
    return submission


@bp.post("/scans")
def create_scan():
    if request.mimetype == "multipart/form-data":
        return create_upload_scan()
    body = _body(ScanRequest)
    submission = submit_url(body.url, body.page_url, body.model, g.get("api_key_id"))
    cached = submission.outcome == "cached"
    response = jsonify(
        scan_json(submission.scan, cached=cached, page_url=submission.page_url, page_token=submission.page_token)
    )
    if not cached:
        response.status_code = 202
        response.headers["Location"] = external_url("api.get_scan", scan_id=submission.scan.id)
    return response


def _get_or_404(session, model, item_id: str):
    found = session.get(model, item_id) if ID_PATTERN.match(item_id) else None
    if found is None:
        raise ApiError(404, "not_found", f"no {'batch' if model is Batch else 'scan'} with this id")
    return found


@bp.get("/scans/<scan_id>")
def get_scan(scan_id: str):
    caches = _caches()
    key = (request.host_url, scan_id)
    with read_scope(_settings().database_url) as session:
        page = jobs.page_of(session, scan_id, g.get("api_key_id")) if ID_PATTERN.match(scan_id) else None
        body = None
        if page is None:  # the cached answer holds no one's page URL
            with caches.lock:
                body = caches.final.get(key)
        if body is None:
            scan = _get_or_404(session, Scan, scan_id)
            body = json.dumps(
                scan_json(scan, page_url=page and page.page_url, page_token=page and page.id), separators=(",", ":")
            ).encode()
            if scan.status in FINAL and page is None:
                with caches.lock:
                    caches.final[key] = body
    return current_app.response_class(body, mimetype="application/json")


@bp.post("/batches")
def create_batch():
    body = _body(BatchRequest)
    settings = _settings()
    if len(body.urls) > settings.max_batch_urls:
        raise ApiError(400, "invalid_request", f"a batch holds at most {settings.max_batch_urls} URLs")
    model, version = _model(body.model)
    policy = _policy()
    created: list[Scan] = []
    with session_scope(settings.database_url) as session:
        batch = Batch(
            id=jobs.new_id(), model=model, model_version=version, api_key_id=g.get("api_key_id"), created_at=utcnow()
        )
        session.add(batch)
        for position, raw in enumerate(body.urls):
            item = BatchItem(batch_id=batch.id, position=position, url=raw[: settings.max_url_length])
            try:
                url = check_video_url(raw, policy)
            except ScanError as exc:
                item.error_code, item.error_message = exc.code, exc.message
                SUBMISSIONS.labels("rejected").inc()
            else:
                submission = jobs.submit(
                    session,
                    url=url,
                    page_url=None,
                    model=model,
                    version=version,
                    api_key_id=g.get("api_key_id"),
                    cache_ttl_s=settings.cache_ttl_s,
                )
                item.scan_id = submission.scan.id
                SUBMISSIONS.labels(submission.outcome).inc()
                if submission.outcome == "created":
                    created.append(submission.scan)
            session.add(item)
    try:
        _publish(created)
    except ApiError:  # nothing of a refused request stays behind
        with session_scope(settings.database_url) as session:
            session.execute(delete(Batch).where(Batch.id == batch.id))
        raise
    with read_scope(settings.database_url) as session:
        payload = batch_json(session, session.get(Batch, batch.id))
    response = jsonify(payload)
    response.status_code = 202
    response.headers["Location"] = payload["status_url"]
    return response


def batch_json(session, batch: Batch) -> dict:
    """The batch with each item's scan status, verdict label part and error: only those parts of the documents are
    read (face crops stay in the database)."""
    rows = session.execute(
        select(
            BatchItem.url,
            BatchItem.error_code,
            BatchItem.error_message,
            Scan.id,
            Scan.status,
            Scan.result["verdict"],
            Scan.result["error"],
        )
        .outerjoin(Scan, Scan.id == BatchItem.scan_id)
        .where(BatchItem.batch_id == batch.id)
        .order_by(BatchItem.position)
    )
    counts = dict.fromkeys(STATUSES, 0)
    items = []
    for url, error_code, error_message, scan_id, status, verdict, doc_error in rows:
        if scan_id is None:
            status, verdict = "rejected", None
            error = {"code": error_code or "rejected", "message": error_message or "not scanned"}
        else:
            error = (
                {"code": doc_error.get("code"), "message": doc_error.get("message")}
                if status == "failed" and isinstance(doc_error, dict)
                else None
            )
            verdict = verdict if status == "done" else None
        counts[status] += 1
        items.append(
            {
                "url": url,
                "scan_id": scan_id,
                "status": status,
                "verdict": verdict,
                "error": error,
                "report_url": external_url("pages.report", scan_id=scan_id) if scan_id else None,
            }
        )
    return {
        "id": batch.id,
        "model": {"name": batch.model, "version": batch.model_version},
        "created_at": _iso(batch.created_at),
        "total": len(items),
        "counts": counts,
        "complete": not any(item["status"] in ACTIVE for item in items),
        "status_url": external_url("api.get_batch", batch_id=batch.id),
        "items": items,
    }


@bp.get("/batches/<batch_id>")
def get_batch(batch_id: str):
    with read_scope(_settings().database_url) as session:
        batch = _get_or_404(session, Batch, batch_id)
        return jsonify(batch_json(session, batch))


ARCHITECTURES = {"meso4": "Meso-4", "mesoinception4": "MesoInception-4", "ensemble": "ensemble"}


@bp.get("/models")
def list_models():
    """The registered models (the extension's options page offers them), the default one marked."""
    from serving.registry import list_models as registered

    settings = current_app.config["MESOSCAN_SERVING"]
    return jsonify(
        models=[
            {
                "name": spec.name,
                "architecture": ARCHITECTURES.get(spec.arch, spec.arch),
                "version": spec.version,
                "threshold": spec.threshold,
                "licence": spec.licence,
                "description": spec.description,
                "members": list(spec.members),
                "default": spec.name == settings.model,
            }
            for spec in registered(settings)
        ],
        default=settings.model,
    )


@bp.get("/openapi.json")
def openapi():
    from server.openapi import document
    from serving.registry import list_models

    models = [spec.name for spec in list_models(current_app.config["MESOSCAN_SERVING"])]
    return jsonify(document(_settings().max_batch_urls, models))
