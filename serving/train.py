"""Training MesoNet on labelled face crops, and registering the result (or an ensemble) as a named model.

`train(config)`: read the crops (never rows whose split is `test`), split off a validation set by cluster, decode
everything once into a uint8 cache, feed a seeded `tf.data` pipeline (augmentation in parallel maps), train with
Keras (Adam; the paper's step schedule or cosine), keep the epoch with the best validation ROC AUC, stop early,
pick the threshold at the validation set's equal error rate, and write `<name>.weights.h5`, `<name>.json` and
`<name>.md` where the registry finds them. The model and the loop are plain Keras 3; TensorFlow is used only
for the input pipeline.

A run keeps its state in `<models_dir>/runs/<name>-<config hash>/` (best weights, a backup of the last epoch,
history.csv) so the same command resumes an interrupted run; the folder is removed once the model is registered.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from serving import checkpoint
from serving.augment import AugmentConfig
from serving.config import ServingSettings, get_settings
from serving.dataset import (
    LabelledCrop,
    decode_crops,
    labels_of,
    read_crops,
    split_by_cluster,
    subsample_clusters,
)
from serving.errors import InvalidInputError
from serving.mesonet import ARCHS, Arch
from serving.metrics import threshold_metrics
from serving.registry import DEFAULT_CROP_MARGIN

AUGMENT_IMPLEMENTATION = 2
"""Part of a run's key: a run is never resumed with batches augmented by another implementation."""
MeasureCrop = Callable[[list[Path], int], dict]
"""(training crop paths, seed) → `{"margin": median crop side / face box side, ...}` (see scanner.geometry)."""

