"""Typed errors of the model side; each carries a stable code the scanner and the gateway report."""

from __future__ import annotations


class ServingError(Exception):
    """Base class: `code` is stable and machine-readable, the message says what to do."""

    code = "serving_error"


class UnknownModelError(ServingError, KeyError):
    code = "unknown_model"

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else self.code


class ModelFetchError(ServingError):
    """A model file could not be obtained or failed its sha256 check."""

    code = "model_unavailable"


class WeightsMismatchError(ServingError):
    """A weight file does not fit the architecture it is loaded into."""

    code = "weights_mismatch"


class InvalidInputError(ServingError, ValueError):
    """Faces given to a predictor have the wrong dtype or shape, or an image could not be decoded."""

    code = "invalid_input"


class ModelUnavailableError(ServingError):
    """The model backend cannot answer: server down, unknown model on the server, retries exhausted."""

    code = "model_unavailable"


class PredictionTimeoutError(ModelUnavailableError):
    """The backend did not answer within the deadline."""

    code = "timeout"


class ModelNotServedError(ModelUnavailableError):
    """The model server is up but does not serve this model (or this version of it)."""

    code = "model_not_served"


class TFServingConfigError(ServingError, ValueError):
    """A TF Serving setting is malformed: models.config, batching.config, or the server URL for the backend."""

    code = "invalid_config"
