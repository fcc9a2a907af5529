"""Workers under hostile URLs (issue 19), with real gateway and worker processes: the guard holds inside a worker,
the soft time limit ends a scan as `timeout`, and a retry runs when its backoff ends, also under `serve --dev`."""

from __future__ import annotations

import json
import time
import urllib.parse

import pytest
import requests

from server.app import create_app
from server.config import ServerSettings, Settings
from tests.support.media_server import MediaServer
from tests.support.server_stack import METRICS_TOKEN, refusing_port, wait_for

pytestmark = pytest.mark.slow

CLIP = "ffpp_634.mp4"


def test_a_redirect_to_another_loopback_port_is_blocked_inside_the_worker(server_stack):
    """The workers' allowlist holds the media server's host:port only: another port of 127.0.0.1 is refused."""
    other = MediaServer(files={CLIP: server_stack.media.files[CLIP]}).start()
    try:
        url = server_stack.media.url("/redirect?" + urllib.parse.urlencode({"to": other.url(f"/files/{CLIP}")}))
        r = server_stack.session().post(f"{server_stack.base_url}/api/v1/scans", json={"url": url}, timeout=10)
        assert r.status_code == 202, r.text
        scan = server_stack.wait_scan(r.json()["id"], timeout=90)
        assert scan["status"] == "failed", scan
        assert scan["result"]["error"]["code"] == "blocked_address", scan["result"]["error"]
        assert scan["attempts"] == 1  # not retried
        assert server_stack.media.hits["/redirect"] >= 1
        assert other.hits == {}, "the worker reached a loopback port outside its allowlist"
    finally:
        other.stop()


def test_the_soft_time_limit_ends_a_scan_as_timeout(server_stack, monkeypatch):
    queue = "mesoscan.soft-limit"
    worker = server_stack.add_worker(
        "soft",
        MESOSCAN_QUEUE=queue,
        MESOSCAN_TASK_SOFT_TIME_LIMIT_S="3",
        MESOSCAN_TASK_TIME_LIMIT_S="30",
        MESOSCAN_DOWNLOAD_TIMEOUT_S="60",
        MESOSCAN_SOCKET_TIMEOUT_S="50",
        MESOSCAN_MAX_ATTEMPTS="3",
    )
    monkeypatch.setenv("MESOSCAN_NETWORK_ALLOWLIST", json.dumps([server_stack.media.netloc]))  # the door's policy
    try:
        app = create_app(
            Settings.from_environment(
                server=ServerSettings(
                    database_url=server_stack.database_url,
                    broker_url=server_stack.redis.url,
                    queue=queue,
                    public_url=server_stack.base_url,
                    metrics_token=METRICS_TOKEN,
                    rate_limit="1000/minute",
                )
            )
        )
        client = app.test_client()
        url = server_stack.clip(CLIP, route="stall", query="after=65536")  # headers, 64 KiB, then silence
        r = client.post("/api/v1/scans", json={"url": url}, headers={"X-API-Key": server_stack.api_key})
        assert r.status_code == 202, r.get_json()
        started = time.monotonic()
        scan = server_stack.wait_scan(r.get_json()["id"], timeout=60)
        assert scan["status"] == "failed" and scan["result"]["error"]["code"] == "timeout", scan["result"]
        assert "longer than 3 s" in scan["result"]["error"]["message"]
        assert scan["attempts"] == 1 and time.monotonic() - started < 30
        assert worker.alive, "the soft limit must not cost the worker process"
    finally:
        worker.stop()
        server_stack.workers.remove(worker)


def test_a_retry_runs_when_its_backoff_ends_in_dev_mode(tmp_path):
    from tests.support.extension import DevGateway

    with refusing_port() as port:  # connection refused: a transient download failure, retried
        dev = DevGateway(
            tmp_path,
            [f"127.0.0.1:{port}"],
            MESOSCAN_RETRY_BACKOFF_S="2",
            MESOSCAN_RETRY_BACKOFF_MAX_S="2",
            MESOSCAN_MAX_ATTEMPTS="3",
        ).start()
        try:
            r = requests.post(f"{dev.base}/api/v1/scans", json={"url": f"http://127.0.0.1:{port}/clip.mp4"}, timeout=10)
            assert r.status_code == 202, r.text
            started = time.monotonic()
            scan = wait_for(
                lambda: (s := dev.scan(r.json()["id"]))["status"] == "failed" and s,
                45,
                interval=0.2,
                what="the retried scan to end",
            )
            error = scan["result"]["error"]
            assert scan["attempts"] == 3 and error["code"] == "download_failed", error
            assert time.monotonic() - started < 30, "the retries waited for the recovery sweep, not their backoff"
        finally:
            dev.service.stop()