Schedule = Literal["step", "cosine", "constant"]
ClassWeight = Literal["balanced", "none"]
SCHEDULES: tuple[Schedule, ...] = ("step", "cosine", "constant")
EXCLUDED_SPLITS = ("test",)
THRESHOLD_RULE = (
    "equal error rate on the validation set: the score where the false-positive rate (real called "
    "fake) equals the false-negative rate (fake called real)"
)
DFDC_DATA = "DFDC face crops (Deepfake Detection Challenge training set, 224×224 JPEG face crops)"
DFDC_LICENCE = (
    "Non-commercial research use only: trained on Deepfake Detection Challenge (DFDC) data, whose terms "
    "allow non-commercial research use only; these weights carry that restriction. "
    "MesoScan's code is Apache-2.0."
)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run (recorded in the model's JSON; `command_line` reproduces it)."""

    data_dir: Path
    arch: Arch
    name: str
    epochs: int = 20
    batch_size: int = 75
    learning_rate: float = 1e-3
    schedule: Schedule = "step"
    """`step`: the paper's (÷10 every `step_every` iterations down to `min_learning_rate`); `cosine`: cosine decay
    over the whole run to `min_learning_rate`, after `warmup_epochs` of linear warm-up; `constant`."""
    step_every: int = 1000
    min_learning_rate: float = 1e-6
    warmup_epochs: int = 0
    val_fraction: float = 0.1
    seed: int = 0
    patience: int = 10
    """Stop after this many epochs without a better validation ROC AUC."""
    class_weight: ClassWeight = "balanced"
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    mixed_precision: bool = False
    """Compute in bfloat16 (variables stay float32; the registered model is float32)."""
    steps_per_epoch: int | None = None
    """Default: one pass over the training crops."""
    limit: int | None = None
    """Use at most this many crops (whole clusters, chosen by the seed): for quick trials."""
    rows: tuple[int, int] | None = None
    """Use only these data rows of labels.csv (1-based, inclusive), e.g. (1, 16000): the crops as they once were."""
    data_description: str = DFDC_DATA
    licence: str = DFDC_LICENCE
    description: str = ""

    def __post_init__(self):
        problems = []
        if self.arch not in ARCHS:
            problems.append(f"unknown architecture {self.arch!r} (choose {', '.join(ARCHS)})")
        if self.schedule not in SCHEDULES:
            problems.append(f"unknown schedule {self.schedule!r} (choose {', '.join(SCHEDULES)})")
        if not _valid_name(self.name):
            problems.append(f"model name {self.name!r} must be letters, digits, '_', '-' or '.'")
        for key in ("epochs", "batch_size", "step_every", "patience"):
            if getattr(self, key) < 1:
                problems.append(f"{key} must be at least 1")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            problems.append("steps_per_epoch must be at least 1")
        if not 0 < self.min_learning_rate <= self.learning_rate:
            problems.append("need 0 < min_learning_rate <= learning_rate")
        if self.rows is not None and not 1 <= self.rows[0] <= self.rows[1]:
            problems.append("rows must be FIRST-LAST with 1 <= FIRST <= LAST")
        if not 0 <= self.warmup_epochs < self.epochs:
            problems.append("warmup_epochs must be below epochs")
        if problems:
            raise InvalidInputError("; ".join(problems))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["data_dir"] = str(self.data_dir)
        return d

    def run_key(self) -> str:
        """Identifies the run's folder: the settings that differ from their defaults, the card's wording aside (so
        a setting added later, at its default, leaves the folders of runs under way as they are)."""
        defaults = TrainConfig(data_dir=self.data_dir, arch=self.arch, name=self.name).to_dict()
        d = {
            k: v
            for k, v in self.to_dict().items()
            if k not in {"data_description", "licence", "description"} and v != defaults[k]
        }
        default_augment = AugmentConfig().to_dict()
        if "augment" in d:
            d["augment"] = {k: v for k, v in d["augment"].items() if v != default_augment[k]}
        d.update(
            arch=self.arch,
            name=self.name,
            data_dir=str(Path(self.data_dir).resolve()),
            augment_implementation=AUGMENT_IMPLEMENTATION,
        )
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]

    def command_line(self, out_dir: Path | None = None) -> str:
        """The `mesoscan train` command with every setting spelled out."""
        a = self.augment
        args = [
            "mesoscan",
            "train",
            "--data",
            str(self.data_dir),
            "--arch",
            self.arch,
            "--name",
            self.name,
            "--epochs",
            self.epochs,
            "--batch-size",
            self.batch_size,
            "--lr",
            self.learning_rate,
            "--schedule",
            self.schedule,
            "--step-every",
            self.step_every,
            "--min-lr",
            self.min_learning_rate,
            "--warmup-epochs",
            self.warmup_epochs,
            "--val-fraction",
            self.val_fraction,
            "--seed",
            self.seed,
            "--patience",
            self.patience,
            "--class-weight",
            self.class_weight,
            "--flip" if a.flip else "--no-flip",
            "--rotation",
            a.rotation,
            "--zoom",
            a.zoom,
            "--brightness",
            a.brightness,
            "--hue",
            a.hue,
            "--blur-prob",
            a.blur_prob,
            "--blur-sigma",
            f"{a.blur_sigma[0]}-{a.blur_sigma[1]}",
            "--jpeg-prob",
            a.jpeg_prob,
            "--jpeg-quality",
            f"{a.jpeg_quality[0]}-{a.jpeg_quality[1]}",
            "--downscale-prob",
            a.downscale_prob,
            "--downscale-factor",
            f"{a.downscale_factor[0]}-{a.downscale_factor[1]}",
        ]
        if self.mixed_precision:
            args.append("--mixed-precision")
        if self.steps_per_epoch:
            args += ["--steps-per-epoch", self.steps_per_epoch]
        if self.limit:
            args += ["--limit", self.limit]
        if self.rows:
            args += ["--rows", f"{self.rows[0]}-{self.rows[1]}"]
        for option, key in (
            ("--description", "description"),
            ("--data-description", "data_description"),
            ("--licence", "licence"),
        ):
            if getattr(self, key) != TrainConfig.__dataclass_fields__[key].default:
                args += [option, getattr(self, key)]
        if out_dir is not None:
            args += ["--out", str(out_dir)]
        return shlex.join(str(x) for x in args)


