"""Ensembles: a registered model that is the mean fake probability of trained members, with its own threshold
chosen on the validation split the members share."""

from __future__ import annotations

import datetime as dt
import shlex
from pathlib import Path

import numpy as np

from serving.config import ServingSettings
from serving.dataset import decode_crops, labels_of
from serving.errors import InvalidInputError
from serving.training.config import valid_name
from serving.training.data import validation_crops
from serving.training.registration import (
    TrainResult,
    default_out_dir,
    model_metadata,
    register,
    registered,
    versions,
)
from serving.training.verdict import THRESHOLD_RULE, verdict_fields


def register_ensemble(
    name: str,
    members: list[str],
    data_dir: Path,
    out_dir: Path | None,
    settings: ServingSettings,
    *,
    description: str = "",
    progress: bool = False,
    invocation: str | None = None,
    rows: tuple[int, int] | None = None,
) -> TrainResult:
    """Register ensemble `name` in `out_dir` (None: `<models_dir>/trained/`): the mean of `members`' fake
    probabilities, with its own threshold chosen at the equal error rate on the validation split the members share
    (re-derived from `data_dir` and checked)."""
    from serving.metrics import score_metrics
    from serving.registry import get_model, load_keras_model
    from serving.training.pipeline import predict_faces

    out_dir = Path(out_dir) if out_dir else default_out_dir(settings)
    if not valid_name(name):
        raise InvalidInputError(f"model name {name!r} must be letters, digits, '_', '-' or '.'")
    if len(members) < 2 or len(set(members)) != len(members):
        raise InvalidInputError("an ensemble needs at least two different member models")
    if name in members:
        raise InvalidInputError(f"ensemble {name!r} cannot be its own member")
    specs, metas = [], []
    for member in members:
        spec = get_model(member, settings)
        meta = model_metadata(member, settings)
        if spec.is_ensemble or meta is None or "split" not in meta.get("data", {}):
            raise InvalidInputError(
                f"ensemble member {member!r} must be a model trained by `mesoscan train` "
                "(its validation split is needed to choose the threshold)"
            )
        specs.append(spec)
        metas.append(meta)
    split = metas[0]["data"]["split"]
    for member, meta in zip(members[1:], metas[1:], strict=True):
        if meta["data"]["split"] != split:
            raise InvalidInputError(
                f"members {members[0]!r} and {member!r} were validated on different splits "
                "(seed, fraction, limit or data differ): no fair threshold can be chosen"
            )
    val = validation_crops(data_dir, split, rows)
    faces = decode_crops(val, settings.models_dir / "cache", progress=progress)
    labels = labels_of(val)
    index = np.arange(len(val))
    member_scores = [predict_faces(load_keras_model(spec, settings), faces, index) for spec in specs]
    verdicts = verdict_fields(labels, np.mean(member_scores, axis=0))
    metrics = verdicts.pop("metrics")
    margins = sorted({spec.crop_margin for spec in specs})
    crop = (
        {"margin": margins[0], "note": "the members' common crop geometry"}
        if len(margins) == 1
        else {
            "margin": specs[0].crop_margin,
            "note": "members differ: the scanner cuts each member's faces with that member's own margin",
            "members": {spec.name: spec.crop_margin for spec in specs},
        }
    )
    member_metrics = {
        spec.name: score_metrics(labels, s, spec.threshold) for spec, s in zip(specs, member_scores, strict=True)
    }
    licences = list(dict.fromkeys(spec.licence for spec in specs))
    meta = {
        "name": name,
        "kind": "ensemble",
        "output": "p_fake",
        "members": [
            {"name": spec.name, "version": spec.version, "arch": spec.arch, "sha256": spec.weights.sha256}
            for spec in specs
        ],
        "threshold": metrics["threshold"],
        "threshold_rule": THRESHOLD_RULE,
        **verdicts,
        "crop": crop,
        "provenance": (
            f"Mean fake probability of {', '.join(f'{s.name} v{s.version}' for s in specs)}, made by "
            f"MesoScan (`mesoscan train --ensemble`) on {dt.datetime.now(dt.UTC):%Y-%m-%d}; see the "
            "members' own provenance"
        ),
        "licence": " ".join(licences),
        "description": description or f"ensemble (mean) of {', '.join(members)}",
        "metrics": {"validation": metrics, "members_validation": member_metrics},
        "training": {
            "command": shlex.join(
                ["mesoscan", "train", "--data", str(data_dir), "--name", name, "--ensemble", ",".join(members)]
                + (["--out", str(out_dir)] if out_dir != default_out_dir(settings) else [])
            ),
            "invocation": invocation,
            "versions": versions(),
        },
        "data": {**metas[0]["data"], "split": split},
    }
    return registered(register(out_dir, meta))
