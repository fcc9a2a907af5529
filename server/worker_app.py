"""The configured Celery app, for Celery's own command line: `celery -A server.worker_app inspect ping`."""

from server.tasks import configure

app = configure()
