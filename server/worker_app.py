"""The Celery app of a worker, built from the environment, for Celery's own command line:
`celery -A server.worker_app inspect ping`. An unknown or bad `MESOSCAN_*` variable ends the command with one line
naming it (status 2), as `mesoscan worker` does."""

import sys

from server.config import Settings
from server.tasks import ScanApp
from serving.config import SettingsError

try:
    app = ScanApp(Settings.from_environment())
except SettingsError as exc:
    print(f"Error: {exc}", file=sys.stderr)
    raise SystemExit(2) from None
