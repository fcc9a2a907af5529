"""The pages for people: the scan form `/` and the shareable report page `/scans/<id>`, server-rendered, escaped.

Titles and URLs come from videos and their sites, so they are attacker-controlled: Jinja autoescaping renders them
as text, links are made only for http(s) URLs, face crops are inlined only when they are plain base64, and the
report's Content-Security-Policy forbids scripts altogether. The form page runs one self-hosted script (uploads with
progress, then the scan's stage); without it the form posts to `POST /` and the report page refreshes itself.
Styles are one self-hosted sheet: no page allows inline styles or scripts.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass

from flask import Blueprint, current_app, render_template, request

from server import jobs
from server.db import read_scope
from server.errors import ApiError
from server.models import Scan

bp = Blueprint("pages", __name__)

CSP = "default-src 'none'; img-src data:; style-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
FORM_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src data:; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
"""The scan form's policy: its own script, and requests to this gateway only."""
_BASE64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")


@dataclass
class Chart:
    width: int
    height: int
    left: float
    right: float
    top: float
    bottom: float
    lines: list[str]
    """SVG polyline `points` strings, one per run of frames with faces."""
    dots: list[tuple[float, float, float, float]]
    """(x, y, t, probability) of each frame with faces."""
    empty: list[float]
    """x of frames without a face."""
    threshold_y: float
    band: tuple[float, float]
    """y of the top and bottom of the uncertain band."""
    x_ticks: list[tuple[float, str, str]]
    """(x, label, SVG text-anchor)."""
    y_ticks: list[tuple[float, str]]


def timeline_chart(
    timeline: list[dict], duration: float | None, threshold: float, band: float, width: int = 720, height: int = 200
) -> Chart:
    left, right, top, bottom = 44.0, width - 12.0, 12.0, height - 28.0
    t_end = max([duration or 0.0] + [p["t"] for p in timeline] + [1e-6])

    def x(t: float) -> float:
        return round(left + (right - left) * t / t_end, 1)

    def y(p: float) -> float:
        return round(bottom - (bottom - top) * p, 1)

    lines, run, dots, empty = [], [], [], []
    for point in timeline:
        p = point["fake_probability"]
        if p is None:
            empty.append(x(point["t"]))
            if run:
                lines.append(" ".join(run))
                run = []
            continue
        run.append(f"{x(point['t'])},{y(p)}")
        dots.append((x(point["t"]), y(p), point["t"], p))
    if run:
        lines.append(" ".join(run))
    anchors = ["start", "middle", "middle", "middle", "end"]
    x_ticks = [(x(t_end * i / 4), f"{t_end * i / 4:.1f} s", anchors[i]) for i in range(5)]
    y_ticks = [(y(v), f"{v:.2f}") for v in (0.0, 0.25, 0.5, 0.75, 1.0)]
    return Chart(
        width,
        height,
        left,
        right,
        top,
        bottom,
        lines,
        dots,
        empty,
        y(threshold),
        (y(min(threshold + band, 1.0)), y(max(threshold - band, 0.0))),
        x_ticks,
        y_ticks,
    )


def safe_link(url: str | None) -> str | None:
    """The URL when it may be a link (http or https); None otherwise (it is still shown as text)."""
    if not url:
        return None
    return url if urllib.parse.urlsplit(url).scheme.lower() in ("http", "https") else None


def faces(document: dict) -> list[dict]:
    return [f for f in document.get("top_faces") or [] if _BASE64.match(f.get("jpeg_base64") or "")]


@bp.get("/scans/<scan_id>")
def report(scan_id: str):
    if not jobs.ID_PATTERN.match(scan_id):
        raise ApiError(404, "not_found", "there is no scan with this id")
    with read_scope(current_app.config["MESOSCAN"].database_url) as session:
        scan = session.get(Scan, scan_id)
        if scan is None:
            raise ApiError(404, "not_found", "there is no scan with this id")
        # The page a video was found on is shown only through the report link made for that submission.
        token = request.args.get("s", "")
        page = jobs.page_of(session, scan_id, None, token=token) if jobs.ID_PATTERN.match(token) else None
    page_url = page.page_url if page is not None else None
    document = scan.result or {}
    verdict = document.get("verdict") or {}
    source = document.get("source") or {}
    chart = None
    if scan.status == "done" and document.get("timeline"):
        chart = timeline_chart(
            document["timeline"],
            source.get("duration_s"),
            verdict.get("threshold", 0.5),
            verdict.get("uncertain_band", 0.0),
        )
    return render_template(
        "report.html",
        scan=scan,
        document=document,
        verdict=verdict,
        source=source,
        chart=chart,
        faces=faces(document),
        source_link=safe_link(source.get("url") or scan.url),
        page_url=page_url,
        page_link=safe_link(page_url),
    )


