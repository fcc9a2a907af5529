"""The training loop: the network and its optimizer, the learning-rate schedule, and one Keras `fit` over the epochs
a run has left, checkpointed after every epoch (serving/checkpoint.py) so an interrupted run resumes exactly."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import keras
import numpy as np

from serving import checkpoint, mesonet
from serving.errors import InvalidInputError
from serving.training.config import TrainConfig
from serving.training.data import TrainingData
from serving.training.pipeline import eval_dataset, training_batches


def learning_rate_schedule(config: TrainConfig, total_steps: int, steps_per_epoch: int):
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


def compiled_model(config: TrainConfig, steps_per_epoch: int) -> keras.Model:
    """The untrained network of `config.arch` (bfloat16 compute with `mixed_precision`), compiled with Adam."""
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
    return model


class EpochTimer(keras.callbacks.Callback):
    """Adds `epoch_seconds` to each epoch's logs."""

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["epoch_seconds"] = round(time.monotonic() - self._started, 1)


class Checkpointer(keras.callbacks.Callback):
    """After each epoch: keep the weights of the best validation ROC AUC so far, write the checkpoint, and stop
    the fit when the patience is spent or `stop_after` epochs ran in this call. A NaN loss stops it unsaved."""

    def __init__(self, path: Path, ckpt: checkpoint.Checkpoint, patience: int, stop_after: int | None):
        super().__init__()
        self.path, self.ckpt, self.patience, self.stop_after = path, ckpt, patience, stop_after
        self.done_here = 0
        self.diverged_at: int | None = None

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: round(float(v), 6) for k, v in (logs or {}).items()}
        if not math.isfinite(logs.get("loss", math.nan)):  # TerminateOnNaN stopped the epoch: keep the last checkpoint
            self.diverged_at = epoch + 1
            self.model.stop_training = True
            return
        state = self.ckpt.state
        value = logs.get("val_auc")
        if value is not None and math.isfinite(value) and value > state.best:
            state.best, state.best_epoch, state.wait = float(value), epoch + 1, 0
            self.ckpt.best_weights = [np.asarray(w) for w in self.model.get_weights()]
        else:
            state.wait += 1
        state.epochs_done = epoch + 1
        state.history.append({"epoch": epoch + 1, **logs})
        checkpoint.save(self.path, self.model, state, self.ckpt.best_weights)
        self.done_here += 1
        if state.wait >= self.patience or (self.stop_after is not None and self.done_here >= self.stop_after):
            self.model.stop_training = True


def fit(
    model: keras.Model,
    data: TrainingData,
    config: TrainConfig,
    steps_per_epoch: int,
    run_dir: Path,
    progress: bool = True,
    stop_after: int | None = None,
    draw_offset: int = 0,
) -> checkpoint.Checkpoint:
    """Train `model` (compiled) from the run folder's checkpoint, if any, to `config.epochs` or early stopping,
    checkpointing every epoch. Returns the final state; `stop_after` ends this call after that many epochs.
    Epoch `e` draws its order and augmentation as epoch `e + draw_offset`: a run that goes on from another's
    weights (`--init-from`) draws what that one's later epochs would have, not its first epochs again."""
    path = run_dir / "checkpoint.npz"
    checkpoint.discard_partial(path)
    model.optimizer.build(model.trainable_variables)
    if path.is_file():
        ckpt = checkpoint.restore(path, model)
        if progress and ckpt.state.epochs_done:
            print(
                f"resuming {config.name} after epoch {ckpt.state.epochs_done} of {config.epochs} ({path})", flush=True
            )
    else:
        ckpt = checkpoint.Checkpoint(checkpoint.LoopState(), None)
    first = ckpt.state.epochs_done
    if first >= config.epochs or ckpt.state.wait >= config.patience or stop_after == 0:
        return ckpt
    batches = training_batches(
        data,
        config.batch_size,
        steps_per_epoch,
        config.augment,
        config.seed,
        config.class_weight,
        range(first + draw_offset, config.epochs + draw_offset),
    )
    checkpointer = Checkpointer(path, ckpt, config.patience, stop_after)
    model.fit(
        batches,
        epochs=config.epochs,
        initial_epoch=first,
        steps_per_epoch=steps_per_epoch,
        validation_data=eval_dataset(data.faces, data.val_index, data.labels[data.val_index], config.batch_size),
        shuffle=False,
        verbose=(1 if sys.stdout.isatty() else 2) if progress else 0,
        callbacks=[EpochTimer(), keras.callbacks.TerminateOnNaN(), checkpointer],
    )
    if checkpointer.diverged_at is not None:
        raise InvalidInputError(f"training diverged at epoch {checkpointer.diverged_at} (loss is NaN)")
    return ckpt
