"""A training run stopped after any epoch and resumed trains exactly as if it had never stopped."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time

import h5py
import keras
import numpy as np
import pytest

from serving import checkpoint
from serving.augment import AugmentConfig
from serving.config import ServingSettings
from serving.train import TrainConfig, TrainingData, epoch_order, train, training_batches
from tests.conftest import CROPS_DIR, require_shared

TINY = {
    "arch": "meso4",
    "epochs": 3,
    "batch_size": 8,
    "limit": 48,
    "val_fraction": 0.25,
    "seed": 5,
    "augment": AugmentConfig(blur_prob=0.5, jpeg_prob=0.5, downscale_prob=0.5),
}


def _weights(path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def _run(tmp_path, tag: str, stops: list[int | None]):
    settings = ServingSettings(models_dir=tmp_path / tag)
    config = TrainConfig(data_dir=require_shared(CROPS_DIR), name="resumable", **TINY)
    run_dir = settings.models_dir / "runs" / f"resumable-{config.run_key()}"
    result, states = None, []
    for stop in stops:
        result = train(config, None, settings, progress=False, stop_after=stop)
        keras.backend.clear_session()
        if result is None:
            states.append(json.loads(str(np.load(run_dir / "checkpoint.npz")["meta"]))["state"]["epochs_done"])
    return result, states, settings, run_dir


def test_stopping_and_resuming_twice_gives_the_uninterrupted_result(tmp_path):
    straight, _, s1, _ = _run(tmp_path, "straight", [None])
    resumed, states, s2, run_dir = _run(tmp_path, "resumed", [1, 1, None])
    assert states == [1, 2], "each stop leaves the checkpoint of the epochs done"
    assert not run_dir.exists(), "the run folder goes once the model is registered"
    a, b = (
        _weights(s1.models_dir / "trained" / "resumable.weights.h5"),
        _weights(s2.models_dir / "trained" / "resumable.weights.h5"),
    )
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    h1, h2 = (r.metadata["training"]["history"] for r in (straight, resumed))
    assert [h["loss"] for h in h1] == [h["loss"] for h in h2] and len(h1) == 3
    assert straight.metadata["metrics"]["validation"] == resumed.metadata["metrics"]["validation"]


def test_each_epoch_draws_its_order_from_seed_and_epoch_alone():
    first = epoch_order(100, 12, 10, seed=3, epoch=4)
    assert np.array_equal(first, epoch_order(100, 12, 10, seed=3, epoch=4))
    assert not np.array_equal(first, epoch_order(100, 12, 10, seed=3, epoch=5))
    assert len(first) == 120 and set(first[:100]) == set(range(100)), "whole shuffles, then the next one"


def test_a_resumed_run_is_fed_the_batches_the_straight_run_had_left():
    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 8)
    data = TrainingData([None] * 16, rng.integers(0, 255, (16, 32, 32, 3), np.uint8), labels, 12, {}, {})
    augment = AugmentConfig(blur_prob=0.5, jpeg_prob=0.5, downscale_prob=0.5)

    def batches(epochs: range) -> list:
        return list(training_batches(data, 4, 3, augment, 9, "balanced", epochs).as_numpy_iterator())

    straight, resumed = batches(range(0, 3)), batches(range(1, 3))
    assert len(straight) == 9 and len(resumed) == 6
    for a, b in zip(straight[3:], resumed, strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    assert not np.array_equal(straight[0][0], straight[3][0]), "each epoch its own order and augmentation"
    assert straight[0][2].tolist() == [1.0] * 4 and len(batches(range(3, 3))) == 0


class _Warnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_progress_counts_the_epochs_of_the_whole_run_and_nothing_warns(tmp_path, capsys):
    """One fit over the epochs left: Keras says `Epoch 2/3` (not `Epoch 2/2`, as one fit per epoch did), a
    resumed run goes on counting, and TensorFlow traces nothing often enough to warn about retracing."""
    warnings = _Warnings()
    logging.getLogger("tensorflow").addHandler(warnings)
    try:
        settings = ServingSettings(models_dir=tmp_path / "models")
        config = TrainConfig(data_dir=require_shared(CROPS_DIR), name="counted", **TINY)
        assert train(config, None, settings, progress=True, stop_after=1) is None
        keras.backend.clear_session()
        first = capsys.readouterr().out
        assert train(config, None, settings, progress=True) is not None
        keras.backend.clear_session()
        then = capsys.readouterr().out
    finally:
        logging.getLogger("tensorflow").removeHandler(warnings)
    assert re.findall(r"^Epoch \d+/\d+", first, re.M) == ["Epoch 1/3"]
    assert then.startswith("resuming counted after epoch 1 of 3")
    assert re.findall(r"^Epoch \d+/\d+", then, re.M) == ["Epoch 2/3", "Epoch 3/3"]
    assert [m for m in warnings.messages if "retracing" in m] == []


def test_patience_ends_the_run_at_the_first_epoch_without_progress(tmp_path):
    settings = ServingSettings(models_dir=tmp_path / "models")
    config = TrainConfig(data_dir=require_shared(CROPS_DIR), name="patient", **{**TINY, "epochs": 5, "patience": 1})
    result = train(config, None, settings, progress=False)
    aucs = [h["val_auc"] for h in result.metadata["training"]["history"]]
    best = [max(aucs[: i + 1]) for i in range(len(aucs))]
    stalled = [i for i in range(1, len(aucs)) if aucs[i] <= best[i - 1]]
    assert len(aucs) == (stalled[0] + 1 if stalled else 5), aucs
    assert result.metadata["metrics"]["validation"]["best_epoch"] == aucs.index(max(aucs)) + 1


def test_a_killed_run_resumes_from_its_last_checkpoint(tmp_path):
    """`kill -9` in the middle of training: the checkpoint on disk is whole, and the same command goes on from it."""
    env = {
        **os.environ,
        "MESOSCAN_MODELS_DIR": str(tmp_path / "models"),
        "TF_NUM_INTRAOP_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    command = [
        sys.executable,
        "-m",
        "serving",
        "train",
        "--data",
        str(require_shared(CROPS_DIR)),
        "--arch",
        "meso4",
        "--name",
        "killed",
        "--epochs",
        "30",
        "--batch-size",
        "8",
        "--limit",
        "48",
        "--val-fraction",
        "0.25",
        "--seed",
        "2",
    ]
    runs = tmp_path / "models" / "runs"
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not list(runs.glob("*/checkpoint.npz")):
            assert proc.poll() is None, "training ended early"
            time.sleep(0.2)
        time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    (path,) = runs.glob("*/checkpoint.npz")
    # A kill during a write leaves the writer's temp file (nothing can clean up after SIGKILL); the resume drops it.
    partial = path.parent / f".{path.name}.killed.tmp"
    partial.write_bytes(b"half a checkpoint")
    done = json.loads(str(np.load(path)["meta"]))["state"]["epochs_done"]
    assert 1 <= done < 30

    again = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in again.stdout:
            lines.append(line)
            if line.startswith("resuming"):
                break
        assert lines and lines[-1].startswith(f"resuming killed after epoch {done}"), "".join(lines[-20:])
        assert not [p for p in path.parent.iterdir() if p.name.startswith(".")], "the half-written checkpoint went"
    finally:
        again.kill()
        again.wait(30)

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    model.optimizer.build(model.trainable_variables)
    with pytest.raises(ValueError, match="arrays for"):
        checkpoint.restore(path, model)  # another network's checkpoint is refused, not half-loaded
