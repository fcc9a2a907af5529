"""The shareable report page `/scans/<id>`: server-rendered HTML and SVG, no JavaScript, everything escaped.

Titles and URLs come from videos and their sites, so they are attacker-controlled: Jinja autoescaping renders them
as text, links are made only for http(s) URLs, face crops are inlined only when they are plain base64, and the
Content-Security-Policy forbids scripts altogether.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass

from flask import Blueprint, current_app, render_template

from server.db import read_scope
from server.errors import ApiError
from server.models import Scan

bp = Blueprint("pages", __name__)

CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; "
       "frame-ancestors 'none'")
_BASE64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


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


def timeline_chart(timeline: list[dict], duration: float | None, threshold: float, band: float,
                   width: int = 720, height: int = 200) -> Chart:
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
    return Chart(width, height, left, right, top, bottom, lines, dots, empty, y(threshold),
                 (y(min(threshold + band, 1.0)), y(max(threshold - band, 0.0))), x_ticks, y_ticks)


def safe_link(url: str | None) -> str | None:
    """The URL when it may be a link (http or https); None otherwise (it is still shown as text)."""
    if not url:
        return None
    return url if urllib.parse.urlsplit(url).scheme.lower() in ("http", "https") else None


def faces(document: dict) -> list[dict]:
    return [f for f in document.get("top_faces") or [] if _BASE64.match(f.get("jpeg_base64") or "")]


@bp.get("/scans/<scan_id>")
def report(scan_id: str):
    if not _ID.match(scan_id):
        raise ApiError(404, "not_found", "there is no scan with this id")
    with read_scope(current_app.config["MESOSCAN"].database_url) as session:
        scan = session.get(Scan, scan_id)
        if scan is None:
            raise ApiError(404, "not_found", "there is no scan with this id")
    document = scan.result or {}
    verdict = document.get("verdict") or {}
    source = document.get("source") or {}
    chart = None
    if scan.status == "done" and document.get("timeline"):
        chart = timeline_chart(document["timeline"], source.get("duration_s"), verdict.get("threshold", 0.5),
                               verdict.get("uncertain_band", 0.0))
    return render_template("report.html", scan=scan, document=document, verdict=verdict, source=source,
                           chart=chart, faces=faces(document), source_link=safe_link(source.get("url") or scan.url),
                           page_link=safe_link(scan.page_url))


@bp.after_app_request
def _security_headers(response):
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    if response.mimetype == "text/html":
        response.headers["Content-Security-Policy"] = CSP
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
    return response
