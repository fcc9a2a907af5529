"""Faults with real processes: a worker killed in the middle of a scan, Redis restarted (losing its data) during a
batch, and the model backend down."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests

from scanner.verdict import validate
from server.db import session_scope
from server.models import Scan
from tests.conftest import DEFAULT_MODEL

pytestmark = pytest.mark.slow


def wait_for(*args, **kwargs):
    from tests.support.server_stack import wait_for

    return wait_for(*args, **kwargs)


def scan_row(stack, scan_id: str) -> Scan:
    with session_scope(stack.database_url) as session:
        return session.get(Scan, scan_id)


def test_worker_killed_mid_scan_another_finishes_it_once(server_stack):
    stack = server_stack
    if len(stack.live_workers()) < 2:
        stack.add_worker(f"w{len(stack.workers) + 1}")
    path = "/drip/ffpp_004.mp4"
    url = stack.media.url(f"{path}?chunk=8192&every=0.3")  # about 7 s to download
    r = stack.session().post(f"{stack.base_url}/api/v1/scans", json={"url": url}, timeout=10)
    assert r.status_code == 202, r.text
    scan_id = r.json()["id"]

    row = wait_for(
        lambda: (s := scan_row(stack, scan_id)).status == "running" and s.worker and s, 60, what="the scan to start"
    )
    time.sleep(1.0)  # well into the download
    assert scan_row(stack, scan_id).status == "running"
    victim = next(w for w in stack.live_workers() if w.name == f"worker {row.worker.split('@')[0]}")
    victim.kill()
    assert not victim.alive

    done = stack.wait_scan(scan_id, timeout=120)
    assert done["status"] == "done", (done, stack.logs())
    validate(done["result"])
    assert done["attempts"] == 2
    finished = scan_row(stack, scan_id)
    assert finished.worker != row.worker
    hits = stack.media.hits[path]
    time.sleep(4)  # longer than the stale-heartbeat window: nothing runs it again
    again = scan_row(stack, scan_id)
    assert (again.status, again.attempts, again.finished_at, again.result) == (
        "done",
        2,
        finished.finished_at,
        finished.result,
    )
    assert stack.media.hits[path] == hits
    stack.workers.remove(victim)


def test_redis_restarted_during_a_batch_the_batch_completes(server_stack):
    stack = server_stack
    if not stack.live_workers():
        stack.add_worker(f"w{len(stack.workers) + 1}")
    http = stack.session()
    urls = [
        stack.media.url(f"/drip/{name}?chunk=200000&every=0.4")
        for name in ("ffpp_004_982_NT.mp4", "ffpp_634.mp4", "ffpp_634_660_FS.mp4")
    ]
    r = http.post(f"{stack.base_url}/api/v1/batches", json={"urls": urls}, timeout=10)
    assert r.status_code == 202, r.text
    batch = r.json()
    wait_for(
        lambda: http.get(batch["status_url"], timeout=5).json()["counts"]["running"] >= 1,
        60,
        what="a scan of the batch to start",
    )
    assert stack.redis.client().llen("mesoscan.scans") >= 1  # the rest wait in Redis, and will be lost

    stack.redis.stop()
    try:
        # Reads come from the database; submissions need the broker.
        during = http.get(batch["status_url"], timeout=10)
        assert during.status_code == 200 and during.json()["total"] == 3
        refused = http.post(f"{stack.base_url}/api/v1/scans", json={"url": stack.clip("ffpp_519.mp4")}, timeout=15)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "broker_unavailable"
        assert refused.headers["Retry-After"]
        # /readyz keeps its answer a few seconds (MODEL_CHECK_TTL_S), so the outage shows within that time
        deadline = time.monotonic() + 15
        while (ready := requests.get(f"{stack.base_url}/readyz", timeout=15)).status_code != 503:
            assert time.monotonic() < deadline, f"/readyz does not see the broker down: {ready.text}"
            time.sleep(0.5)
        assert ready.json()["checks"]["broker"]["ok"] is False
        time.sleep(1.5)
    finally:
        stack.redis.start()  # same port, empty
    assert stack.redis.client().llen("mesoscan.scans") == 0

    def complete():
        body = http.get(batch["status_url"], timeout=5).json()
        return body if body["complete"] else None

    try:
        final = wait_for(complete, 180, interval=0.5, what="the batch to complete after the restart")
    except pytest.fail.Exception:
        print(stack.logs())
        raise
    assert final["counts"]["done"] == 3, final
    for item in final["items"]:
        scan = http.get(f"{stack.base_url}/api/v1/scans/{item['scan_id']}", timeout=5).json()
        validate(scan["result"])
        assert 1 <= scan["attempts"] <= 2
    wait_for(
        lambda: requests.get(f"{stack.base_url}/readyz", timeout=15).status_code == 200,
        15,
        interval=0.5,
        what="/readyz to see the broker back",
    )
    # Submissions work again through the gateway's reconnected broker pool.
    r = http.post(
        f"{stack.base_url}/api/v1/scans", json={"url": stack.clip("ffpp_004.mp4", query="after=1")}, timeout=10
    )
    assert r.status_code in (200, 202)


def test_model_backend_down_scans_fail_after_retries_and_readyz_says_so(server_stack, make_app, monkeypatch):
    from tests.support.server_stack import free_port

    stack = server_stack
    dead = f"127.0.0.1:{free_port()}"
    backend = {
        "MESOSCAN_MODEL_BACKEND": "tfserving-grpc",
        "MESOSCAN_TFSERVING_URL": dead,
        "MESOSCAN_RETRIES": "0",
        "MESOSCAN_REQUEST_TIMEOUT_S": "3",
        "MESOSCAN_QUEUE": "mesoscan.nomodel",
        "MESOSCAN_MAX_ATTEMPTS": "2",
    }
    worker = stack.add_worker("nomodel", **backend)
    try:
        for name, value in backend.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("MESOSCAN_NETWORK_ALLOWLIST", '["127.0.0.1"]')
        app = make_app(database_url=stack.database_url, queue="mesoscan.nomodel", max_attempts=2)
        client = app.test_client()
        client.environ_base["HTTP_X_API_KEY"] = stack.api_key

        ready = client.get("/readyz")
        assert ready.status_code == 503
        check = ready.get_json()["checks"]["model_backend"]
        assert check["ok"] is False and "model_unavailable" in check["detail"] and dead in check["detail"]

        r = client.post("/api/v1/scans", json={"url": stack.clip("dfdc_yhffcuhhjy.mp4")})
        assert r.status_code == 202, r.get_json()
        scan_id = r.get_json()["id"]
        scan = wait_for(
            lambda: (b := client.get(f"/api/v1/scans/{scan_id}").get_json())["status"] in ("done", "failed") and b,
            120,
            interval=0.3,
            what="the scan to fail",
        )
        assert scan["status"] == "failed", scan
        assert scan["result"]["error"]["code"] == "model_unavailable"
        assert scan["result"]["error"]["retryable"] is True
        assert scan["attempts"] == 2
        validate(scan["result"])
    finally:
        worker.stop()
        stack.workers.remove(worker)


def test_a_scan_that_keeps_crashing_workers_ends_failed(server_stack):
    """A scan whose deliveries all died (attempts used up, heartbeat stale) is failed on its next delivery, not run."""
    import datetime as dt

    from server import jobs
    from server.models import utcnow

    stack = server_stack
    if not stack.live_workers():
        stack.add_worker(f"w{len(stack.workers) + 1}")
    path = "/files/ffpp_519.mp4"
    with session_scope(stack.database_url) as session:
        scan = jobs.submit(
            session,
            url=stack.media.url(path + "?crashy=1"),
            page_url=None,
            model=DEFAULT_MODEL,
            version=1,
            api_key_id=None,
            cache_ttl_s=0,
        ).scan
        row = session.get(Scan, scan.id)
        row.status, row.attempts, row.worker = "running", 3, "ghost@test"  # three deliveries crashed their worker
        row.heartbeat_at = utcnow() - dt.timedelta(minutes=5)
    hits = stack.media.hits[path]
    # No message exists for it: the workers' recovery finds the silent scan and sends it again.
    done = stack.wait_scan(scan.id, timeout=60)
    assert done["status"] == "failed"
    assert (
        done["result"]["error"]["code"] == "internal_error"
        and "gave up after 3 attempts" in done["result"]["error"]["message"]
    )
    assert done["attempts"] == 4
    validate(done["result"])
    assert stack.media.hits[path] == hits  # it was not fetched again


def test_finished_verdicts_survive_restarts_of_gateway_and_redis(server_stack):
    from tests.support.server_stack import start_gateway

    stack = server_stack
    if not stack.live_workers():
        stack.add_worker(f"w{len(stack.workers) + 1}")
    url = stack.clip("ffpp_004.mp4", query="restarts=1")
    scan = stack.wait_scan(
        stack.session().post(f"{stack.base_url}/api/v1/scans", json={"url": url}, timeout=10).json()["id"]
    )
    assert scan["status"] == "done"

    stack.gateway.stop()
    stack.redis.stop()
    stack.redis.start()
    port = int(stack.base_url.rsplit(":", 1)[1])
    stack.gateway, stack.base_url = start_gateway(stack.env, stack.log_dir, port)

    again = stack.session().get(f"{stack.base_url}/api/v1/scans/{scan['id']}", timeout=10).json()
    assert again["status"] == "done" and again["result"] == scan["result"]
    cached = stack.session().post(f"{stack.base_url}/api/v1/scans", json={"url": url}, timeout=10)
    assert cached.status_code == 200 and cached.json()["id"] == scan["id"]
    assert stack.redis.client().llen("mesoscan.scans") == 0


def test_models_load_after_the_fork_never_at_import(server_stack):
    import subprocess
    import sys

    code = (
        "import sys, server.app, server.tasks, server.cli, server.worker_app; "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TensorFlow imported'"
    )
    subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        cwd=Path(__file__).resolve().parents[1],
        env=server_stack.env,
        timeout=60,
    )
    logs = "\n".join(w.log(200_000) for w in server_stack.workers)
    loaded = [line for line in logs.splitlines() if f"worker process ready: {DEFAULT_MODEL}" in line]
    assert loaded and all("ForkPoolWorker" in line for line in loaded), loaded
