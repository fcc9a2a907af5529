"""`mesoscan serve --dev`: the gateway and one worker in a single process, on loopback, for development and tests.

The broker is Celery's in-memory transport and the worker runs tasks in a thread of this process (solo pool, so no
time limits); the database is the configured one (SQLite by default). Keys are not needed (open mode).
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from typing import TYPE_CHECKING

from server.config import ServerSettings

if TYPE_CHECKING:
    from server.tasks import ScanApp

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


UNPACKED_EXTENSION_ORIGINS = (
    r"^chrome-extension://[a-p]{32}$",
    r"^moz-extension://[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
)
"""Any Chromium or Firefox extension's origin (regular expressions, as flask-cors takes them): an unpacked
extension's id depends on its folder (Firefox's on the profile), so `--dev`, which listens on loopback only, lets
every one in without configuration."""


def dev_settings(base: ServerSettings) -> ServerSettings:
    return base.model_copy(
        update={
            "broker_url": "memory://",
            "ratelimit_storage_url": "memory://",
            "open_mode": True,
            "cors_origins": [*base.cors_origins, *UNPACKED_EXTENSION_ORIGINS],
        }
    )


def start_worker(app: ScanApp) -> threading.Thread:
    """A Celery worker consuming the gateway's in-memory queue (`app`: the gateway's Celery app) in a daemon thread;
    the model loads in the background."""
    app.set_default()  # the worker thread runs tasks in the process's default app
    worker = app.WorkController(
        app=app,
        pool="solo",
        concurrency=1,
        hostname="dev@localhost",
        queues=[app.settings.server.queue],
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
        loglevel="INFO",
    )
    thread = threading.Thread(target=worker.start, name="mesoscan-dev-worker", daemon=True)
    thread.start()

    def warm() -> None:
        try:
            app.scanner(app.settings.serving.model).model_info()
        except Exception as exc:
            log.warning("the model could not be loaded yet: %s", exc)

    threading.Thread(target=warm, name="mesoscan-dev-warmup", daemon=True).start()
    return thread
