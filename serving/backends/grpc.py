"""TF Serving over gRPC: `PredictionService.Predict` on the `serving_default` signature with raw uint8 faces.

The channel is made on first use in each process (a channel made before fork is never used in the child).
Retries on UNAVAILABLE are gRPC's own (a retry policy in the channel's service config); each call has a deadline.
Tensors are built from raw bytes (`tensor_content`): no TensorFlow op runs here. Importing tensorflow-serving-api's
generated modules still imports the `tensorflow` package (its protos live there), on first use only.
"""

from __future__ import annotations

import json
import os

import numpy as np

from serving.backends.base import Predictor
from serving.config import ServingSettings
from serving.contract import DEFAULT_SIGNATURE, IMAGE_SIZE, IMAGES_INPUT, OUTPUT
from serving.errors import (
    InvalidInputError,
    ModelNotServedError,
    ModelUnavailableError,
    PredictionTimeoutError,
    ServingError,
    TFServingConfigError,
)
from serving.registry import ModelSpec

INT32_MAX = 2**31 - 1
FACE_BYTES = IMAGE_SIZE * IMAGE_SIZE * 3
MAX_ATTEMPTS = 5
"""gRPC caps a retry policy's maxAttempts at 5."""


def grpc_target(url: str) -> str:
    """`MESOSCAN_TFSERVING_URL` as a gRPC target (`host:port`)."""
    if url.startswith(("http://", "https://")) or not url.strip():
        raise TFServingConfigError(
            f"the tfserving-grpc backend needs MESOSCAN_TFSERVING_URL as host:port "
            f"(TF Serving's gRPC port, 8500 by default), got {url!r}"
        )
    return url.strip()


