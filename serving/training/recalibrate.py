"""Recalibration: a trained model's calibration, threshold, band and crop geometry fitted again (same weights) on
its recorded validation split, registered as its next version (`mesoscan calibrate`)."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path

import numpy as np

from serving.config import ServingSettings
from serving.dataset import decode_crops, labels_of
from serving.errors import InvalidInputError
from serving.training.data import split_crops, validation_crops
from serving.training.ensemble import register_ensemble
from serving.training.registration import TrainResult, default_out_dir, model_metadata, register, registered
from serving.training.verdict import MeasureCrop, crop_geometry, verdict_fields


def recalibrate(
    name: str,
    data_dir: Path,
    out_dir: Path | None,
    settings: ServingSettings,
    *,
    rows: tuple[int, int] | None = None,
    measure_crop: MeasureCrop | None = None,
    progress: bool = False,
    invocation: str | None = None,
) -> TrainResult:
    """Give the trained model `name` (same weights) a calibration, threshold and band fitted on its own recorded
    validation split, and for a single model its training crops' geometry; registered as its next version in
    `out_dir` (None: `<models_dir>/trained/`). `rows` names the labels.csv rows of a split recorded before rows
    were (e.g. (1, 16000))."""
    from serving.registry import get_model, load_raw_model
    from serving.training.pipeline import predict_faces

    out_dir = Path(out_dir) if out_dir else default_out_dir(settings)
    spec = get_model(name, settings)
    meta = model_metadata(name, settings)
    if meta is None or "split" not in meta.get("data", {}):
        raise InvalidInputError(f"{name!r} is not a model trained by `mesoscan train` (no recorded validation split)")
    split = dict(meta["data"]["split"])
    if spec.is_ensemble:
        return register_ensemble(
            name,
            list(spec.members),
            data_dir,
            out_dir,
            settings,
            description=meta.get("description", ""),
            progress=progress,
            invocation=invocation,
            rows=rows,
        )
    val = validation_crops(data_dir, split, rows)
    if rows and not split.get("rows"):
        split["rows"] = list(rows)
    faces = decode_crops(val, settings.models_dir / "cache", progress=progress)
    labels = labels_of(val)
    raw_scores = predict_faces(load_raw_model(spec, settings), faces, np.arange(len(val)))
    verdicts = verdict_fields(labels, raw_scores)
    metrics = {
        **verdicts.pop("metrics"),
        **{k: v for k, v in meta["metrics"]["validation"].items() if k == "best_epoch"},
    }
    train_crops, _ = split_crops(
        data_dir,
        split["val_fraction"],
        split["seed"],
        split.get("limit"),
        tuple(split["rows"]) if split.get("rows") else None,
    )
    new = {
        **meta,
        **verdicts,
        "crop": crop_geometry(measure_crop, [c.path for c in train_crops], split["seed"]),
        "metrics": {**meta["metrics"], "validation": metrics},
        "data": {**meta["data"], "split": split},
        "recalibrated": {
            "command": invocation,
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "from_version": spec.version,
        },
    }
    staging = settings.models_dir / "runs" / f".recalibrate-{name}-{os.getpid()}.weights.h5"
    staging.parent.mkdir(parents=True, exist_ok=True)
    try:
        shutil.copyfile(spec.weights.local_path(settings), staging)  # register() may replace the weights file itself
        return registered(register(out_dir, new, weights_source=staging))
    finally:
        staging.unlink(missing_ok=True)
