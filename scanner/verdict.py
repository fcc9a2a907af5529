"""The verdict document's numbers: scored faces aggregated per person and over time, plus the label rules.

Aggregation follows the paper's video-level rule: a person's score is the mean of their face scores, and
the video's score is its most suspicious person. People seen in a single sampled frame are reported but
decide the verdict only when nobody was seen more than once (a one-frame detection is often a false face).
The label is `uncertain` within `uncertain_band` of the model's threshold, `no_face` when no face was
scored — never `real` by default. The document's shape is `scanner.document`'s models.
"""

from __future__ import annotations

import base64
import copy
import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scanner.document import ErrorCode, ModelInfo, Source, Verdict, VerdictDocument
from scanner.document import schema as document_schema


@dataclass
class ScoredFace:
    t: float
    frame: int
    person: int
    box: tuple[float, float, float, float]
    """The face crop's square in frame pixels: x, y, w, h."""
    fake_probability: float
    image: np.ndarray | None = field(default=None, repr=False)
    """The 256×256 crop, kept for the most suspicious faces."""


def label_for(probability: float | None, threshold: float, band: float) -> str:
    if probability is None:
        return "no_face"
    if abs(probability - threshold) < band:
        return "uncertain"
    return "fake" if probability >= threshold else "real"


def confidence_for(probability: float | None, threshold: float) -> float | None:
    """How far the score is from the threshold, as a share of the way to the end it is on (0 at the threshold,
    1 at 0 or 1)."""
    if probability is None:
        return None
    if probability >= threshold:
        return (probability - threshold) / (1 - threshold) if threshold < 1 else 1.0
    return (threshold - probability) / threshold if threshold > 0 else 1.0


def people_summary(faces: list[ScoredFace]) -> list[dict]:
    people: dict[int, list[ScoredFace]] = {}
    for face in faces:
        people.setdefault(face.person, []).append(face)
    summary = []
    for person, own in sorted(people.items()):
        summary.append(
            {
                "id": person,
                "fake_probability": round(float(np.mean([f.fake_probability for f in own])), 6),
                "faces": len(own),
                "first_t": round(min(f.t for f in own), 3),
                "last_t": round(max(f.t for f in own), 3),
            }
        )
    return summary


def video_score(people: list[dict]) -> float | None:
    if not people:
        return None
    counted = [p for p in people if p["faces"] > 1] or people
    return max(p["fake_probability"] for p in counted)


def timeline(faces: list[ScoredFace], frame_times: list[float]) -> list[dict]:
    """One point per sampled frame: its most suspicious face's score (null when no face was scored)."""
    by_time: dict[float, list[float]] = {round(t, 3): [] for t in frame_times}
    for face in faces:
        by_time.setdefault(round(face.t, 3), []).append(face.fake_probability)
    return [
        {"t": t, "fake_probability": round(max(scores), 6) if scores else None, "faces": len(scores)}
        for t, scores in sorted(by_time.items())
    ]


def top_faces(faces: list[ScoredFace], count: int, jpeg_quality: int = 85) -> list[dict]:
    from serving.images import encode_jpeg

    chosen = sorted((f for f in faces if f.image is not None), key=lambda f: -f.fake_probability)[:count]
    return [
        {
            "t": round(f.t, 3),
            "person": f.person,
            "box": [round(float(v), 1) for v in f.box],
            "fake_probability": round(f.fake_probability, 6),
            "jpeg_base64": base64.b64encode(encode_jpeg(f.image, jpeg_quality)).decode("ascii"),
        }
        for f in chosen
    ]


def build_document(
    *,
    source: Source | dict,
    model: ModelInfo | dict,
    threshold: float,
    band: float,
    faces: list[ScoredFace],
    frame_times: list[float],
    faces_skipped: int,
    keyframes: bool,
    top: int,
    timings_ms: dict[str, float],
) -> dict[str, Any]:
    """The finished scan's document (`VerdictDocument.finished`) as JSON."""
    people = people_summary(faces)
    score = video_score(people)
    verdict = Verdict(
        label=label_for(score, threshold, band),
        fake_probability=None if score is None else round(score, 6),
        confidence=None if score is None else round(confidence_for(score, threshold), 6),
        threshold=threshold,
        uncertain_band=band,
    )
    return VerdictDocument.finished(
        source=source,
        model=model,
        verdict=verdict,
        frames_sampled=len(frame_times),
        keyframes_only=keyframes,
        faces_analyzed=len(faces),
        faces_skipped=faces_skipped,
        people=people,
        timeline=timeline(faces, frame_times),
        top_faces=top_faces(faces, top),
        timings_ms=timings_ms,
    ).to_dict()


def failed_document(
    *,
    source: Source | dict,
    model: ModelInfo | dict | None,
    code: ErrorCode,
    message: str,
    retryable: bool = False,
    timings_ms: dict[str, float] | None = None,
) -> dict[str, Any]:
    """A failed scan's document (`VerdictDocument.failed`) as JSON."""
    return VerdictDocument.failed(
        source=source, model=model, code=code, message=message, retryable=retryable, timings_ms=timings_ms
    ).to_dict()


def schema() -> dict[str, Any]:
    """The verdict document's JSON Schema, generated from `scanner.document` (as `verdict.schema.json` holds it)."""
    return copy.deepcopy(_schema())


@functools.cache
def _schema() -> dict[str, Any]:
    return document_schema()


def validate(document: dict) -> None:
    """Raise `jsonschema.ValidationError` unless `document` follows the published schema."""
    import jsonschema

    jsonschema.validate(document, _schema(), format_checker=jsonschema.FormatChecker())
