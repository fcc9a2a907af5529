"""The workers' recovery of lost scans, one sweep at a time, on a real PostgreSQL database and a real Redis (a Redis
database number of its own); `publish` records what would be sent."""

from __future__ import annotations

import datetime as dt

import pytest
import redis

from server import jobs
from server.config import ServerSettings
from server.db import session_scope, upgrade
from server.models import Scan, utcnow
from server.recovery import LOCK_KEY, MARKER_KEY, Recovery
from tests.conftest import DEFAULT_MODEL


@pytest.fixture
def database(_models_env):
    from tests.support.server_stack import postgres_database

    with postgres_database() as url:
        upgrade(url)
        yield url
        from server.db import get_engine

        get_engine(url)[0].dispose()


@pytest.fixture
def redis_url(stack_redis):
    url = stack_redis.url.rsplit("/", 1)[0] + "/5"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()


@pytest.fixture
def sweeper(database, redis_url):
    sent: list[tuple[str, str]] = []
    settings = ServerSettings(
        database_url=database,
        broker_url=redis_url,
        heartbeat_s=1,
        stale_after_s=10,
        recovery_interval_s=1,
        requeue_after_s=3600,
    )

    def make():
        return Recovery(settings, lambda scan_id, task_id: sent.append((scan_id, task_id)))

    make.sent = sent
    make.redis = redis.Redis.from_url(redis_url)
    return make


def new_scan(database, tag: str, **changes) -> Scan:
    with session_scope(database) as session:
        scan = jobs.submit(
            session,
            url=f"http://127.0.0.1:9/{tag}",
            page_url=None,
            model=DEFAULT_MODEL,
            version=1,
            api_key_id=None,
            cache_ttl_s=0,
        ).scan
    if changes:
        with session_scope(database) as session:
            row = session.get(Scan, scan.id)
            for key, value in changes.items():
                setattr(row, key, value)
    with session_scope(database) as session:
        return session.get(Scan, scan.id)


def row(database, scan_id) -> Scan:
    with session_scope(database) as session:
        return session.get(Scan, scan_id)


def test_a_broker_that_lost_its_data_gets_every_queued_scan_again(database, sweeper):
    queued = [new_scan(database, f"q{i}") for i in range(3)]
    done = new_scan(database, "done")
    with session_scope(database) as session:
        jobs.finish(session, done.id, {"status": "done", "verdict": {"label": "real"}})
    recovery = sweeper()
    assert recovery.sweep() == 3
    assert {scan_id for scan_id, _ in sweeper.sent} == {s.id for s in queued}
    for scan in queued:
        now = row(database, scan.id)
        assert now.status == "queued" and now.task_id != scan.task_id  # the old message no longer owns it
        assert (scan.id, now.task_id) in sweeper.sent
    assert sweeper.redis.exists(MARKER_KEY)

    sweeper.redis.delete(LOCK_KEY)
    assert recovery.sweep() == 0  # the marker is back: nothing was lost since


def test_a_running_scan_without_heartbeat_is_sent_again(database, sweeper):
    sweeper.redis.set(MARKER_KEY, "x")
    silent = new_scan(
        database, "silent", status="running", attempts=1, heartbeat_at=utcnow() - dt.timedelta(seconds=30)
    )
    alive = new_scan(database, "alive", status="running", attempts=1, heartbeat_at=utcnow())
    assert sweeper().sweep() == 1
    assert [scan_id for scan_id, _ in sweeper.sent] == [silent.id]
    assert row(database, silent.id).status == "queued" and row(database, silent.id).attempts == 1
    assert row(database, alive.id).task_id == alive.task_id


def test_old_queued_scans_are_sent_again_only_when_messages_are_missing(database, sweeper):
    sweeper.redis.set(MARKER_KEY, "x")
    old = new_scan(database, "old", enqueued_at=utcnow() - dt.timedelta(hours=2))
    new_scan(database, "young")
    sweeper.redis.rpush("mesoscan.scans", "m1", "m2")  # as many messages as queued scans: a long queue
    assert sweeper().sweep() == 0
    sweeper.redis.delete(LOCK_KEY, "mesoscan.scans")
    sweeper.redis.rpush("mesoscan.scans", "m1")  # one message for two queued scans: one was lost
    assert sweeper().sweep() == 1 and sweeper.sent[0][0] == old.id


def test_one_sweeper_per_round(database, sweeper):
    new_scan(database, "q")
    first, second = sweeper(), sweeper()
    assert first.sweep() == 1
    assert second.sweep() == 0  # the lock is held for this round
    assert len(sweeper.sent) == 1


def test_a_failed_publish_is_tried_again_next_round(database, redis_url):
    scan = new_scan(database, "q")
    settings = ServerSettings(database_url=database, broker_url=redis_url)
    calls = []

    def broken(scan_id, task_id):
        calls.append(task_id)
        raise ConnectionError("broker down")

    with pytest.raises(ConnectionError):
        Recovery(settings, broken).sweep()
    client = redis.Redis.from_url(redis_url)
    assert not client.exists(MARKER_KEY)  # not marked as recovered
    client.delete(LOCK_KEY)
    sent = []
    assert Recovery(settings, lambda s, t: sent.append((s, t))).sweep() == 1
    assert sent[0][0] == scan.id and sent[0][1] == row(database, scan.id).task_id != calls[0]


def test_claims_follow_the_owning_message(database):
    scan = new_scan(database, "claim")

    def claim(task_id: str, worker: str) -> jobs.Claim:
        with session_scope(database) as session:
            return jobs.claim(session, scan.id, task_id, worker, 10)

    def finish(document: dict) -> bool:
        with session_scope(database) as session:
            return jobs.finish(session, scan.id, document)

    assert claim("someone-else", "w@x").outcome == "gone"
    first = claim(scan.task_id, "w@x")
    assert (first.outcome, first.attempts) == ("claimed", 1)
    assert claim(scan.task_id, "w2@x").outcome == "busy"  # a live run has it
    with session_scope(database) as session:
        session.get(Scan, scan.id).heartbeat_at = utcnow() - dt.timedelta(seconds=60)
    second = claim(scan.task_id, "w2@x")  # its worker died: taken over
    assert (second.outcome, second.attempts) == ("claimed", 2)
    assert finish({"status": "done", "verdict": {"label": "fake"}, "source": {}})
    assert not finish({"status": "failed", "error": {"code": "x"}})  # final once
    assert row(database, scan.id).status == "done" and row(database, scan.id).active_key is None
    assert claim(scan.task_id, "w3@x").outcome == "gone"


def test_unstorable_text_is_replaced_before_storing(database):
    scan = new_scan(database, "nul")
    title = "bad\x00title\ud800"
    with session_scope(database) as session:
        assert jobs.finish(session, scan.id, {"status": "done", "source": {"title": title}, "verdict": {}})
    assert row(database, scan.id).result["source"]["title"] == "bad\ufffdtitle\ufffd"
