"""The numpy Meso-4 gives the Keras model's calibrated `fake_probability`, and refuses weights of another network."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from serving.config import ServingSettings
from serving.errors import WeightsMismatchError
from serving.images import load_face
from serving.meso4_numpy import Meso4
from serving.predictor import get_predictor
from serving.registry import ensure_weights, get_model, load_keras_model
from tests.conftest import MESONET_DIR, require_shared


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    crops = sorted(require_shared(MESONET_DIR / "test_images").rglob("*.jpg"))
    random = np.random.default_rng(3).integers(0, 256, (5, 256, 256, 3), dtype=np.uint8)
    return np.concatenate([np.stack([load_face(p) for p in crops]), random])


@pytest.mark.parametrize("name", ["meso4_df", "meso4_f2f", "meso4_dfdc"])
def test_numpy_meso4_equals_the_keras_model(name, faces):
    settings = ServingSettings()
    spec = get_model(name, settings)
    expected = np.asarray(load_keras_model(spec, settings)(faces, training=False))
    scores = Meso4(ensure_weights(spec, settings), spec.output, spec.calibration)(faces)
    assert scores.dtype == np.float32 and scores.shape == (len(faces),)
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-5)
    assert np.ptp(scores) > 0.05  # the faces are told apart: a constant output could not pass by chance


def test_embedded_backend_scores_meso4_in_numpy(faces):
    with get_predictor("meso4_dfdc", ServingSettings(batch_size=3)) as predictor:
        assert isinstance(predictor.model, Meso4)
        assert predictor.model.calibration == predictor.spec.calibration
        np.testing.assert_allclose(predictor.predict(faces), predictor.model(faces), rtol=0, atol=1e-6)


def test_weights_of_another_network_are_refused(tmp_path: Path):
    settings = ServingSettings()
    with pytest.raises(WeightsMismatchError, match="does not fit meso4"):
        Meso4(ensure_weights(get_model("mesoinception4_df", settings), settings))
    with pytest.raises(WeightsMismatchError, match="does not fit meso4"):
        Meso4(ensure_weights(get_model("mesoinception4_dfdc", settings), settings))
    bad = tmp_path / "bad.weights.h5"
    with h5py.File(ensure_weights(get_model("meso4_dfdc", settings), settings)) as src, h5py.File(bad, "w") as dst:
        src.copy("layers", dst)
        del dst["layers/conv2d_1/vars/0"]
        dst["layers/conv2d_1/vars/0"] = np.zeros((3, 3, 8, 8), np.float32)
    with pytest.raises(WeightsMismatchError, match=r"conv2d_2 has arrays of shapes"):
        Meso4(bad)
