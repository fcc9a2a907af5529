"""The verdict document as typed models: the one definition of the contract; its JSON Schema is generated from them.

`VerdictDocument.finished(...)` and `VerdictDocument.failed(...)` make the two kinds of document;
`VideoSource.unknown(url)` is the `source` of a video that was never opened, `UploadSource.of(...)` that of an
uploaded file. `to_dict()` gives the JSON document. `python -m scanner.document` rewrites `verdict.schema.json`
(tests/test_verdict.py fails while the committed file differs from `schema()`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue, SkipJsonSchema
from pydantic_core import core_schema

SCHEMA_FILE = Path(__file__).with_name("verdict.schema.json")
SCHEMA_ID = "https://mesoscan.example/schemas/verdict.schema.json"

Probability = Annotated[float, Field(ge=0, le=1)]
"""A fake probability (0 = real, 1 = fake), or a share of the way between a threshold and 0 or 1."""
Seconds = Annotated[float, Field(ge=0)]
Count = Annotated[int, Field(ge=0)]

Status = Literal["done", "failed"]
Label = Literal["fake", "real", "uncertain", "no_face"]
ErrorCode = Literal[
    "invalid_url",
    "blocked_address",
    "unsupported_url",
    "download_failed",
    "too_large",
    "too_long",
    "not_a_video",
    "corrupt_video",
    "timeout",
    "model_unavailable",
    "internal_error",
]
ERROR_CODES: tuple[str, ...] = get_args(ErrorCode)
STAGES = ("fetch", "decode", "detect", "classify", "total")
"""The stages `timings_ms` names (others may appear)."""


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def to_dict(self) -> dict[str, Any]:
        """The JSON value (plain dicts, lists and numbers)."""
        return self.model_dump(mode="json")


class _SourceFields(_Part):
    url: str | None = Field(description="The URL scanned, or null for a local file.")
    title: str | None = Field(description="As the site gives it: untrusted text.")
    duration_s: Annotated[float, Field(ge=0)] | None
    width: Annotated[int, Field(ge=1)] | None
    height: Annotated[int, Field(ge=1)] | None
    fps: Annotated[float, Field(ge=0)] | None
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = Field(
        description="Of the downloaded file (the exact bytes analysed)."
    )


class VideoSource(_SourceFields):
    """The video scanned from a URL or a local file (nulls for what is not known)."""

    @classmethod
    def unknown(cls, url: str | None = None) -> VideoSource:
        """The source of a video never opened: only the URL asked for, if any."""
        return cls(url=url, title=None, duration_s=None, width=None, height=None, fps=None, sha256=None)


class UploadSource(_SourceFields):
    """A file uploaded to the gateway: no URL, and the file's name as the client gave it."""

    url: None = Field(description="Always null: an upload has no URL.")
    kind: Literal["upload"]
    file_name: str = Field(
        max_length=255, description="The uploaded file's name as the client gave it: untrusted text."
    )

    @classmethod
    def of(cls, source: VideoSource | UploadSource | dict, file_name: str) -> UploadSource:
        """`source` (what the scan saw of the stored file) as an upload's: the original name, no URL or title."""
        data = source.to_dict() if isinstance(source, _Part) else source
        fields = {name: data.get(name) for name in _SourceFields.model_fields}
        return cls(**{**fields, "url": None, "title": None, "kind": "upload", "file_name": file_name})


Source = VideoSource | UploadSource


class Verdict(_Part):
    """The label and the score behind it."""

    label: Label
    fake_probability: Probability | None = Field(
        description="The most suspicious person's mean face score; null when no face."
    )
    confidence: Probability | None = Field(description="Distance from the threshold as a share of the way to 0 or 1.")
    threshold: Probability
    uncertain_band: Annotated[float, Field(ge=0, le=0.5)] = Field(
        description="Scores closer than this to the threshold are labelled uncertain."
    )


class ModelInfo(_Part):
    """The model that scored the faces."""

    name: str
    version: int = Field(ge=1)
    backend: str | SkipJsonSchema[None] = Field(
        None,
        exclude_if=lambda v: v is None,
        description="Where it ran (embedded, tfserving-grpc, ...); absent if unknown.",
    )


class Person(_Part):
    """One tracked person: the mean of their face scores."""

    id: Count
    fake_probability: Probability
    faces: int = Field(ge=1)
    first_t: Seconds
    last_t: Seconds


class TimelinePoint(_Part):
    """One sampled frame: its most suspicious face's score (null when no face was scored)."""

    t: Seconds
    fake_probability: Probability | None
    faces: Count


class TopFace(_Part):
    """One of the most suspicious face crops."""

    t: Seconds
    person: Count
    box: list[float] = Field(min_length=4, max_length=4, description="The crop square in frame pixels: x, y, w, h.")
    fake_probability: Probability
    jpeg_base64: str = Field(json_schema_extra={"contentEncoding": "base64", "contentMediaType": "image/jpeg"})


class Failure(_Part):
    """Why a scan failed."""

    code: ErrorCode
    message: str
    retryable: bool = Field(
        False, description="True for transient failures (network, a busy model server): trying later may work."
    )


Timings = Annotated[
    dict[str, Annotated[float, Field(ge=0)]],
    Field(
        description="Milliseconds each stage took (decode and detect overlap).",
        json_schema_extra={"properties": {stage: {"type": "number", "minimum": 0} for stage in STAGES}},
    ),
]


def _round_timings(timings_ms: dict[str, float] | None) -> dict[str, float]:
    return {k: round(v, 1) for k, v in (timings_ms or {}).items()}


