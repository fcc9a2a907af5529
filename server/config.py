"""Settings of the gateway and the workers, read from `MESOSCAN_*` environment variables; and `Settings`, all that
a gateway or worker process reads, built once at its entry point."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import platformdirs
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from scanner.config import ScannerSettings
from serving.config import PREFIX, ServingSettings, check_environment, load


def default_database_url() -> str:
    return f"sqlite:///{Path(platformdirs.user_data_dir('mesoscan')) / 'mesoscan.db'}"


def default_upload_dir() -> Path:
    return Path(platformdirs.user_data_dir("mesoscan")) / "uploads"


class ServerSettings(BaseSettings):
    """Every field reads `MESOSCAN_<FIELD>` (e.g. `MESOSCAN_BROKER_URL=redis://redis:6379/0`).

    The video pipeline (`ScannerSettings`: `MESOSCAN_ALLOW_PRIVATE_NETWORKS`, `MESOSCAN_FRAMES`, ...) and the model
    side (`ServingSettings`: `MESOSCAN_MODEL_BACKEND`, `MESOSCAN_TFSERVING_URL`, ...) read the same environment.
    """

    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore", protected_namespaces=())

    # Services
    broker_url: str = "redis://127.0.0.1:6379/0"
    """Celery's broker (Redis). `memory://` only for `mesoscan serve --dev`."""
    database_url: str = Field(default_factory=default_database_url)
    """SQLAlchemy URL of the scan records: SQLite by default, `postgresql://user@host/db` in production."""
    ratelimit_storage_url: str | None = None
    """Where rate-limit counters live (default: the broker's Redis; `memory://` for one process)."""
    queue: str = "mesoscan.scans"
    """The Celery queue scans are sent to."""

    # Access
    open_mode: bool = False
    """No API keys: anyone who reaches the port may scan. Only for local use; the gateway then binds loopback only."""
    extension_origin: str | None = None
    """The browser extension's origins, comma-separated (e.g. `chrome-extension://<id>,moz-extension://<uuid>`),
    allowed by CORS. Requests with credentials (cookies) are never allowed."""
    cors_origins: list[str] = Field(default_factory=list)
    """More origins allowed by CORS (JSON list, e.g. `["https://app.example"]`)."""
    rate_limit: str = "60/minute"
    """Submissions (scans and batches) per API key, unless the key has its own (`mesoscan keys create --rate-limit`)."""
    read_rate_limit: str = "1200/minute"
    """Reads (status, batches) per API key."""
    proxy_hops: int = Field(default=0, ge=0, le=5)
    """Reverse proxies in front of the gateway whose X-Forwarded-* headers are trusted."""
    auth_failure_limit: str = "30/minute"
    """Requests with a missing, unknown or revoked key per client address; past it, 429 before any key lookup."""
    public_url: str | None = None
    """The gateway's public base URL (e.g. `https://scan.example`): every absolute URL it sends (`Location`,
    `status_url`, `report_url`) starts with it. Unset: open mode uses the (loopback-checked) request host, otherwise
    the URLs are relative, never built from a request's `Host` header."""
    metrics_token: str | None = None
    """Bearer token `/metrics` asks for (`Authorization: Bearer <token>`). Unset: `/metrics` answers 403, except in
    open mode (loopback only)."""
    metrics_cache_s: float = Field(default=15, ge=0)
    """`/metrics` and `/readyz` read the database, the broker and the model backend at most this often per process."""

    # Requests
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    max_batch_urls: int = Field(default=100, ge=1, le=10_000)
    max_url_length: int = Field(default=2048, ge=64)

    # Uploads (multipart POST /api/v1/scans and the web page)
    upload_dir: Path = Field(default_factory=default_upload_dir)
    """Where uploaded videos wait for their scan, named by scan id; shared by the gateway and the workers."""
    max_upload_mb: float = Field(default=200, gt=0)
    """Largest accepted upload (MB, 10^6 bytes): refused with 413 the moment it is passed."""
    upload_daily_mb: float = Field(default=2000, ge=0)
    """Upload bytes (MB) per API key (per address in open mode) and UTC day; 0 turns uploads off."""
    upload_timeout_s: float = Field(default=3600, gt=0)
    """An unfinished upload file older than this is a gateway that died mid-upload: the recovery job removes it."""

    # Jobs
    cache_ttl_s: float = Field(default=24 * 3600, ge=0)
    """A finished verdict for the same URL or the same video bytes (same model) is reused for this long."""
    task_soft_time_limit_s: float = Field(default=600, gt=0)
    """A scan still running after this long fails with `timeout`."""
    task_time_limit_s: float = Field(default=660, gt=0)
    """Hard limit: the worker process running the scan is killed."""
    visibility_timeout_s: float = Field(default=3600, gt=0)
    """Redis redelivers an unacknowledged scan after this long; must exceed the hard time limit."""
    max_attempts: int = Field(default=3, ge=1, le=20)
    """Deliveries of one scan (retries and worker crashes together) before it ends as `failed`."""
    retry_backoff_s: float = Field(default=10, ge=0)
    """Pause before the first retry of a transient failure; doubles with each attempt, up to `retry_backoff_max_s`."""
    retry_backoff_max_s: float = Field(default=300, ge=0)
    heartbeat_s: float = Field(default=5, gt=0)
    """How often a running scan tells the database it is alive."""
    stale_after_s: float = Field(default=60, gt=0)
    """A running scan silent for this long is taken as lost (its worker died) and sent again."""
    recovery_interval_s: float = Field(default=15, gt=0)
    """How often workers look for scans lost by the broker (a Redis restarted without its data)."""
    requeue_after_s: float | None = None
    """A scan queued for this long is sent again (default: the visibility timeout)."""
    worker_concurrency: int = Field(default=1, ge=1, le=64)
    """Scans at once per worker container (each process loads its own model)."""
    worker_prefetch: int = Field(default=1, ge=1)

    # Gateway
    gateway_workers: int = Field(default=2, ge=1, le=64)
    """gunicorn worker processes of `mesoscan serve`."""
    gateway_threads: int = Field(default=4, ge=1, le=64)

    @model_validator(mode="after")
    def _limits_fit(self) -> ServerSettings:
        if self.task_time_limit_s < self.task_soft_time_limit_s:
            raise ValueError("MESOSCAN_TASK_TIME_LIMIT_S must not be below MESOSCAN_TASK_SOFT_TIME_LIMIT_S")
        if self.visibility_timeout_s <= self.task_time_limit_s:
            raise ValueError(
                "MESOSCAN_VISIBILITY_TIMEOUT_S must exceed MESOSCAN_TASK_TIME_LIMIT_S, or Redis "
                "redelivers scans that are still running"
            )
        if self.stale_after_s <= 2 * self.heartbeat_s:
            raise ValueError("MESOSCAN_STALE_AFTER_S must be more than twice MESOSCAN_HEARTBEAT_S")
        return self

    @property
    def requeue_after(self) -> float:
        return self.requeue_after_s if self.requeue_after_s is not None else self.visibility_timeout_s

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1_000_000)

    @property
    def limiter_storage(self) -> str:
        return self.ratelimit_storage_url or self.broker_url

    @property
    def allowed_origins(self) -> list[str]:
        extension = [o.strip().rstrip("/") for o in (self.extension_origin or "").split(",")]
        return [o for o in [*extension, *self.cors_origins] if o]


@dataclass(frozen=True)
class Settings:
    """What a gateway or worker process reads from `MESOSCAN_*`: its own settings, the video pipeline's and the
    model side's. Built once where the process starts (`mesoscan serve` and `worker`, `create_app()`,
    `server.worker_app`) and passed down: the app, the Celery app and the scanners all hold the same one."""

    server: ServerSettings
    scanner: ScannerSettings
    serving: ServingSettings

    @classmethod
    def from_environment(
        cls,
        server: ServerSettings | None = None,
        scanner: ScannerSettings | None = None,
        serving: ServingSettings | None = None,
    ) -> Settings:
        """The sections not given, read from the environment. Raises `serving.config.SettingsError` (one line) for
        an unknown `MESOSCAN_*` name or a bad value."""
        check_environment()
        return cls(
            server=server if server is not None else load(ServerSettings),
            scanner=scanner if scanner is not None else load(ScannerSettings),
            serving=serving if serving is not None else load(ServingSettings),
        )
