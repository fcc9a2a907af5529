"""The OpenAPI document: `openapi.yaml` plus the scanner's verdict JSON Schema, made into components."""

from __future__ import annotations

import copy
import functools
from importlib import resources
from typing import Any

import yaml

_PREFIX = "#/components/schemas/"
# The verdict schema's `$defs`, renamed as components.
_DEFS = {"probability": "VerdictProbability", "seconds": "VerdictSeconds"}


def _rewrite_refs(node: Any) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith("#/$defs/"):
                out[key] = _PREFIX + _DEFS[value.removeprefix("#/$defs/")]
            else:
                out[key] = _rewrite_refs(value)
        return out
    if isinstance(node, list):
        return [_rewrite_refs(v) for v in node]
    return node


def verdict_components() -> dict[str, dict]:
    """VerdictDocument, Verdict (the label part, nullable) and the shared definitions, as OpenAPI 3.1 schemas."""
    from scanner.verdict import schema

    document = _rewrite_refs(copy.deepcopy(schema()))
    defs = document.pop("$defs", {})
    for key in ("$schema", "$id"):
        document.pop(key, None)
    verdict = document["properties"]["verdict"]
    document["properties"]["verdict"] = {"$ref": _PREFIX + "Verdict"}
    components = {"VerdictDocument": document, "Verdict": verdict}
    components.update({_DEFS[name]: value for name, value in defs.items()})
    return components


@functools.cache
def _base() -> dict:
    return yaml.safe_load(resources.files("server").joinpath("openapi.yaml").read_text())


def document(max_batch_urls: int | None = None, models: list[str] | None = None) -> dict:
    """The served document; `max_batch_urls` and the registered `models` come from the running configuration."""
    spec = copy.deepcopy(_base())
    schemas = spec["components"]["schemas"]
    schemas.update(verdict_components())
    if max_batch_urls is not None:
        schemas["BatchRequest"]["properties"]["urls"]["maxItems"] = max_batch_urls
    if models:
        for name in ("ScanRequest", "BatchRequest"):
            schemas[name]["properties"]["model"]["enum"] = [*models, None]
    return spec
