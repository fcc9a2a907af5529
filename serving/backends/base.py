"""The abstract predictor every backend implements: uint8 faces in, `fake_probability` out."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from serving.config import ServingSettings
from serving.contract import IMAGE_SIZE
from serving.errors import InvalidInputError
from serving.registry import ModelSpec


def check_faces(faces: np.ndarray) -> np.ndarray:
    """Raise `InvalidInputError` unless `faces` is uint8 [N, 256, 256, 3]; return it contiguous."""
    faces = np.asarray(faces)
    if faces.dtype != np.uint8:
        raise InvalidInputError(f"faces must be uint8 RGB (0-255), got dtype {faces.dtype}")
    if faces.ndim != 4 or faces.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise InvalidInputError(f"faces must have shape [N, {IMAGE_SIZE}, {IMAGE_SIZE}, 3], got {list(faces.shape)}")
    return np.ascontiguousarray(faces)


class Predictor(ABC):
    """Scores face crops with one registered model.

    `predict` takes any number of RGB uint8 faces [N, 256, 256, 3] and returns float32 [N] fake
    probabilities, splitting the work into batches of `settings.batch_size`.
    """

    backend: str

    def __init__(self, spec: ModelSpec, settings: ServingSettings):
        self.spec = spec
        self.settings = settings

    def predict(self, faces: np.ndarray) -> np.ndarray:
        faces = check_faces(faces)
        size = self.settings.batch_size
        scores = [self._predict_batch(faces[i : i + size]) for i in range(0, len(faces), size)]
        return np.concatenate(scores).astype(np.float32) if scores else np.zeros(0, np.float32)

    @abstractmethod
    def _predict_batch(self, faces: np.ndarray) -> np.ndarray: ...

    def check(self) -> None:
        """Raise `ModelUnavailableError` when the backend cannot score now (used by readiness probes)."""

    def close(self) -> None:
        """Release connections or memory."""

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec.name} v{self.spec.version} via {self.backend}>"
