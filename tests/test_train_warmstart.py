"""`mesoscan train --init-from MODEL`: a run goes on from a registered model's weights, on the same split only, and
its model records every epoch the weights have seen."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest

from serving import mesonet
from serving.augment import AugmentConfig
from serving.config import ServingSettings
from serving.errors import InvalidInputError, UnknownModelError
from serving.images import load_face
from serving.registry import get_model, load_keras_model, load_raw_model
from serving.train import TrainConfig, train
from serving.training import loop
from serving.training.data import load_training_data
from serving.training.warmstart import start_record
from tests.conftest import CROPS_DIR, require_shared

TINY = {
    "arch": "meso4",
    "epochs": 2,
    "batch_size": 8,
    "limit": 48,
    "val_fraction": 0.25,
    "seed": 7,
    "augment": AugmentConfig(jpeg_prob=0.5),
}


@pytest.fixture(scope="module")
def settings(tmp_path_factory):
    return ServingSettings(models_dir=tmp_path_factory.mktemp("warmstart-models"))


@pytest.fixture(scope="module")
def first(settings):
    return train(TrainConfig(data_dir=require_shared(CROPS_DIR), name="first", **TINY), None, settings, progress=False)


def _kernels(model: keras.Model) -> list[np.ndarray]:
    return [np.asarray(w) for layer in model.layers for w in layer.get_weights() if w.ndim == 4]


def test_a_run_goes_on_from_the_weights_and_counts_every_epoch(first, settings, monkeypatch):
    drawn = []
    real_batches = loop.training_batches
    monkeypatch.setattr(loop, "training_batches", lambda *a: drawn.append(a[-1]) or real_batches(*a))
    # a learning rate too small to move a kernel: what the run ends with is what it started from
    config = TrainConfig(
        data_dir=require_shared(CROPS_DIR),
        name="second",
        init_from="first",
        schedule="constant",
        learning_rate=1e-12,
        min_learning_rate=1e-12,
        **{**TINY, "epochs": 1},
    )
    second = train(config, None, settings, progress=False)
    training = second.metadata["training"]
    assert training["init_from"] == {
        "name": "first",
        "version": 1,
        "sha256": first.metadata["sha256"],
        "epochs": 2,
        "command": first.metadata["training"]["command"],
        "init_from": None,
    }
    assert training["epochs_run"] == 1 and training["epochs_total"] == 3
    assert "--init-from first" in training["command"]
    assert drawn == [range(2, 3)], "its first epoch draws what the start's third epoch would have"
    card = second.metadata_path.with_suffix(".md").read_text()
    assert "Started from the weights of first v1" in card and "2 epochs before this run: 3 epochs in all" in card
    assert first.metadata["training"]["command"] in card

    a, b = (load_keras_model(get_model(name, settings), settings) for name in ("first", "second"))
    for ka, kb in zip(_kernels(a), _kernels(b), strict=True):
        np.testing.assert_allclose(kb, ka, atol=1e-6)
    fresh = _kernels(mesonet.build("meso4"))
    assert not np.allclose(fresh[0], _kernels(b)[0], atol=1e-3), "a random start would differ"


def test_the_start_must_share_the_split_and_the_architecture(first, settings):
    data = require_shared(CROPS_DIR)
    base = TrainConfig(data_dir=data, name="third", init_from="first", **TINY)
    for change, message in (
        ({"seed": 8}, "validated on another split"),
        ({"limit": 40}, "validated on another split"),
        ({"arch": "mesoinception4"}, "is a meso4, this run trains a mesoinception4"),
    ):
        with pytest.raises(InvalidInputError, match=message):
            train(dataclasses.replace(base, **change), None, settings, progress=False)
    with pytest.raises(UnknownModelError, match="unknown model 'nonesuch'"):
        train(dataclasses.replace(base, init_from="nonesuch"), None, settings, progress=False)
    assert not (settings.models_dir / "trained" / "third.json").exists()


def test_the_authors_p_real_weights_start_as_the_same_scores_of_p_fake(settings):
    data_dir = require_shared(CROPS_DIR)
    config = TrainConfig(data_dir=data_dir, name="from_authors", init_from="meso4_df", **TINY)
    data = load_training_data(data_dir, config.val_fraction, config.seed, config.limit, settings)
    record, weights = start_record(config, data, settings)
    assert record["name"] == "meso4_df" and record["epochs"] is None and record["command"] is None
    started = mesonet.build("meso4", "p_fake")
    started.set_weights(weights)
    faces = np.stack([load_face(c.path) for c in data.crops[:8]])
    authors = load_raw_model(get_model("meso4_df", settings), settings)
    np.testing.assert_allclose(started(faces, training=False), authors(faces, training=False), atol=1e-5)
