"""In-process scoring: Meso-4 in numpy (`serving.meso4_numpy`, no TensorFlow to import), every other model with a
compiled `tf.function` (not `model.predict`, which costs 40–60 ms a call)."""

from __future__ import annotations

import numpy as np

from serving.backends.base import Predictor
from serving.config import ServingSettings
from serving.contract import IMAGE_SIZE
from serving.registry import ModelSpec, ensure_weights, load_keras_model


class _Inference:
    """`model(images, training=False)` as an object: TensorFlow counts its "retracing" warning by the traced
    function's code, which one lambda would share across every predictor of a process (five models: a warning)."""

    def __init__(self, model):
        self.model = model

    def __call__(self, images):
        return self.model(images, training=False)


def runs_in_numpy(spec: ModelSpec) -> bool:
    """Whether the embedded backend scores `spec` without TensorFlow (single Meso-4 models)."""
    return spec.arch == "meso4" and not spec.is_ensemble


class EmbeddedPredictor(Predictor):
    backend = "embedded"

    def __init__(self, spec: ModelSpec, settings: ServingSettings):
        super().__init__(spec, settings)
        if runs_in_numpy(spec):
            from serving.meso4_numpy import Meso4

            self.model = self._score = Meso4(ensure_weights(spec, settings), spec.output, spec.calibration)
            return
        import tensorflow as tf

        self.model = load_keras_model(spec, settings)
        self._score = tf.function(
            _Inference(self.model),
            input_signature=[tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 3], tf.uint8)],
            reduce_retracing=True,
        )

    def _predict_batch(self, faces: np.ndarray) -> np.ndarray:
        return np.asarray(self._score(faces))

    def close(self) -> None:
        self.model = self._score = None
