"""Finding scans whose Celery message was lost, and sending them again; runs in each worker's main process.

The database is the record of every scan; Redis only carries messages. A message can be lost when Redis restarts
without its data, when a worker dies after its message was acknowledged (hard time limit), or when a gateway dies
between saving a scan and sending it. Every `recovery_interval_s` one worker (a Redis lock) looks for:

- scans still queued although the broker lost its data since they were sent: a marker key in Redis that
  disappears with the data tells;
- running scans whose heartbeat stopped (their worker died);
- scans queued for longer than `requeue_after_s` (a message lost any other way), but only while the broker holds
  fewer messages than there are queued scans: a long queue is not a lost one.

The same round removes stored uploads whose scan ended without its worker removing them (it died), and partial
uploads a dead gateway left (`server.uploads.sweep`).

Each is given a new message id and sent again; the old message, should it still exist, no longer owns the scan and
is dropped on delivery, so sending again is always safe.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import uuid

from server import jobs
from server.config import ServerSettings
from server.db import session_scope
from server.models import utcnow

log = logging.getLogger(__name__)

MARKER_KEY = "mesoscan:broker-epoch"
UNACKED_KEY = "unacked"
"""kombu's Redis hash of messages delivered to workers and not yet acknowledged."""
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
LOCK_KEY = "mesoscan:recovery-lock"


class Recovery:
    def __init__(self, settings: ServerSettings, publish):
        self.settings = settings
        self.publish = publish
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._first_round = True

    def _redis(self):
        """The broker's Redis; None for another broker."""
        from server.health import is_redis, redis_client

        return redis_client(self.settings.broker_url) if is_redis(self.settings.broker_url) else None

    def sweep(self) -> int:
        """One round; returns how many scans were sent again."""
        s = self.settings
        client = self._redis()
        broker_lost_before: dt.datetime | None = None
        if client is not None:
            if not client.set(LOCK_KEY, uuid.uuid4().hex, nx=True, px=int(s.recovery_interval_s * 900)):
                return 0  # another worker sweeps this round
            if not client.exists(MARKER_KEY):
                broker_lost_before = utcnow()  # the marker is missing: the broker is new or lost its data
        elif self._first_round:
            broker_lost_before = utcnow()  # an in-memory broker starts empty
        self._first_round = False
        now = utcnow()
        queued_before = now - dt.timedelta(seconds=s.requeue_after)
        with session_scope(s.database_url) as session:
            if client is not None and broker_lost_before is None and self._nothing_missing(client, session):
                queued_before = EPOCH  # a long queue is not a lost one: leave old queued scans where they are
            lost = jobs.lost_scans(
                session,
                stale_before=now - dt.timedelta(seconds=s.stale_after_s),
                queued_before=queued_before,
                broker_lost_before=broker_lost_before,
            )
        sent = 0
        for scan_id, old_task_id in lost:
            with session_scope(s.database_url) as session:
                task_id = jobs.reassign(session, scan_id, old_task_id)
            if task_id is None:
                continue
            self.publish(scan_id, task_id)
            sent += 1
        if client is not None and broker_lost_before is not None:
            client.set(MARKER_KEY, broker_lost_before.isoformat())  # only once every lost scan was sent again
        self._sweep_uploads()
        if sent:
            log.warning("recovery: sent %d lost scan(s) again", sent)
        return sent

    def _sweep_uploads(self) -> None:
        """Stored uploads of scans that ended (their worker died before removing them) and abandoned partial ones."""
        from server.uploads import sweep

        try:
            sweep(self.settings)
        except Exception as exc:
            log.info("upload sweep skipped: %s", exc)

    def _nothing_missing(self, client, session) -> bool:
        """At least as many messages in the broker (waiting or held by workers) as queued scans in the database."""
        from server.metrics import queue_keys

        pipe = client.pipeline(transaction=False)
        for key in queue_keys(self.settings.queue):
            pipe.llen(key)
        pipe.hlen(UNACKED_KEY)
        messages = sum(pipe.execute())
        return messages >= jobs.count_queued(session)

    def _run(self) -> None:
        while True:
            try:
                self.sweep()
            except Exception as exc:  # broker or database down: try again next round
                log.info("recovery round skipped: %s", exc)
            if self._stop.wait(self.settings.recovery_interval_s):
                return

    def start(self) -> Recovery:
        self._thread = threading.Thread(target=self._run, name="mesoscan-recovery", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
