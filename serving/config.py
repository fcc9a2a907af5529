"""Settings of the model side, read from `MESOSCAN_*` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

Backend = Literal["embedded", "tfserving-grpc", "tfserving-rest"]


def _default_models_dir() -> Path:
    return Path(platformdirs.user_cache_dir("mesoscan")) / "models"


class ServingSettings(BaseSettings):
    """Where model files live and how faces are scored.

    Every field reads the environment variable of the same name with the `MESOSCAN_` prefix,
    e.g. `MESOSCAN_MODEL_BACKEND=tfserving-grpc`.
    """

    model_config = SettingsConfigDict(env_prefix="MESOSCAN_", extra="ignore", protected_namespaces=())

    models_dir: Path = Field(default_factory=_default_models_dir)
    """Where fetched model files are stored (`<models_dir>/<group>/<file>`)."""
    models_mirror: str | None = None
    """A directory or an http(s) URL base laid out like `<mirror>/<group>/<file>`, tried before upstream."""
    model: str = "meso4_dfdc"
    """The registry name used when a command is given no `--model`."""
    model_backend: Backend = "embedded"
    tfserving_url: str = "localhost:8500"
    """`host:port` for gRPC, `http://host:port` for REST."""
    batch_size: int = Field(default=32, ge=1, le=1024)
    request_timeout_s: float = Field(default=30.0, gt=0)
    retries: int = Field(default=3, ge=0, le=10)
    """Retries of a download, or of a model server call that found the server unavailable (gRPC: at most 4)."""
    model_retry_backoff_s: float = Field(default=0.25, gt=0, le=10)
    """Model server calls: the pause between retries; it doubles with each further retry, up to 8 times this."""
    models_timeout_s: float = Field(default=30.0, gt=0)
    """Socket timeout when fetching model files."""
    jpeg_quality: int = Field(default=95, ge=50, le=100)
    """Quality of the JPEG crops the REST backend sends."""
    rest_image_format: Literal["jpeg", "png"] = "jpeg"
    """How the REST backend encodes faces for the `jpeg` signature (which decodes both): JPEG is about 15 KB a face
    but moves scores slightly (measured: up to 0.08 on the shared test crops, mean 0.01); PNG is lossless, so
    REST scores equal gRPC's, at about 4× the payload."""


def get_settings() -> ServingSettings:
    return ServingSettings()
