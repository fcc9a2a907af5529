"""A training run end to end: crops → fit → calibration and threshold → registered model.

A run keeps its state in `<models_dir>/runs/<name>-<run key>/` (the checkpoint; see serving/training/loop.py), so
the same command resumes an interrupted run; the folder is removed once the model is registered.
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

from serving.config import ServingSettings
from serving.errors import InvalidInputError
from serving.training.config import TrainConfig
from serving.training.data import load_training_data
from serving.training.registration import TrainResult, default_out_dir, register, registered, versions
from serving.training.verdict import THRESHOLD_RULE, MeasureCrop, crop_geometry, verdict_fields


def run_dir(config: TrainConfig, settings: ServingSettings) -> Path:
    """The folder of `config`'s run: the same settings always name the same folder."""
    return settings.models_dir / "runs" / f"{config.name}-{config.run_key()}"


def train(
    config: TrainConfig,
    out_dir: Path | None,
    settings: ServingSettings,
    *,
    progress: bool = True,
    invocation: str | None = None,
    stop_after: int | None = None,
    measure_crop: MeasureCrop | None = None,
) -> TrainResult | None:
    """Train `config.arch` on `config.data_dir` and register it as `config.name` in `out_dir` (None:
    `<models_dir>/trained/`). Returns the written `<name>.json` and its content, or None when `stop_after`
    epochs ran in this call and the run is not finished (the next call resumes it). `measure_crop(paths, seed)`
    measures the training crops' geometry with the scanner's detector (the scanner passes it in: serving does not
    import the scanner)."""
    import keras

    from serving import mesonet
    from serving.training.loop import compiled_model, fit
    from serving.training.pipeline import predict_faces
    from serving.training.warmstart import warm_start

    out_dir = Path(out_dir) if out_dir else default_out_dir(settings)
    started = dt.datetime.now(dt.UTC)
    keras.utils.set_random_seed(config.seed)
    data = load_training_data(
        config.data_dir, config.val_fraction, config.seed, config.limit, settings, progress, config.rows
    )
    steps_per_epoch = config.steps_per_epoch or max(1, data.n_train // config.batch_size)
    if data.n_train < config.batch_size:
        raise InvalidInputError(f"only {data.n_train} training crops: fewer than one batch of {config.batch_size}")

    model = compiled_model(config, steps_per_epoch)
    folder = run_dir(config, settings)
    folder.mkdir(parents=True, exist_ok=True)
    start = warm_start(model, config, data, folder, settings)
    earlier = (start or {}).get("epochs") or 0
    ckpt = fit(model, data, config, steps_per_epoch, folder, progress, stop_after, draw_offset=earlier)
    if ckpt.state.epochs_done < config.epochs and ckpt.state.wait < config.patience:
        return None  # stopped on request: the run folder keeps the checkpoint
    if ckpt.best_weights is None:
        raise InvalidInputError("training produced no usable epoch (validation ROC AUC never finite)")

    final = mesonet.build(config.arch, "p_fake")  # float32, as every backend will run it
    final.set_weights(ckpt.best_weights)
    verdicts = verdict_fields(
        data.labels[data.val_index], predict_faces(final, data.faces, data.val_index, config.batch_size)
    )
    metrics = verdicts.pop("metrics")
    metrics["best_epoch"] = ckpt.state.best_epoch
    history = ckpt.state.history
    meta = {
        "name": config.name,
        "kind": "model",
        "arch": config.arch,
        "output": "p_fake",
        "threshold": metrics["threshold"],
        "threshold_rule": THRESHOLD_RULE,
        **verdicts,
        "crop": crop_geometry(measure_crop, [c.path for c in data.crops[: data.n_train]], config.seed),
        "provenance": (
            f"Trained by MesoScan (`mesoscan train`, seed {config.seed}) on {started:%Y-%m-%d} from "
            f"{config.data_description}: {data.summary['train']['crops']} training crops, validated "
            f"on {data.summary['validation']['crops']} crops of other clusters"
        ),
        "licence": config.licence,
        "description": config.description or f"{config.arch} trained by MesoScan on {config.data_description}",
        "metrics": {"validation": metrics},
        "training": {
            "config": config.to_dict(),
            "seed": config.seed,
            "command": config.command_line(out_dir if out_dir != default_out_dir(settings) else None),
            "invocation": invocation,
            "steps_per_epoch": steps_per_epoch,
            "epochs_run": len(history),
            **({"init_from": start, "epochs_total": earlier + len(history)} if start else {}),
            "started": started.isoformat(timespec="seconds"),
            "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "versions": versions(),
            "history": history,
        },
        "data": {"description": config.data_description, **data.summary, "split": data.split},
    }
    weights = folder / "final.weights.h5"
    final.save_weights(weights)
    path = register(out_dir, meta, weights_source=weights)
    shutil.rmtree(folder, ignore_errors=True)
    return registered(path)
