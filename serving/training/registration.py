"""Registering a model or ensemble: `<name>.weights.h5`, `<name>.json` and `<name>.md` where the registry finds them,
each written whole or not at all; and reading back what a registered model recorded."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

from serving.config import ServingSettings

FIRST_KEYS = (
    "name",
    "kind",
    "arch",
    "output",
    "version",
    "threshold",
    "threshold_rule",
    "weights",
    "sha256",
    "members",
)
"""The JSON's first keys, in this order (the rest follow as given)."""


@dataclass
class TrainResult:
    metadata_path: Path
    metadata: dict


def register(out_dir: Path, meta: dict, weights_source: Path | None = None) -> Path:
    """Write `<name>.weights.h5` (copied from `weights_source`), `<name>.json` and `<name>.md` into `out_dir`.

    The version is one more than that of a model of the same name already there (else 1).
    """
    from serving.files import atomic_copy, atomic_write_text, sha256_of
    from serving.modelcard import render_card

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = meta["name"]
    meta_path = out_dir / f"{name}.json"
    version = 1
    if meta_path.is_file():
        try:
            version = int(json.loads(meta_path.read_text()).get("version", 0)) + 1
        except (ValueError, TypeError, json.JSONDecodeError):
            version = 2
    meta = {**meta, "version": version, "registered": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    if weights_source is not None:
        weights = out_dir / f"{name}.weights.h5"
        atomic_copy(weights_source, weights)
        meta = {**meta, "weights": weights.name, "sha256": sha256_of(weights)}
    meta = {**{k: meta[k] for k in FIRST_KEYS if k in meta}, **meta}
    atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")
    atomic_write_text(meta_path.with_suffix(".md"), render_card(meta))
    return meta_path


def registered(meta_path: Path) -> TrainResult:
    return TrainResult(meta_path, json.loads(meta_path.read_text()))


def model_metadata(name: str, settings: ServingSettings) -> dict | None:
    """The JSON a trained model or ensemble was registered with (None for the authors' models)."""
    from serving.registry import get_model

    spec = get_model(name, settings)
    if spec.weights.packaged_path is None:
        return None
    path = spec.weights.packaged_path.parent / f"{spec.name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def default_out_dir(settings: ServingSettings) -> Path:
    """Where models are registered unless told otherwise (`--out`)."""
    return settings.models_dir / "trained"


def versions() -> dict:
    """The software a model was made with (the JSON's `training.versions`)."""
    import keras
    import numpy as np
    import tensorflow as tf

    return {
        "keras": keras.__version__,
        "tensorflow": tf.__version__,
        "numpy": np.__version__,
        "backend": keras.backend.backend(),
    }
