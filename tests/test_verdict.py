"""Aggregation and label rules of the verdict document, its typed models and the JSON Schema made from them."""

from __future__ import annotations

import base64
import copy
import io
import json

import jsonschema
import numpy as np
import pydantic
import pytest
from PIL import Image

import scanner.errors
from scanner.document import (
    ERROR_CODES,
    SCHEMA_FILE,
    UploadSource,
    VerdictDocument,
    VideoSource,
    schema_text,
)
from scanner.verdict import (
    ScoredFace,
    build_document,
    confidence_for,
    failed_document,
    label_for,
    people_summary,
    schema,
    timeline,
    validate,
    video_score,
)

SOURCE = {
    "url": "https://example.org/v",
    "title": "<script>alert(1)</script>",
    "duration_s": 10.0,
    "width": 1280,
    "height": 720,
    "fps": 25.0,
    "sha256": "0" * 64,
}
MODEL = {"name": "meso4_df", "version": 1, "backend": "embedded"}


def face(t, person, p, image=True):
    crop = np.full((256, 256, 3), int(p * 255), np.uint8) if image else None
    return ScoredFace(t=t, frame=int(t * 25), person=person, box=(10, 20, 100, 100), fake_probability=p, image=crop)


def document(faces, frame_times=(0.5, 1.5, 2.5, 3.5), threshold=0.5, band=0.1, top=3):
    return build_document(
        source=SOURCE,
        model=MODEL,
        threshold=threshold,
        band=band,
        faces=list(faces),
        frame_times=list(frame_times),
        faces_skipped=2,
        keyframes=False,
        top=top,
        timings_ms={"fetch": 1, "decode": 2, "detect": 3, "classify": 4, "total": 9},
    )


def test_labels():
    assert label_for(None, 0.5, 0.1) == "no_face"
    assert label_for(0.95, 0.5, 0.1) == "fake"
    assert label_for(0.05, 0.5, 0.1) == "real"
    assert label_for(0.55, 0.5, 0.1) == "uncertain"
    assert label_for(0.41, 0.5, 0.1) == "uncertain"
    assert label_for(0.39, 0.5, 0.1) == "real"
    assert label_for(0.3, 0.25, 0.0) == "fake"  # the model's own threshold, not 0.5


def test_confidence_is_the_share_of_the_way_from_threshold_to_the_end():
    assert confidence_for(None, 0.5) is None
    assert confidence_for(0.5, 0.5) == 0
    assert confidence_for(1.0, 0.5) == 1
    assert confidence_for(0.0, 0.5) == 1
    assert confidence_for(0.7, 0.4) == pytest.approx(0.5)
    assert confidence_for(0.1, 0.4) == pytest.approx(0.75)


def test_person_score_is_the_mean_and_the_video_is_its_most_suspicious_person():
    faces = [face(0.5, 0, 0.1), face(1.5, 0, 0.3), face(0.5, 1, 0.9), face(1.5, 1, 0.7)]
    people = people_summary(faces)
    assert [(p["id"], p["fake_probability"], p["faces"]) for p in people] == [(0, 0.2, 2), (1, 0.8, 2)]
    assert (people[1]["first_t"], people[1]["last_t"]) == (0.5, 1.5)
    assert video_score(people) == 0.8


def test_a_person_seen_once_decides_only_when_nobody_was_seen_twice():
    faces = [face(0.5, 0, 0.1), face(1.5, 0, 0.2), face(2.5, 1, 0.99)]
    assert video_score(people_summary(faces)) == pytest.approx(0.15)
    assert video_score(people_summary([face(2.5, 1, 0.99)])) == 0.99
    assert video_score([]) is None


def test_timeline_has_every_sampled_frame_with_its_most_suspicious_face():
    faces = [face(0.5, 0, 0.1), face(0.5, 1, 0.6), face(2.5, 0, 0.3)]
    assert timeline(faces, [0.5, 1.5, 2.5]) == [
        {"t": 0.5, "fake_probability": 0.6, "faces": 2},
        {"t": 1.5, "fake_probability": None, "faces": 0},
        {"t": 2.5, "fake_probability": 0.3, "faces": 1},
    ]


def test_document_follows_the_schema_and_ranks_top_faces():
    doc = document([face(0.5, 0, 0.1), face(1.5, 0, 0.95), face(2.5, 0, 0.9), face(3.5, 0, 0.2, image=False)])
    validate(doc)
    assert doc["status"] == "done"
    assert doc["error"] is None
    assert doc["verdict"]["label"] == "uncertain"  # mean 0.5375 is within 0.1 of 0.5
    assert doc["faces_analyzed"] == 4
    assert doc["faces_skipped"] == 2
    assert [f["fake_probability"] for f in doc["top_faces"]] == [0.95, 0.9, 0.1]
    crop = Image.open(io.BytesIO(base64.b64decode(doc["top_faces"][0]["jpeg_base64"])))
    assert crop.size == (256, 256)
    assert crop.format == "JPEG"