class VerdictDocument(_Part):
    """The result of scanning one video: the contract between the scanner, the gateway, the extension and the batch
    scanner. Probabilities are fake probabilities (0 = real, 1 = fake)."""

    model_config = ConfigDict(
        title="MesoScan verdict document",
        json_schema_extra={
            "description": " ".join(__doc__.split()),
            "allOf": [
                {
                    "if": {"properties": {"status": {"const": "done"}}},
                    "then": {
                        "properties": {
                            "verdict": {"type": "object"},
                            "error": {"type": "null"},
                            "model": {"type": "object"},
                        }
                    },
                },
                {
                    "if": {"properties": {"status": {"const": "failed"}}},
                    "then": {"properties": {"verdict": {"type": "null"}, "error": {"type": "object"}}},
                },
            ],
        },
    )

    source: Source
    status: Status
    verdict: Verdict | None
    model: ModelInfo | None
    frames_sampled: Count
    keyframes_only: bool
    faces_analyzed: Count
    faces_skipped: Count = Field(description="Faces too small to judge.")
    people: list[Person]
    timeline: list[TimelinePoint]
    top_faces: list[TopFace]
    timings_ms: Timings
    error: Failure | None

    @model_validator(mode="after")
    def _status_decides_the_parts(self) -> VerdictDocument:
        # the same rule as the schema's `allOf`
        if self.status == "done" and (self.verdict is None or self.model is None or self.error is not None):
            raise ValueError("a done document has a verdict and a model, and no error")
        if self.status == "failed" and (self.verdict is not None or self.error is None):
            raise ValueError("a failed document has an error and no verdict")
        return self

    @classmethod
    def finished(
        cls,
        *,
        source: Source | dict,
        model: ModelInfo | dict,
        verdict: Verdict | dict,
        frames_sampled: int,
        keyframes_only: bool,
        faces_analyzed: int,
        faces_skipped: int,
        people: list[Person] | list[dict],
        timeline: list[TimelinePoint] | list[dict],
        top_faces: list[TopFace] | list[dict],
        timings_ms: dict[str, float] | None = None,
    ) -> VerdictDocument:
        """A scan that ran to the end (its label may still be `no_face`)."""
        return cls(
            source=source,
            status="done",
            verdict=verdict,
            model=model,
            frames_sampled=frames_sampled,
            keyframes_only=keyframes_only,
            faces_analyzed=faces_analyzed,
            faces_skipped=faces_skipped,
            people=people,
            timeline=timeline,
            top_faces=top_faces,
            timings_ms=_round_timings(timings_ms),
            error=None,
        )

    @classmethod
    def failed(
        cls,
        *,
        source: Source | dict,
        code: ErrorCode,
        message: str,
        retryable: bool = False,
        model: ModelInfo | dict | None = None,
        timings_ms: dict[str, float] | None = None,
    ) -> VerdictDocument:
        """A scan that stopped with `code`: no verdict, nothing analysed."""
        return cls(
            source=source,
            status="failed",
            verdict=None,
            model=model,
            frames_sampled=0,
            keyframes_only=False,
            faces_analyzed=0,
            faces_skipped=0,
            people=[],
            timeline=[],
            top_faces=[],
            timings_ms=_round_timings(timings_ms),
            error=Failure(code=code, message=message, retryable=retryable),
        )


_BRANCHING = {"$ref", "const", "enum", "anyOf", "oneOf", "allOf", "not", "if"}
"""Keywords that constrain a null too: a schema holding one is not merged with `{"type": "null"}`."""


def _compact(node: Any, defs: dict[str, Any]) -> Any:
    """`node` with each model's definition written in place (each is used once) and `anyOf [S, null]` written as S
    with `"type": [..., "null"]` where that means the same: the schema reads like the contract, not like the
    classes (and `properties.error.properties.code.enum` stays where readers look for it)."""
    if isinstance(node, list):
        return [_compact(v, defs) for v in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = dict(defs[node["$ref"].removeprefix("#/$defs/")])
        target.pop("title", None)
        return _compact({**target, **{k: v for k, v in node.items() if k != "$ref"}}, defs)
    out = {k: _compact(v, defs) for k, v in node.items()}
    choices = out.get("anyOf")
    if isinstance(choices, list) and len(choices) == 2 and {"type": "null"} in choices:
        other = choices[0] if choices[1] == {"type": "null"} else choices[1]
        if isinstance(other.get("type"), str) and not _BRANCHING & other.keys():
            rest = {k: v for k, v in out.items() if k != "anyOf"}
            out = {**other, "type": [other["type"], "null"], **rest}
    return out


class _Generator(GenerateJsonSchema):
    """Pydantic's JSON Schema, compacted (`_compact`), without the titles it makes from field names nor the `null`
    default of a field left out when null."""

    def generate(self, schema: core_schema.CoreSchema, mode: Any = "validation") -> JsonSchemaValue:
        generated = super().generate(schema, mode)
        return _compact(generated, generated.pop("$defs", {}))

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        out = super().default_schema(schema)
        if out.get("default", ...) is None:
            del out["default"]
        return out


def schema() -> dict[str, Any]:
    """The verdict document's JSON Schema (draft 2020-12), as generated from the models."""
    generated = VerdictDocument.model_json_schema(schema_generator=_Generator)
    head = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID}
    head |= {key: generated.pop(key) for key in ("title", "description", "type")}
    return head | generated


def schema_text() -> str:
    """`schema()` as `verdict.schema.json` holds it."""
    return json.dumps(schema(), indent=2, ensure_ascii=False) + "\n"


def write_schema(path: Path = SCHEMA_FILE) -> None:
    path.write_text(schema_text(), encoding="utf-8")


if __name__ == "__main__":
    write_schema()
    print(f"wrote {SCHEMA_FILE}")
