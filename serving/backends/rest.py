"""TF Serving over REST: the `jpeg` signature, faces sent as base64 JPEG.

A 256×256 face is about 20 KB in the request (15 KB of JPEG at quality 95, base64; measured on the 100 shared test
crops: 15 to 29 KB), against 197 KB of raw pixels or about 1 MB as JSON numbers.

`POST /v1/models/<name>/versions/<version>:predict` with `{"signature_name": "jpeg", "instances": [{"b64": ...}]}`.
Connection errors and 503 answers are retried with backoff (urllib3's `Retry`); each request has a timeout.
The HTTP session is made on first use in each process, like the gRPC channel.
"""

from __future__ import annotations

import base64
import math
import os
from urllib.parse import quote

import numpy as np

from serving.backends.base import Predictor
from serving.config import ServingSettings
from serving.contract import JPEG_SIGNATURE
from serving.errors import (
    InvalidInputError,
    ModelNotServedError,
    ModelUnavailableError,
    PredictionTimeoutError,
    TFServingConfigError,
)
from serving.images import encode_jpeg, encode_png
from serving.registry import ModelSpec


def rest_base_url(url: str) -> str:
    """`MESOSCAN_TFSERVING_URL` as the REST API's base URL (`http://host:port`)."""
    if not url.startswith(("http://", "https://")):
        raise TFServingConfigError(
            f"the tfserving-rest backend needs MESOSCAN_TFSERVING_URL as http://host:port "
            f"(TF Serving's REST port, 8501 by default), got {url!r}"
        )
    return url.rstrip("/")


class RestPredictor(Predictor):
    backend = "tfserving-rest"

    def __init__(self, spec: ModelSpec, settings: ServingSettings):
        super().__init__(spec, settings)
        self.base_url = rest_base_url(settings.tfserving_url)
        self.model_url = f"{self.base_url}/v1/models/{quote(spec.name, safe='')}/versions/{spec.version}"
        self._session = None
        self._pid: int | None = None

    def _http(self):
        if self._session is None or self._pid != os.getpid():
            import requests
            from requests.adapters import HTTPAdapter
            from urllib3.util.retry import Retry

            retries = self.settings.retries
            # Predictions are idempotent, so POST is retried too; a read timeout is not (the server is working):
            # read=False re-raises it as it is, rather than as "max retries exceeded".
            retry = Retry(
                total=retries,
                connect=retries,
                status=retries,
                read=False,
                other=0,
                status_forcelist=(503,),
                allowed_methods=frozenset({"GET", "POST"}),
                backoff_factor=self.settings.model_retry_backoff_s / 2,
                backoff_max=self.settings.model_retry_backoff_s * 8,
                raise_on_status=False,
            )
            session = requests.Session()
            session.trust_env = False  # no proxy from the environment between a worker and its model server
            session.mount("http://", HTTPAdapter(max_retries=retry))
            session.mount("https://", HTTPAdapter(max_retries=retry))
            self._session, self._pid = session, os.getpid()
        return self._session

    def _predict_batch(self, faces: np.ndarray) -> np.ndarray:
        quality = self.settings.jpeg_quality
        encode = encode_png if self.settings.rest_image_format == "png" else lambda f: encode_jpeg(f, quality)
        instances = [{"b64": base64.b64encode(encode(face)).decode("ascii")} for face in faces]
        answer = self._request(
            "POST", f"{self.model_url}:predict", json={"signature_name": JPEG_SIGNATURE, "instances": instances}
        )
        predictions = answer.get("predictions") if isinstance(answer, dict) else None
        if (
            not isinstance(predictions, list)
            or len(predictions) != len(faces)
            or not all(isinstance(p, int | float) and not isinstance(p, bool) and math.isfinite(p) for p in predictions)
        ):
            raise ModelUnavailableError(
                f"TF Serving at {self.base_url} answered no valid predictions for "
                f"{len(faces)} faces ({self.spec.name} v{self.spec.version})"
            )
        return np.asarray(predictions, dtype=np.float32)

    def check(self) -> None:
        answer = self._request("GET", self.model_url)
        states = {str(s.get("version")): s for s in answer.get("model_version_status", [])}
        status = states.get(str(self.spec.version), {})
        if status.get("state") != "AVAILABLE":
            detail = (status.get("status") or {}).get("error_message")
            raise ModelUnavailableError(
                f"TF Serving at {self.base_url}: {self.spec.name} version {self.spec.version} "
                f"is {status.get('state', 'absent')}" + (f" ({detail})" if detail else "")
            )

    def _request(self, method: str, url: str, **kwargs) -> dict:
        import requests

        timeout = self.settings.request_timeout_s
        model = f"{self.spec.name} version {self.spec.version}"
        try:
            response = self._http().request(method, url, timeout=(timeout, timeout), **kwargs)
        except requests.exceptions.ConnectTimeout:
            raise ModelUnavailableError(
                f"TF Serving at {self.base_url} is unreachable (connect timed out after "
                f"{self.settings.retries} retries)"
            ) from None
        except requests.exceptions.Timeout:
            raise PredictionTimeoutError(
                f"TF Serving at {self.base_url} did not answer for {model} within {timeout:g} s"
            ) from None
        except requests.exceptions.RequestException as exc:
            reason = str(exc).splitlines()[0][:300]
            raise ModelUnavailableError(
                f"TF Serving at {self.base_url} is unreachable after {self.settings.retries} retries: {reason}"
            ) from None
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        if response.status_code == 200:
            if not isinstance(answer, dict):
                raise ModelUnavailableError(f"TF Serving at {self.base_url} answered {url} with no JSON object")
            return answer
        error = answer.get("error", response.text[:300]) if isinstance(answer, dict) else response.text[:300]
        code = response.status_code
        if code == 404 or (code == 400 and "signature" in error):
            raise ModelNotServedError(
                f"TF Serving at {self.base_url} does not serve {model} with MesoScan's "
                f"signatures ({error}); export it with `mesoscan export {self.spec.name} "
                "--out <model base>` and list it in the server's models.config"
            )
        if code == 400:
            raise InvalidInputError(f"TF Serving at {self.base_url} rejected the faces for {model}: {error}")
        if code == 504:
            raise PredictionTimeoutError(f"TF Serving at {self.base_url} timed out on {model}: {error}")
        if code == 503:
            raise ModelUnavailableError(
                f"TF Serving at {self.base_url} is unavailable after {self.settings.retries} retries: {error}"
            )
        raise ModelUnavailableError(f"TF Serving at {self.base_url} answered HTTP {code} for {model}: {error}")

    def close(self) -> None:
        if self._session is not None and self._pid == os.getpid():
            self._session.close()
        self._session = None
        self._pid = None
