"""End to end through real processes: a gunicorn gateway over HTTP, a Celery worker, Redis, PostgreSQL, and shared
clips served from 127.0.0.1."""

from __future__ import annotations

import time

import pytest
import requests

from scanner.verdict import validate
from tests.conftest import DEFAULT_MODEL
from tests.support.server_stack import METRICS_TOKEN

pytestmark = pytest.mark.slow


def submit(stack, url: str, **extra) -> requests.Response:
    return stack.session().post(f"{stack.base_url}/api/v1/scans", json={"url": url, **extra}, timeout=10)


def queue_length(stack) -> int:
    return stack.redis.client().llen("mesoscan.scans")


def test_a_clip_is_scanned_end_to_end(server_stack):
    url = server_stack.clip("dfdc_lynaeydofd.mp4")  # no other test scans these bytes: never a reused verdict
    r = submit(server_stack, url, page_url="https://news.example/a-story")
    assert r.status_code == 202, r.text
    body = r.json()
    assert r.headers["Location"] == body["status_url"]
    assert body["status_url"].startswith(server_stack.base_url)

    seen: set[tuple] = set()
    http = server_stack.session()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        scan = http.get(body["status_url"], timeout=5).json()
        if scan["status"] == "running" and scan["progress"]:
            seen.add((scan["progress"]["stage"],))
            assert 0 <= scan["progress"]["fraction"] <= 1
        if scan["status"] in ("done", "failed"):
            break
        time.sleep(0.1)
    assert scan["status"] == "done", (scan, server_stack.logs())
    assert seen, "progress was never reported while running"
    document = scan["result"]
    validate(document)
    assert document["source"]["url"] == url and len(document["source"]["sha256"]) == 64
    assert document["model"]["name"] == DEFAULT_MODEL and document["frames_sampled"] == 8
    assert document["verdict"]["label"] in ("fake", "real", "uncertain", "no_face")
    assert scan["attempts"] == 1 and scan["finished_at"] and scan["progress"] is None
    assert scan["reused_from"] is None and document["faces_analyzed"] > 0
    assert server_stack.media.hits["/files/dfdc_lynaeydofd.mp4"] >= 1

    page = requests.get(scan["report_url"], timeout=5)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    html = page.text
    assert "<script" not in html and "<svg" in html
    label_text = {"fake": "Likely fake", "real": "Likely real", "uncertain": "Uncertain", "no_face": "No face"}
    assert label_text[document["verdict"]["label"]] in html
    assert f"{document['model']['name']} v{document['model']['version']}" in html
    if document["top_faces"]:
        assert html.count("data:image/jpeg;base64,") == len(document["top_faces"])


def test_cached_resubmission_returns_without_a_new_task(server_stack):
    url = server_stack.clip("ffpp_004.mp4")
    first = submit(server_stack, url)
    scan = server_stack.wait_scan(first.json()["id"])
    assert scan["status"] == "done"
    hits = server_stack.media.hits["/files/ffpp_004.mp4"]

    again = submit(server_stack, url + "#t=1")
    assert again.status_code == 200
    body = again.json()
    assert body["cached"] is True and body["id"] == scan["id"] and body["result"] == scan["result"]
    time.sleep(0.5)
    assert queue_length(server_stack) == 0
    assert server_stack.media.hits["/files/ffpp_004.mp4"] == hits  # nothing was downloaded again


def test_same_bytes_at_another_url_reuse_the_verdict(server_stack):
    first = server_stack.wait_scan(submit(server_stack, server_stack.clip("ffpp_634.mp4")).json()["id"])
    assert first["status"] == "done"
    other = submit(server_stack, server_stack.clip("ffpp_634.mp4", query="mirror=1"))
    assert other.status_code == 202
    second = server_stack.wait_scan(other.json()["id"])
    assert second["status"] == "done" and second["id"] != first["id"]
    assert second["reused_from"] == first["id"]
    assert second["result"]["verdict"] == first["result"]["verdict"]
    assert second["result"]["source"]["url"].endswith("?mirror=1")
    validate(second["result"])


def test_a_batch_of_ten_with_duplicates_and_bad_urls(server_stack):
    clip = server_stack.clip
    urls = [
        clip("ffpp_004_982_NT.mp4"),
        clip("ffpp_634_660_FS.mp4"),
        clip("ffpp_004_982_NT.mp4") + "#again",  # duplicate of the first
        clip("ffpp_634_660_FS.mp4").replace("http://", "HTTP://"),  # the same URL, written differently
        clip("text.mp4", route="files"),  # not served: 404, not retried
        server_stack.media.url("/status/404"),
        "file:///etc/passwd",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.7/video.mp4",
        "not a url",
    ]
    r = server_stack.session().post(f"{server_stack.base_url}/api/v1/batches", json={"urls": urls}, timeout=10)
    assert r.status_code == 202, r.text
    batch = r.json()
    assert batch["counts"]["rejected"] == 4 and batch["total"] == 10
    items = batch["items"]
    assert items[0]["scan_id"] == items[2]["scan_id"] and items[1]["scan_id"] == items[3]["scan_id"]
    assert [i["error"]["code"] for i in items[6:]] == [
        "invalid_url",
        "blocked_address",
        "blocked_address",
        "invalid_url",
    ]

    http = server_stack.session()

    def complete():
        body = http.get(batch["status_url"], timeout=5).json()
        return body if body["complete"] else None

    from tests.support.server_stack import wait_for

    final = wait_for(complete, 180, interval=0.3, what="the batch to complete")
    assert sum(final["counts"].values()) == 10
    assert final["counts"]["done"] == 4 and final["counts"]["failed"] == 2 and final["counts"]["rejected"] == 4
    for item in final["items"][:4]:
        assert item["status"] == "done" and item["verdict"]["label"] in ("fake", "real", "uncertain", "no_face")
    for item in final["items"][4:6]:
        assert item["status"] == "failed" and item["error"]["code"] == "download_failed"
        scan = http.get(f"{server_stack.base_url}/api/v1/scans/{item['scan_id']}", timeout=5).json()
        assert scan["attempts"] == 1  # an HTTP 404 is not transient: no retry
        assert scan["result"]["error"]["retryable"] is False
    assert server_stack.media.hits["/status/404"] == 1


def test_gateway_health_and_metrics_over_http(server_stack):
    assert requests.get(f"{server_stack.base_url}/healthz", timeout=5).json() == {"status": "ok"}
    ready = requests.get(f"{server_stack.base_url}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    assert requests.get(f"{server_stack.base_url}/metrics", timeout=10).status_code == 401  # the token is needed
    metrics = requests.get(
        f"{server_stack.base_url}/metrics", timeout=10, headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
    ).text
    assert "mesoscan_scans{label=" in metrics and "mesoscan_queue_depth" in metrics
    assert 'mesoscan_stage_seconds_count{stage="total"}' in metrics
    assert "mesoscan_http_requests_total" in metrics
