"""`mesoscan batch --gateway URL`: the batch's items scanned by a MesoScan gateway, over its REST API.

Submits `POST /api/v1/batches` in chunks of at most the gateway's batch limit (read from its OpenAPI document), polls
each batch with backoff, reads each finished scan's verdict document, and honours `429 Retry-After` (and `503`).
The API key comes from `MESOSCAN_API_KEY` (header `X-API-Key`). Talks HTTP only: nothing of `server/` is imported.
"""

from __future__ import annotations

import contextlib
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import requests

API_KEY_HEADER = "X-API-Key"
DEFAULT_BATCH_LIMIT = 100
CONNECT_ATTEMPTS = 5
"""Connection failures in a row before the gateway counts as unreachable (with backoff: about 15 s)."""
MAX_WAIT_S = 300.0
"""The longest a Retry-After is honoured at once."""


class GatewayError(Exception):
    """The gateway cannot be reached or refuses the key: the batch stops (exit status 3)."""


class RateLimitedError(Exception):
    """A 429 waited out (Retry-After) but not retried: the caller may send less at once."""


class GatewayRequestError(Exception):
    """The gateway refused a request for a reason of the request (e.g. an unknown model): a usage error."""


class Gateway:
    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        should_stop: Callable[[], bool] = lambda: False,
        log: Callable[[str], None] = lambda message: None,
        timeout_s: float = 30.0,
    ):
        parts = urllib.parse.urlsplit(base_url.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise GatewayRequestError(f"--gateway must be an http(s) URL, not {base_url!r}")
        self.base = base_url.strip().rstrip("/")
        self.http = requests.Session()
        if api_key:
            self.http.headers[API_KEY_HEADER] = api_key
        self.should_stop, self.log, self.timeout_s = should_stop, log, timeout_s

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.should_stop() and time.monotonic() < deadline:
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))

    def request(
        self, method: str, url: str, attempts: int = CONNECT_ATTEMPTS, raise_429: bool = False, **kwargs
    ) -> Any:
        """The JSON answer; waits out 429/503 (Retry-After) and connection failures; raises GatewayError (and
        RateLimitedError after waiting out a 429 when `raise_429`)."""
        failures = 0
        while True:
            try:
                response = self.http.request(method, url, timeout=self.timeout_s, **kwargs)
            except requests.RequestException as exc:
                failures += 1
                if failures >= attempts or self.should_stop():
                    raise GatewayError(f"cannot reach the gateway at {self.base}: {exc}") from None
                self._sleep(min(2.0**failures / 2, 8.0))
                continue
            if response.status_code in (429, 503):
                wait = _retry_after(response.headers.get("Retry-After"))
                self.log(
                    f"the gateway answered {response.status_code} ({_message(response)}); "
                    f"waiting {wait:g} s as its Retry-After says"
                )
                self._sleep(wait)
                if self.should_stop():
                    raise GatewayError("stopped while waiting for the gateway")
                if raise_429 and response.status_code == 429:
                    raise RateLimitedError(_message(response))
                continue
            if response.status_code in (401, 403):
                raise GatewayError(
                    f"the gateway refused the API key ({_message(response)}); set MESOSCAN_API_KEY to a valid key"
                )
            if 400 <= response.status_code < 500:
                raise GatewayRequestError(f"the gateway refused the request: {_message(response)}")
            if response.status_code >= 500:
                failures += 1
                if failures >= attempts:
                    raise GatewayError(f"the gateway keeps failing: HTTP {response.status_code} {_message(response)}")
                self._sleep(min(2.0**failures / 2, 8.0))
                continue
            try:
                return response.json()
            except ValueError:
                raise GatewayError(f"{url} did not answer JSON: is {self.base} a MesoScan gateway?") from None

    def check(self) -> int:
        """Reachable, a MesoScan gateway, the key accepted; returns its batch limit."""
        spec = self.request("GET", f"{self.base}/api/v1/openapi.json", attempts=2)  # fail fast at the start
        try:
            limit = int(spec["components"]["schemas"]["BatchRequest"]["properties"]["urls"]["maxItems"])
        except (KeyError, TypeError, ValueError):
            limit = DEFAULT_BATCH_LIMIT
        with contextlib.suppress(GatewayRequestError):  # no such batch: 404 once the key is accepted, else 401
            self.request("GET", f"{self.base}/api/v1/batches/mesoscan-batch-key-check")
        return max(1, limit)

    def submit(self, urls: list[str], model: str | None, raise_429: bool = False) -> dict:
        body: dict[str, Any] = {"urls": urls}
        if model is not None:
            body["model"] = model
        return self.request("POST", f"{self.base}/api/v1/batches", raise_429=raise_429, json=body)

    def get(self, url: str) -> dict:
        return self.request("GET", url)

    def scan(self, scan_id: str) -> dict:
        return self.request("GET", f"{self.base}/api/v1/scans/{urllib.parse.quote(scan_id, safe='')}")


def _retry_after(value: str | None) -> float:
    try:
        return min(max(float(value), 0.0), MAX_WAIT_S) if value is not None else 5.0
    except ValueError:
        return 5.0  # an HTTP date: rare; a short wait is safe


def _message(response: requests.Response) -> str:
    try:
        error = response.json().get("error") or {}
        return f"{error.get('code')}: {error.get('message')}"
    except (ValueError, AttributeError):
        return f"HTTP {response.status_code}"
