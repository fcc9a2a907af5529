"""The one prediction interface: uint8 faces in, `fake_probability` out, whatever the backend."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from serving.config import ServingSettings, get_settings
from serving.images import check_faces
from serving.registry import ModelSpec, get_model


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


def get_predictor(model: str | None = None, settings: ServingSettings | None = None) -> Predictor:
    """The predictor for `model` (default: `settings.model`) on the configured backend.

    Call it after a fork (e.g. in Celery's `worker_process_init`), never at import time: a TensorFlow
    model or a gRPC channel made before fork hangs the child.
    """
    settings = settings or get_settings()
    spec = get_model(model or settings.model, settings)
    if settings.model_backend == "embedded":
        from serving.backends.embedded import EmbeddedPredictor as Backend
    elif settings.model_backend == "tfserving-grpc":
        from serving.backends.grpc import GrpcPredictor as Backend
    else:
        from serving.backends.rest import RestPredictor as Backend
    return Backend(spec, settings)