# --- the scan form ---------------------------------------------------------------------------------------------


def _form_context() -> dict:
    from server.api import _models
    from server.uploads import ACCEPT

    settings = current_app.config["MESOSCAN"]
    default, models = _models()
    minutes, seconds = divmod(int(current_app.config["MESOSCAN_SCANNER"].max_duration_s), 60)
    return {
        "models": [{"name": name, "default": name == default} for name in models],
        "keys_required": not settings.open_mode,
        "uploads_enabled": settings.upload_daily_mb > 0,
        "max_upload_mb": settings.max_upload_mb,
        "max_upload_bytes": settings.max_upload_bytes,
        "max_duration": f"{minutes} min" + (f" {seconds} s" if seconds else "") if minutes else f"{seconds} s",
        "accept": ACCEPT,
    }


def _form_page(status: int = 200, error: dict | None = None, form_url: str = ""):
    response = current_app.make_response(
        (render_template("index.html", error=error, form_url=form_url, **_form_context()), status)
    )
    response.headers["Content-Security-Policy"] = FORM_CSP
    return response


@bp.get("/")
def index():
    return _form_page()


def _identify(fields: dict[str, str]) -> tuple[int | None, str]:
    """The form's sender: its API key (a form field: a plain form cannot send headers) or, in open mode, its
    address; the submission is charged to the same rate limit as the API's."""
    from flask import g

    from server.auth import requester, use_key
    from server.limits import current_limit

    if "form_identified" not in g:
        settings = current_app.config["MESOSCAN"]
        raw = (fields.get("api_key") or "").strip()
        known = use_key(settings.database_url, raw)
        if raw and not known:
            raise ApiError(401, "unauthorized", "unknown or revoked API key")
        if not raw and not settings.open_mode:
            raise ApiError(401, "unauthorized", "enter your API key to scan")
        with current_app.extensions["mesoscan_limiter"].shared_limit(current_limit, scope="submit"):
            pass
        g.form_identified = True
    return g.api_key_id, requester()


def _submit_form():
    from flask import g, redirect, request, url_for

    from server import api, uploads
    from server.metrics import SUBMISSIONS

    settings = current_app.config["MESOSCAN"]
    if request.mimetype == "multipart/form-data":
        upload, state = uploads.accept(request, settings, _identify, api._model)
        fields = upload.fields
        if upload.path is not None:
            scan, outcome = uploads.submit_upload(
                settings, upload, model=state["model"], version=state["version"], api_key_id=state["api_key_id"]
            )
            if outcome == "created":
                api.publish_upload(scan)
            SUBMISSIONS.labels(outcome).inc()
            return redirect(url_for("pages.report", scan_id=scan.id), 303)
    else:
        fields = request.form.to_dict()
    url = (fields.get("url") or "").strip()
    g.form_url = url[:2048]
    if not url:
        raise ApiError(400, "invalid_request", "paste a video link or choose a video file")
    api_key_id, _who = _identify(fields)
    submission = api.submit_url(url, None, fields.get("model") or None, api_key_id)
    return redirect(url_for("pages.report", scan_id=submission.scan.id), 303)


@bp.post("/")
def submit():
    """The form without JavaScript: a link or a file becomes a scan, answered with a redirect to its report page
    (which refreshes itself until the scan is done); a refusal shows the form again with its message."""
    from flask import g
    from werkzeug.exceptions import HTTPException

    try:
        return _submit_form()
    except ApiError as exc:
        error, status, headers = {"code": exc.code, "message": exc.message}, exc.status, exc.headers
    except HTTPException as exc:  # the rate limiter (429), a body over the form limit (413), ...
        from server.errors import CODES

        status = exc.code or 400
        error = {
            "code": CODES.get(status, "invalid_request"),
            "message": "too many scans from this key or address; try again in a minute"
            if status == 429
            else (exc.description or exc.name),
        }
        headers = {"Retry-After": "60"} if status == 429 else {}
    response = _form_page(status, error, g.get("form_url", ""))
    response.headers.update(headers)
    return response


@bp.after_app_request
def _security_headers(response):
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    if response.mimetype == "text/html":
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
    return response
