"""In-process scoring with a compiled `tf.function` (not `model.predict`, which costs 40–60 ms a call)."""

from __future__ import annotations

import numpy as np

from serving.backends.base import Predictor
from serving.config import ServingSettings
from serving.contract import IMAGE_SIZE
from serving.registry import ModelSpec, load_keras_model


class _Inference:
    """`model(images, training=False)` as an object: TensorFlow counts its "retracing" warning by the traced
    function's code, which one lambda would share across every predictor of a process (five models: a warning)."""

    def __init__(self, model):
        self.model = model

    def __call__(self, images):
        return self.model(images, training=False)


class EmbeddedPredictor(Predictor):
    backend = "embedded"

    def __init__(self, spec: ModelSpec, settings: ServingSettings):
        import tensorflow as tf

        super().__init__(spec, settings)
        self.model = load_keras_model(spec, settings)
        self._score = tf.function(
            _Inference(self.model),
            input_signature=[tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 3], tf.uint8)],
            reduce_retracing=True,
        )

    def _predict_batch(self, faces: np.ndarray) -> np.ndarray:
        return self._score(faces).numpy()

    def close(self) -> None:
        self.model = self._score = None