def _valid_name(name: str) -> bool:
    return bool(name) and name[0] not in ".-" and all(ch.isalnum() or ch in "_-." for ch in name)


# --- data -------------------------------------------------------------------------------------------------


@dataclass
class TrainingData:
    crops: list[LabelledCrop]
    """Training crops first, then validation crops; `faces` rows follow the same order."""
    faces: np.ndarray
    labels: np.ndarray
    n_train: int
    split: dict
    summary: dict

    @property
    def train_index(self) -> np.ndarray:
        return np.arange(self.n_train)

    @property
    def val_index(self) -> np.ndarray:
        return np.arange(self.n_train, len(self.crops))


def split_crops(
    data_dir: Path, val_fraction: float, seed: int, limit: int | None = None, rows: tuple[int, int] | None = None
) -> tuple[list[LabelledCrop], list[LabelledCrop]]:
    """(train, validation) crops of `data_dir`, test rows left out, split by cluster."""
    crops = read_crops(data_dir, exclude=EXCLUDED_SPLITS)
    if rows:
        crops = [c for c in crops if c.row is not None and rows[0] <= c.row <= rows[1]]
        if not crops:
            raise InvalidInputError(f"{data_dir}: no training crops in rows {rows[0]}-{rows[1]}")
    if limit:
        crops = subsample_clusters(crops, limit, seed)
    return split_by_cluster(crops, val_fraction, seed)


def _clusters_digest(crops: list[LabelledCrop]) -> str:
    return hashlib.sha256("\n".join(sorted({c.cluster for c in crops})).encode()).hexdigest()


def _side(crops: list[LabelledCrop]) -> dict:
    labels = labels_of(crops)
    return {
        "crops": len(crops),
        "fake": int(labels.sum()),
        "real": int(len(labels) - labels.sum()),
        "clusters": len({c.cluster for c in crops}),
    }


def load_training_data(
    data_dir: Path,
    val_fraction: float,
    seed: int,
    limit: int | None,
    settings: ServingSettings,
    progress: bool = False,
    rows: tuple[int, int] | None = None,
) -> TrainingData:
    from serving.dataset import file_list_key

    train, val = split_crops(data_dir, val_fraction, seed, limit, rows)
    crops = train + val
    labels_csv = Path(data_dir) / "labels.csv"
    split = {
        "by": "cluster",
        "seed": seed,
        "val_fraction": val_fraction,
        "limit": limit,
        "excluded_splits": list(EXCLUDED_SPLITS),
        "val_clusters_sha256": _clusters_digest(val),
    }
    if rows:
        split["rows"] = list(rows)
    used = [c.row for c in crops if c.row is not None]
    summary = {
        "data_dir": str(Path(data_dir).resolve()),
        "labels_csv_sha256": _sha256(labels_csv) if labels_csv.is_file() else None,
        "files_sha256": file_list_key(crops),
        "train": _side(train),
        "validation": _side(val),
        "rows": _row_ranges(used) if used else None,
    }
    faces = decode_crops(crops, settings.models_dir / "cache", progress=progress)
    return TrainingData(crops, faces, labels_of(crops), len(train), split, summary)


def _row_ranges(rows: list[int]) -> str:
    """`1-16000, 16101-30250`: the labels.csv data rows a model was trained and validated on."""
    rows = sorted(rows)
    spans, start, prev = [], rows[0], rows[0]
    for r in rows[1:]:
        if r != prev + 1:
            spans.append((start, prev))
            start = r
        prev = r
    spans.append((start, prev))
    return ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in spans)


def validation_crops(data_dir: Path, split: dict, rows: tuple[int, int] | None = None) -> list[LabelledCrop]:
    """The validation crops a model recorded in its JSON (`split`), re-derived from `data_dir` and checked.
    `rows` stands in for a split recorded before rows were (crops of the first rows only)."""
    rows = tuple(split["rows"]) if split.get("rows") else rows
    _, val = split_crops(data_dir, split["val_fraction"], split["seed"], split.get("limit"), rows)
    if _clusters_digest(val) != split["val_clusters_sha256"]:
        raise InvalidInputError(
            f"{data_dir}: these crops do not give the validation split the model recorded "
            "(different data, or labels.csv changed)"
        )
    return val


