"""The one prediction interface: uint8 faces in, `fake_probability` out, whatever the backend.

Importing it is cheap: a backend (and TensorFlow, for the embedded one but with Meso-4) is imported only when chosen.
"""

from __future__ import annotations

from serving.backends.base import Predictor
from serving.config import ServingSettings
from serving.registry import ModelSpec, get_model

__all__ = ["Predictor", "get_predictor", "uses_tensorflow"]


def uses_tensorflow(spec: ModelSpec, settings: ServingSettings) -> bool:
    """Whether scoring `spec` on the configured backend runs TensorFlow in this process."""
    from serving.backends.embedded import runs_in_numpy

    return settings.model_backend == "embedded" and not runs_in_numpy(spec)


def get_predictor(model: str | None, settings: ServingSettings) -> Predictor:
    """The predictor for `model` (default: `settings.model`) on the configured backend.

    Call it after a fork (e.g. in Celery's `worker_process_init`), never at import time: a TensorFlow
    model or a gRPC channel made before fork hangs the child.
    """
    spec = get_model(model or settings.model, settings)
    if settings.model_backend == "embedded":
        from serving.backends.embedded import EmbeddedPredictor as Backend
    elif settings.model_backend == "tfserving-grpc":
        from serving.backends.grpc import GrpcPredictor as Backend
    else:
        from serving.backends.rest import RestPredictor as Backend
    return Backend(spec, settings)
