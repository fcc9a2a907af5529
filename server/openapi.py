"""The OpenAPI document: `openapi.yaml` plus the scanner's verdict JSON Schema, made into components."""

from __future__ import annotations

import copy
import functools
from importlib import resources

import yaml

_PREFIX = "#/components/schemas/"


def verdict_components() -> dict[str, dict]:
    """VerdictDocument and Verdict (its label part, nullable) as OpenAPI 3.1 schemas: the scanner's JSON Schema
    (generated from `scanner.document`, self-contained: no `$defs`), with `verdict` made a component of its own."""
    from scanner.verdict import schema

    document = schema()
    for key in ("$schema", "$id"):
        document.pop(key, None)
    verdict = document["properties"]["verdict"]
    document["properties"]["verdict"] = {"$ref": _PREFIX + "Verdict"}
    return {"VerdictDocument": document, "Verdict": verdict}


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