def _sha256(path: Path) -> str:
    from serving.files import sha256_of

    return sha256_of(path)


def epoch_order(n_train: int, steps: int, batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """The training crops of epoch `epoch`, in order: whole shuffles of all of them drawn from (seed, epoch)."""
    rng = np.random.default_rng([seed, epoch])
    need = steps * batch_size
    return np.concatenate([rng.permutation(n_train) for _ in range(-(-need // n_train))])[:need]


def epoch_dataset(
    data: TrainingData,
    batch_size: int,
    steps: int,
    augment_config: AugmentConfig,
    seed: int,
    epoch: int,
    class_weight: ClassWeight,
):
    """Epoch `epoch`'s `steps` batches of (uint8 images, labels, sample weights): order and augmentation are drawn
    from (seed, epoch) alone, so a resumed run sees exactly the batches it would have seen."""
    import tensorflow as tf

    from serving.augment import augment, batch_rng

    labels = data.labels[: data.n_train]
    counts = np.bincount(labels, minlength=2)
    if min(counts) == 0:
        raise InvalidInputError(
            f"the training split needs both REAL and FAKE crops, got {counts[0]} real, {counts[1]} fake"
        )
    per_class = len(labels) / (2 * counts) if class_weight == "balanced" else np.ones(2)
    label_table = tf.constant(data.labels.astype(np.float32))
    weight_table = tf.constant(per_class[data.labels].astype(np.float32))
    faces = data.faces

    def load_numpy(batch: np.ndarray, index: np.ndarray) -> np.ndarray:
        images = faces[np.sort(index)][np.argsort(np.argsort(index))]  # memory map read in file order
        return augment(images, augment_config, batch_rng(seed, epoch, int(batch))) if augment_config.enabled else images

    @tf.autograph.experimental.do_not_convert  # plain TF ops and numpy: nothing for AutoGraph to rewrite
    def load(batch, index):
        images = tf.numpy_function(load_numpy, [batch, index], tf.uint8, stateful=False)
        images.set_shape([None, *faces.shape[1:]])
        return images, tf.gather(label_table, index), tf.gather(weight_table, index)

    order = epoch_order(data.n_train, steps, batch_size, seed, epoch)
    ds = tf.data.Dataset.from_tensor_slices(order).batch(batch_size, drop_remainder=True).enumerate()
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)  # deterministic order; each batch's draws its own
    return ds.prefetch(tf.data.AUTOTUNE)


def eval_dataset(faces: np.ndarray, index: np.ndarray, labels: np.ndarray | None, batch_size: int):
    """(images[, labels]) batches of `faces[index]`, in order; `labels` are those of `index`, in its order."""
    import tensorflow as tf

    if labels is not None and len(labels) != len(index):
        raise ValueError(f"{len(labels)} labels for {len(index)} crops")

    @tf.autograph.experimental.do_not_convert
    def load(i):
        images = tf.numpy_function(lambda j: faces[j], [i], tf.uint8, stateful=False)
        images.set_shape([None, *faces.shape[1:]])
        return images

    ds = tf.data.Dataset.from_tensor_slices(index).batch(batch_size).map(load, num_parallel_calls=tf.data.AUTOTUNE)
    if labels is not None:
        ds = tf.data.Dataset.zip(ds, tf.data.Dataset.from_tensor_slices(labels.astype(np.float32)).batch(batch_size))
    return ds.prefetch(tf.data.AUTOTUNE)


# --- the run ----------------------------------------------------------------------------------------------


def learning_rate_schedule(config: TrainConfig, total_steps: int, steps_per_epoch: int):
    import keras

    lr, floor = config.learning_rate, config.min_learning_rate
    if config.schedule == "constant":
        return lr
    if config.schedule == "step":
        drops = max(0, math.ceil(math.log10(lr / floor) - 1e-9))
        values = [max(lr * 0.1**k, floor) for k in range(drops + 1)]
        # PiecewiseConstantDecay switches after a boundary: iterations 0..step_every-1 run at `lr`
        boundaries = [config.step_every * k - 1 for k in range(1, len(values))]
        return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values) if boundaries else lr
    warmup = config.warmup_epochs * steps_per_epoch
    if warmup:
        return keras.optimizers.schedules.CosineDecay(
            floor, max(1, total_steps - warmup), alpha=floor / lr, warmup_target=lr, warmup_steps=warmup
        )
    return keras.optimizers.schedules.CosineDecay(lr, total_steps, alpha=floor / lr)


def _epoch_timer():
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self._started = time.monotonic()

        def on_epoch_end(self, epoch, logs=None):
            if logs is not None:
                logs["epoch_seconds"] = round(time.monotonic() - self._started, 1)

    return EpochTimer()


def fit(
    model,
    data: TrainingData,
    config: TrainConfig,
    steps_per_epoch: int,
    run_dir: Path,
    progress: bool = True,
    stop_after: int | None = None,
) -> checkpoint.Checkpoint:
    """Train `model` (compiled) epoch by epoch from the run folder's checkpoint, if any, and checkpoint every
    epoch. Returns the final state; `stop_after` ends the process' share after that many epochs (tests)."""
    import keras

    path = run_dir / "checkpoint.npz"
    model.optimizer.build(model.trainable_variables)
    if path.is_file():
        ckpt = checkpoint.restore(path, model)
        if progress and ckpt.state.epochs_done:
            print(
                f"resuming {config.name} after epoch {ckpt.state.epochs_done} of {config.epochs} ({path})", flush=True
            )
    else:
        ckpt = checkpoint.Checkpoint(checkpoint.LoopState(), None)
    state = ckpt.state
    validation = eval_dataset(data.faces, data.val_index, data.labels[data.val_index], config.batch_size)
    verbose = (1 if sys.stdout.isatty() else 2) if progress else 0
    done_here = 0
    while state.epochs_done < config.epochs and state.wait < config.patience:
        if stop_after is not None and done_here >= stop_after:
            break
        epoch = state.epochs_done
        batches = epoch_dataset(
            data, config.batch_size, steps_per_epoch, config.augment, config.seed, epoch, config.class_weight
        )
        history = model.fit(
            batches,
            epochs=epoch + 1,
            initial_epoch=epoch,
            steps_per_epoch=steps_per_epoch,
            validation_data=validation,
            shuffle=False,
            verbose=verbose,
            callbacks=[_epoch_timer(), keras.callbacks.TerminateOnNaN()],
        )
        if model.stop_training:  # TerminateOnNaN: keep the last good checkpoint
            raise InvalidInputError(f"training diverged at epoch {epoch + 1} (loss is NaN)")
        logs = {k: round(float(v[-1]), 6) for k, v in history.history.items()}
        value = logs.get("val_auc")
        if value is not None and math.isfinite(value) and value > state.best:
            state.best, state.best_epoch, state.wait = float(value), epoch + 1, 0
            ckpt.best_weights = [np.asarray(w) for w in model.get_weights()]
        else:
            state.wait += 1
        state.epochs_done = epoch + 1
        state.history.append({"epoch": epoch + 1, **logs})
        checkpoint.save(path, model, state, ckpt.best_weights)
        done_here += 1
    return ckpt


@dataclass
class TrainResult:
    metadata_path: Path
    metadata: dict


def train(
    config: TrainConfig,
    out_dir: Path | None = None,
    settings: ServingSettings | None = None,
    progress: bool = True,
    invocation: str | None = None,
    stop_after: int | None = None,
    measure_crop: MeasureCrop | None = None,
) -> TrainResult | None:
    """Train `config.arch` on `config.data_dir` and register it as `config.name` in `out_dir`
    (default `<models_dir>/trained/`). Returns the written `<name>.json` and its content, or None when
    `stop_after` epochs ran in this call and the run is not finished (the next call resumes it).
    `measure_crop(paths, seed)` measures the training crops' geometry with the scanner's detector (the scanner
    passes it in: serving does not import the scanner)."""
    import keras

    from serving import mesonet

    settings = settings or get_settings()
    out_dir = Path(out_dir) if out_dir else settings.models_dir / "trained"
    started = dt.datetime.now(dt.UTC)
    keras.utils.set_random_seed(config.seed)
    data = load_training_data(
        config.data_dir, config.val_fraction, config.seed, config.limit, settings, progress, config.rows
    )
    steps_per_epoch = config.steps_per_epoch or max(1, data.n_train // config.batch_size)
    if data.n_train < config.batch_size:
        raise InvalidInputError(f"only {data.n_train} training crops: fewer than one batch of {config.batch_size}")

    previous = keras.config.dtype_policy()
    if config.mixed_precision:
        keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = mesonet.build(config.arch, "p_fake")
    finally:
        keras.config.set_dtype_policy(previous)
    schedule = learning_rate_schedule(config, config.epochs * steps_per_epoch, steps_per_epoch)
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss="binary_crossentropy",
        metrics=[keras.metrics.AUC(num_thresholds=1000, name="auc")],
    )

    run_dir = settings.models_dir / "runs" / f"{config.name}-{config.run_key()}"
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = fit(model, data, config, steps_per_epoch, run_dir, progress, stop_after)
    if ckpt.state.epochs_done < config.epochs and ckpt.state.wait < config.patience:
        return None  # stopped on request: the run folder keeps the checkpoint
    if ckpt.best_weights is None:
        raise InvalidInputError("training produced no usable epoch (validation ROC AUC never finite)")

    final = mesonet.build(config.arch, "p_fake")  # float32, as every backend will run it
    final.set_weights(ckpt.best_weights)
    raw_scores = predict_faces(final, data.faces, data.val_index, config.batch_size)
    verdicts = verdict_fields(data.labels[data.val_index], raw_scores)
    metrics = verdicts.pop("metrics")
    metrics["best_epoch"] = ckpt.state.best_epoch
    history = ckpt.state.history
    crop = _crop_geometry(measure_crop, [c.path for c in data.crops[: data.n_train]], config.seed)
    meta = {
        "name": config.name,
        "kind": "model",
        "arch": config.arch,
        "output": "p_fake",
        "threshold": metrics["threshold"],
        "threshold_rule": THRESHOLD_RULE,
        **verdicts,
        "crop": crop,
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
            "command": config.command_line(out_dir if out_dir != settings.models_dir / "trained" else None),
            "invocation": invocation,
            "steps_per_epoch": steps_per_epoch,
            "epochs_run": len(history),
            "started": started.isoformat(timespec="seconds"),
            "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "versions": _versions(),
            "history": history,
        },
        "data": {"description": config.data_description, **data.summary, "split": data.split},
    }
    path = register(out_dir, meta, weights_source=_save_weights(final, run_dir))
    shutil.rmtree(run_dir, ignore_errors=True)
    return TrainResult(path, json.loads(path.read_text()))


def _save_weights(model, run_dir: Path) -> Path:
    path = run_dir / "final.weights.h5"
    model.save_weights(path)
    return path


def verdict_fields(labels: np.ndarray, raw_scores: np.ndarray) -> dict:
    """Calibration fitted on the validation scores, then the threshold (equal error rate) and the `uncertain` band
    on the calibrated scale: the JSON fields `calibration`, `threshold`, `band`, plus `metrics`."""
    from serving.calibration import calibrate, choose_band, fit_platt

    calibration = fit_platt(labels, raw_scores)
    scores = calibrate(raw_scores, calibration)
    metrics = threshold_metrics(labels, scores)
    band = choose_band(labels, scores, metrics["threshold"])
    return {"calibration": calibration, "threshold": metrics["threshold"], "band": band, "metrics": metrics}


def _crop_geometry(measure_crop: MeasureCrop | None, paths: list[Path], seed: int) -> dict:
    if measure_crop is None:
        return {
            "margin": DEFAULT_CROP_MARGIN,
            "note": "not measured (trained without the scanner's detector): the scanner's former default",
        }
    return measure_crop(paths, seed)


def predict_faces(model, faces: np.ndarray, index: np.ndarray, batch_size: int = 64) -> np.ndarray:
    return np.asarray(model.predict(eval_dataset(faces, index, None, batch_size), verbose=0), np.float32).reshape(-1)


def _versions() -> dict:
    import keras
    import tensorflow as tf

    return {
        "keras": keras.__version__,
        "tensorflow": tf.__version__,
        "numpy": np.__version__,
        "backend": keras.backend.backend(),
    }


# --- registration -----------------------------------------------------------------------------------------


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
    ordered = {
        k: meta[k]
        for k in (
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
        if k in meta
    }
    meta = {**ordered, **meta}
    atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")
    atomic_write_text(meta_path.with_suffix(".md"), render_card(meta))
    return meta_path


def model_metadata(name: str, settings: ServingSettings | None = None) -> dict | None:
    """The JSON a trained model or ensemble was registered with (None for the authors' models)."""
    from serving.registry import get_model

    spec = get_model(name, settings)
    if spec.weights.packaged_path is None:
        return None
    path = spec.weights.packaged_path.parent / f"{spec.name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def register_ensemble(
    name: str,
    members: list[str],
    data_dir: Path,
    out_dir: Path | None = None,
    settings: ServingSettings | None = None,
    description: str = "",
    progress: bool = False,
    invocation: str | None = None,
    rows: tuple[int, int] | None = None,
) -> TrainResult:
    """Register ensemble `name`: the mean of `members`' fake probabilities, with its own threshold chosen at the
    equal error rate on the validation split the members share (re-derived from `data_dir` and checked)."""
    from serving.registry import get_model, load_keras_model

    settings = settings or get_settings()
    out_dir = Path(out_dir) if out_dir else settings.models_dir / "trained"
    if not _valid_name(name):
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
    from serving.metrics import score_metrics

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
                + (["--out", str(out_dir)] if out_dir != settings.models_dir / "trained" else [])
            ),
            "invocation": invocation,
            "versions": _versions(),
        },
        "data": {**metas[0]["data"], "split": split},
    }
    path = register(out_dir, meta)
    return TrainResult(path, json.loads(path.read_text()))


def recalibrate(
    name: str,
    data_dir: Path,
    out_dir: Path | None = None,
    settings: ServingSettings | None = None,
    rows: tuple[int, int] | None = None,
    measure_crop: MeasureCrop | None = None,
    progress: bool = False,
    invocation: str | None = None,
) -> TrainResult:
    """Give the trained model `name` (same weights) a calibration, threshold and band fitted on its own recorded
    validation split, and for a single model its training crops' geometry; registered as its next version.
    `rows` names the labels.csv rows of a split recorded before rows were (e.g. (1, 16000))."""
    from serving.registry import get_model, load_raw_model

    settings = settings or get_settings()
    out_dir = Path(out_dir) if out_dir else settings.models_dir / "trained"
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
            meta.get("description", ""),
            progress,
            invocation,
            rows,
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
    crop = _crop_geometry(measure_crop, [c.path for c in train_crops], split["seed"])
    weights = spec.weights.local_path(settings)
    new = {
        **meta,
        **verdicts,
        "crop": crop,
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
        shutil.copyfile(weights, staging)  # register() may replace `weights` itself
        path = register(out_dir, new, weights_source=staging)
    finally:
        staging.unlink(missing_ok=True)
    return TrainResult(path, json.loads(path.read_text()))
