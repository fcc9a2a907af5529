"""A batch's readable outputs: `results.csv` for spreadsheets and `report.html`, one self-contained page.

The CSV is UTF-8 with a byte-order mark (`utf-8-sig`): Excel then opens it as UTF-8 instead of the system's code page,
and LibreOffice, Google Sheets, Python's `csv` and pandas read it as they read plain UTF-8. The input's columns come
first, unchanged, then MesoScan's (prefixed `mesoscan_` where an input column has the same name).

The page opens offline: its style and script are inline and allowed by hash in a strict Content-Security-Policy (no
other script, style, font, frame or connection; images only as `data:`), every string from a video or the input is
escaped by Jinja2's autoescaping, and links are made only for http(s) URLs. Thumbnails are 64 px JPEGs (about 2 KB),
decoded lazily, so a report of 1,000 videos stays a few MB.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Any

from serving.files import atomic_write_bytes

CSV_COLUMNS = [
    "label",
    "fake_probability",
    "confidence",
    "people",
    "faces_analyzed",
    "duration_s",
    "error_code",
    "error_message",
    "model",
]
LABELS = ("fake", "uncertain", "real", "no_face", "failed")
THUMB_PX = 64
SPARK_H = 24

ERROR_WORDS = {
    "invalid_url": "This row does not hold a video link MesoScan can fetch.",
    "blocked_address": "The link points at a private or local network address, which MesoScan never fetches.",
    "unsupported_url": "No video was found at this link.",
    "download_failed": "The video could not be downloaded.",
    "too_large": "The video is larger than the size limit.",
    "too_long": "The video is longer than the duration limit.",
    "not_a_video": "The file at this link is not a video.",
    "corrupt_video": "The video file is damaged or incomplete.",
    "timeout": "Fetching or scanning the video took too long.",
    "model_unavailable": "The detection model could not be used.",
    "internal_error": "MesoScan failed on this video (an internal error).",
}


def label_of(doc: dict) -> str:
    return doc["verdict"]["label"] if doc["status"] == "done" else "failed"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _safe(text: str) -> str:
    """Text MesoScan writes into a cell, made inert for spreadsheets (a leading = + - @ would start a formula)."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def csv_header(columns: list[str], gateway: bool) -> list[str]:
    ours = [*CSV_COLUMNS, "report_url"] if gateway else list(CSV_COLUMNS)
    taken = set(columns)
    return [*columns, *(f"mesoscan_{name}" if name in taken else name for name in ours)]


def csv_row(entry: dict, columns: list[str], gateway: bool) -> list[str]:
    doc, fields = entry["result"], entry["input"]
    verdict, error, model = doc.get("verdict") or {}, doc.get("error") or {}, doc.get("model")
    values = [
        label_of(doc),
        verdict.get("fake_probability"),
        verdict.get("confidence"),
        len(doc["people"]) if doc["status"] == "done" else None,
        doc["faces_analyzed"] if doc["status"] == "done" else None,
        doc["source"].get("duration_s"),
        error.get("code"),
        _safe(error["message"]) if error.get("message") else None,
        f"{model['name']} v{model['version']}" if model else None,
    ]
    if gateway:
        values.append(entry.get("report_url"))
    return [_cell(fields.get(name)) for name in columns] + [_cell(v) for v in values]


def write_csv(path: Path, entries: list[dict], columns: list[str], gateway: bool) -> None:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(csv_header(columns, gateway))
    for entry in entries:
        writer.writerow(csv_row(entry, columns, gateway))
    atomic_write_bytes(path, buffer.getvalue().encode("utf-8-sig"))


# --- report.html -------------------------------------------------------------------------------------------------


def thumbnail(doc: dict) -> str | None:
    """The most suspicious face as a small JPEG data URI (None when no face was kept)."""
    faces = doc.get("top_faces") or []
    if not faces:
        return None
    from PIL import Image

    best = max(faces, key=lambda f: f["fake_probability"])
    with Image.open(io.BytesIO(base64.b64decode(best["jpeg_base64"]))) as image:
        small = image.convert("RGB").resize((THUMB_PX, THUMB_PX), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    small.save(out, "JPEG", quality=80, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii")


def sparkline(doc: dict) -> list[dict]:
    """Bars of the timeline (x, y, height, kind): height is the frame's top fake probability; `none` marks no face."""
    threshold = (doc.get("verdict") or {}).get("threshold", 0.5)
    bars = []
    for i, point in enumerate(doc.get("timeline") or []):
        p = point["fake_probability"]
        height = 1 if p is None else max(1, round(p * SPARK_H))
        kind = "none" if p is None else ("hi" if p >= threshold else "lo")
        bars.append({"x": i * 3, "y": SPARK_H - height, "h": height, "kind": kind})
    return bars


def _link(url: Any) -> str | None:
    return url if isinstance(url, str) and url.lower().startswith(("http://", "https://")) else None


def report_items(entries: list[dict]) -> list[dict]:
    items, thumbs = [], {}
    for entry in entries:
        doc = entry["result"]
        verdict, error, source = doc.get("verdict") or {}, doc.get("error") or {}, doc["source"]
        shown = entry["input"].get("url") if isinstance(entry["input"].get("url"), str) else entry.get("url")
        ident = (entry.get("url"), source.get("sha256"), entry["row"] if not source.get("sha256") else None)
        if ident not in thumbs:
            thumbs[ident] = thumbnail(doc) if doc["status"] == "done" else None
        p = verdict.get("fake_probability")
        items.append(
            {
                "row": entry["row"],
                "url": shown or "",
                "link": _link(shown),
                "label": label_of(doc),
                "rank": LABELS.index(label_of(doc)),
                "probability": p,
                "confidence": verdict.get("confidence"),
                "title": source.get("title") or "",
                "duration": source.get("duration_s"),
                "people": len(doc["people"]) if doc["status"] == "done" else None,
                "faces": doc["faces_analyzed"],
                "thumbnail": thumbs[ident],
                "spark": sparkline(doc),
                "spark_w": max(1, len(doc.get("timeline") or []) * 3),
                "error_code": error.get("code"),
                "error_words": ERROR_WORDS.get(error.get("code") or "", "The scan failed."),
                "error_message": error.get("message"),
                "report_url": _link(entry.get("report_url")),
            }
        )
    return items


def _asset(name: str) -> str:
    return resources.files("scanner").joinpath("templates", name).read_text()


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def render_html(entries: list[dict], meta: dict) -> str:
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(
        loader=PackageLoader("scanner", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    style, script = _asset("batch_report.css"), _asset("batch_report.js")
    csp = (
        f"default-src 'none'; img-src data:; style-src {_csp_hash(style)}; script-src {_csp_hash(script)}; "
        "base-uri 'none'; form-action 'none'"
    )
    items = report_items(entries)
    counts = Counter(item["label"] for item in items)
    failures = Counter(item["error_code"] for item in items if item["label"] == "failed")
    return env.get_template("batch_report.html").render(
        items=items,
        counts={label: counts.get(label, 0) for label in LABELS},
        failures=failures,
        meta=meta,
        style=style,
        script=script,
        csp=csp,
        spark_h=SPARK_H,
    )


def write_html(path: Path, entries: list[dict], meta: dict) -> None:
    atomic_write_bytes(path, render_html(entries, meta).encode("utf-8"))