def retry_service_config(settings: ServingSettings) -> dict:
    """gRPC service config: retry UNAVAILABLE calls to TF Serving with exponential backoff."""
    config: dict = {
        "methodConfig": [
            {
                "name": [
                    {"service": "tensorflow.serving.PredictionService"},
                    {"service": "tensorflow.serving.ModelService"},
                ]
            }
        ]
    }
    if settings.retries:
        config["methodConfig"][0]["retryPolicy"] = {
            "maxAttempts": min(settings.retries + 1, MAX_ATTEMPTS),
            "initialBackoff": f"{settings.model_retry_backoff_s:.3f}s",
            "maxBackoff": f"{settings.model_retry_backoff_s * 8:.3f}s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }
    return config


def channel_options(settings: ServingSettings) -> list[tuple[str, int | str]]:
    backoff_ms = max(1, round(settings.model_retry_backoff_s * 1000))
    return [
        # As TF Serving's own limits: a 64-face uint8 batch is 12.6 MB, far above gRPC's 4 MB default.
        ("grpc.max_send_message_length", INT32_MAX),
        ("grpc.max_receive_message_length", INT32_MAX),
        # gRPC only retries a call whose request it buffered whole (256 KiB by default: not one batch).
        ("grpc.per_rpc_retry_buffer_size", min(INT32_MAX, settings.batch_size * FACE_BYTES + (1 << 20))),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", json.dumps(retry_service_config(settings))),
        # Redial a down server sooner than gRPC's default (1 s, growing to 120 s), so that a retry finds a
        # server that came back rather than a channel still waiting out its backoff.
        ("grpc.initial_reconnect_backoff_ms", max(1, backoff_ms // 2)),
        ("grpc.max_reconnect_backoff_ms", backoff_ms * 8),
    ]


class GrpcPredictor(Predictor):
    backend = "tfserving-grpc"

    def __init__(self, spec: ModelSpec, settings: ServingSettings):
        super().__init__(spec, settings)
        self.target = grpc_target(settings.tfserving_url)
        self._channel = None
        self._pid: int | None = None
        self._prediction = self._models = None

    def _stubs(self):
        """The channel's stubs, made on first use in this process."""
        if self._channel is None or self._pid != os.getpid():
            import grpc
            from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

            # An inherited channel is dropped, not closed: its threads and sockets belong to the parent.
            self._channel = grpc.insecure_channel(self.target, options=channel_options(self.settings))
            self._pid = os.getpid()
            self._prediction = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
            self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)
        return self._prediction, self._models

    def _predict_batch(self, faces: np.ndarray) -> np.ndarray:
        from tensorflow.core.framework import tensor_shape_pb2, types_pb2
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        self._fill_model_spec(request.model_spec)
        request.model_spec.signature_name = DEFAULT_SIGNATURE
        tensor = request.inputs[IMAGES_INPUT]
        tensor.dtype = types_pb2.DT_UINT8
        tensor.tensor_shape.dim.extend(tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in faces.shape)
        tensor.tensor_content = faces.tobytes()
        request.output_filter.append(OUTPUT)
        prediction, _ = self._stubs()
        response = self._call(prediction.Predict, request)
        return self._scores(response, len(faces))

    def _scores(self, response, expected: int) -> np.ndarray:
        from tensorflow.core.framework import types_pb2

        proto = response.outputs.get(OUTPUT)
        if proto is None or proto.dtype != types_pb2.DT_FLOAT:
            raise ModelUnavailableError(
                f"TF Serving at {self.target} answered without a float32 {OUTPUT!r} output "
                f"for {self.spec.name} v{self.spec.version}"
            )
        if proto.tensor_content:
            scores = np.frombuffer(proto.tensor_content, dtype="<f4")
        else:
            scores = np.asarray(proto.float_val, dtype=np.float32)
        shape = [d.size for d in proto.tensor_shape.dim]
        if shape != [expected] or scores.size != expected:
            raise ModelUnavailableError(
                f"TF Serving at {self.target} answered {scores.size} scores of shape {shape} for {expected} faces"
            )
        return scores.astype(np.float32)

    def check(self) -> None:
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        self._fill_model_spec(request.model_spec)
        _, models = self._stubs()
        response = self._call(models.GetModelStatus, request)
        states = {s.version: s for s in response.model_version_status}
        status = states.get(self.spec.version)
        if status is None or status.state != get_model_status_pb2.ModelVersionStatus.AVAILABLE:
            state = get_model_status_pb2.ModelVersionStatus.State.Name(status.state) if status else "absent"
            detail = f" ({status.status.error_message})" if status and status.status.error_message else ""
            raise ModelUnavailableError(
                f"TF Serving at {self.target}: {self.spec.name} version {self.spec.version} is {state}{detail}"
            )

    def _fill_model_spec(self, model_spec) -> None:
        model_spec.name = self.spec.name
        model_spec.version.value = self.spec.version

    def _call(self, method, request):
        import grpc

        try:
            return method(request, timeout=self.settings.request_timeout_s)
        except grpc.RpcError as exc:
            raise self._error(exc) from None

    def _error(self, exc) -> ServingError:
        import grpc

        code, details = exc.code(), exc.details()
        where = f"TF Serving at {self.target}"
        model = f"{self.spec.name} version {self.spec.version}"
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return PredictionTimeoutError(
                f"{where} did not answer for {model} within {self.settings.request_timeout_s:g} s"
            )
        if code == grpc.StatusCode.UNAVAILABLE:
            retries = min(self.settings.retries, MAX_ATTEMPTS - 1)
            return ModelUnavailableError(f"{where} is unavailable (retried up to {retries} times): {details}")
        if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):
            return ModelNotServedError(
                f"{where} does not serve {model} with MesoScan's signatures ({details}); "
                f"export it with `mesoscan export {self.spec.name} --out <model base>` and "
                "list it in the server's models.config"
            )
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return InvalidInputError(f"{where} rejected the faces for {model}: {details}")
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return ModelUnavailableError(
                f"{where} refused the request for {model} ({details}); a smaller MESOSCAN_BATCH_SIZE may help"
            )
        return ModelUnavailableError(f"{where} failed for {model}: {code.name}: {details}")

    def close(self) -> None:
        if self._channel is not None and self._pid == os.getpid():
            self._channel.close()
        self._channel = self._prediction = self._models = None
        self._pid = None