def test_no_face_is_never_real():
    doc = document([])
    validate(doc)
    assert doc["verdict"] == {
        "label": "no_face",
        "fake_probability": None,
        "confidence": None,
        "threshold": 0.5,
        "uncertain_band": 0.1,
    }
    assert [p["faces"] for p in doc["timeline"]] == [0, 0, 0, 0]


def test_failed_document_has_an_error_and_no_probability():
    doc = failed_document(source=SOURCE, model=None, code="blocked_address", message="no", retryable=False)
    validate(doc)
    assert doc["status"] == "failed"
    assert doc["verdict"] is None
    assert doc["error"] == {"code": "blocked_address", "message": "no", "retryable": False}


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(status="failed"),  # failed without an error
        lambda d: d["verdict"].update(fake_probability=1.5),
        lambda d: d["verdict"].update(label="probably"),
        lambda d: d.update(extra=1),
        lambda d: d["source"].update(sha256="xyz"),
        lambda d: d.update(error={"code": "oops", "message": "x"}),
    ],
)
def test_schema_and_models_reject_broken_documents(mutate):
    doc = document([face(0.5, 0, 0.9), face(1.5, 0, 0.9)])
    mutate(doc)
    with pytest.raises(jsonschema.ValidationError):
        validate(doc)
    with pytest.raises(pydantic.ValidationError):
        VerdictDocument.model_validate(doc)


# --- the models and the schema made from them ----------------------------------------------------------------------


def test_committed_schema_is_the_generated_one():
    assert SCHEMA_FILE.read_text(encoding="utf-8") == schema_text(), "run `python -m scanner.document` and commit"


def test_schema_is_self_contained_and_keeps_the_contract():
    generated = schema()
    assert "$ref" not in json.dumps(generated)  # server/openapi.py publishes it as it is
    jsonschema.Draft202012Validator.check_schema(generated)
    properties = generated["properties"]
    assert set(generated["required"]) == set(properties)
    assert properties["error"]["properties"]["code"]["enum"] == list(ERROR_CODES)  # where the extension reads them
    assert properties["verdict"]["properties"]["label"]["enum"] == ["fake", "real", "uncertain", "no_face"]
    assert properties["verdict"]["type"] == properties["error"]["type"] == ["object", "null"]
    assert properties["status"]["enum"] == ["done", "failed"]


def test_every_scan_error_code_is_in_the_contract():
    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    codes = {cls.code for cls in subclasses(scanner.errors.ScanError)}
    assert codes | {"internal_error"} == set(ERROR_CODES)


def test_a_finished_document_survives_its_schema_and_its_models():
    doc = document([face(0.5, 0, 0.1), face(1.5, 1, 0.95)])
    assert VerdictDocument.model_validate(doc).to_dict() == doc
    assert VerdictDocument.model_validate(json.loads(json.dumps(doc))).to_dict() == doc


def test_status_decides_verdict_error_and_model():
    doc = document([face(0.5, 0, 0.9)])
    for status, changes in (
        ("done", {"verdict": None}),
        ("done", {"model": None}),
        ("done", {"error": {"code": "timeout", "message": "x", "retryable": False}}),
        ("failed", {"error": None, "verdict": None}),
    ):
        broken = {**copy.deepcopy(doc), "status": status, **changes}
        with pytest.raises(jsonschema.ValidationError):
            validate(broken)
        with pytest.raises(pydantic.ValidationError):
            VerdictDocument.model_validate(broken)


def test_unknown_and_upload_sources():
    failed = failed_document(source=VideoSource.unknown("https://e.org/x"), model=None, code="timeout", message="t")
    validate(failed)
    assert failed["source"] == {**dict.fromkeys(SOURCE), "url": "https://e.org/x"}
    assert failed["model"] is None and failed["timings_ms"] == {}

    upload = UploadSource.of(SOURCE, "clip.mp4").to_dict()
    assert upload == {**SOURCE, "url": None, "title": None, "kind": "upload", "file_name": "clip.mp4"}
    assert UploadSource.of(upload, "again.mp4").to_dict() == {**upload, "file_name": "again.mp4"}  # an upload's own
    doc = document([face(0.5, 0, 0.9)])
    validate({**doc, "source": upload})
    for broken in ({**upload, "url": "https://e.org/x"}, {**upload, "file_name": "x" * 256}, {**SOURCE, "kind": "x"}):
        with pytest.raises(jsonschema.ValidationError):
            validate({**doc, "source": broken})
        with pytest.raises(pydantic.ValidationError):
            VerdictDocument.model_validate({**doc, "source": broken})


def test_model_backend_is_left_out_when_unknown():
    doc = failed_document(source=SOURCE, model={"name": "m", "version": 2}, code="timeout", message="t")
    assert doc["model"] == {"name": "m", "version": 2}
    validate(doc)
    with pytest.raises(jsonschema.ValidationError):
        validate({**doc, "model": {"name": "m", "version": 2, "backend": None}})
