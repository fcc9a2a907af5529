"""A run that starts from a registered model's weights (`mesoscan train --init-from MODEL`).

The weights a run registers are what outlives a machine: a checkpoint in the models directory does not. So a model
whose run has ended trains on in a new run (its own optimizer, schedule and checkpoints) started from its weights,
and the new model records what it started from, so its card counts every epoch the weights have seen.

The start must be an architecture's match and, when MesoScan trained it, must have validated on this run's split:
otherwise the new run would be validated on crops its start was trained on. The authors' 2018 weights never saw
these crops; their P(real) output unit is flipped to P(fake).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from serving.config import ServingSettings
from serving.errors import InvalidInputError
from serving.training.config import TrainConfig
from serving.training.data import TrainingData
from serving.training.registration import model_metadata

RECORD = "init.json"
"""In the run folder: what the run started from (the checkpoint holds the weights it went on to)."""


def start_record(config: TrainConfig, data: TrainingData, settings: ServingSettings) -> tuple[dict, list[np.ndarray]]:
    """What `config.init_from` is (as the new model's JSON records it) and its weights, as a P(fake) network's."""
    from serving import registry

    spec = registry.get_model(config.init_from, settings)
    if spec.is_ensemble:
        raise InvalidInputError(f"--init-from {spec.name}: an ensemble has no single network to start from")
    if spec.arch != config.arch:
        raise InvalidInputError(f"--init-from {spec.name} is a {spec.arch}, this run trains a {config.arch}")
    recorded = model_metadata(spec.name, settings) or {}
    training = recorded.get("training", {})
    if recorded:
        theirs = recorded.get("data", {}).get("split", {}).get("val_clusters_sha256")
        if theirs != data.split["val_clusters_sha256"]:
            raise InvalidInputError(
                f"--init-from {spec.name}: it was validated on another split than this run's (validation clusters "
                f"{str(theirs)[:12]}…, this run {data.split['val_clusters_sha256'][:12]}…), so this run's "
                "validation crops may be crops it trained on; use the data, --rows, --seed and --val-fraction "
                "it was trained with"
            )
    weights = registry.load_raw_model(spec, settings).get_weights()
    if spec.output == "p_real":  # sigmoid(-z) = 1 - sigmoid(z): the last unit's weights negated give P(fake)
        weights[-2:] = [-w for w in weights[-2:]]
    record = {
        "name": spec.name,
        "version": spec.version,
        "sha256": spec.weights.sha256,
        "epochs": training.get("epochs_total", training.get("epochs_run")),
        "command": training.get("command"),
        "init_from": training.get("init_from"),
    }
    return record, weights


def warm_start(model, config: TrainConfig, data: TrainingData, folder: Path, settings: ServingSettings) -> dict | None:
    """Fill `model` with `config.init_from`'s weights for a run's first epoch; a run resumed from its checkpoint
    keeps what it recorded at its start. Returns that record (None: the run starts from random weights)."""
    from serving.files import atomic_write_text

    if not config.init_from:
        return None
    saved = folder / RECORD
    if saved.is_file() and (folder / "checkpoint.npz").is_file():
        return json.loads(saved.read_text())
    record, weights = start_record(config, data, settings)
    model.set_weights(weights)
    atomic_write_text(saved, json.dumps(record, indent=2) + "\n")
    return record
