"""`mesoscan batch --gateway`: real gateways on 127.0.0.1 (`mesoscan serve --dev`, and the keyed gunicorn + Celery
stack), chunks of the gateway's batch limit, 429 Retry-After honoured, report URLs, exit 3 for a refused key."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from scanner.verdict import validate
from tests.support.server_stack import free_port

MESOSCAN = str(Path(sys.executable).with_name("mesoscan"))


def batch(args: list[str], env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "MESOSCAN_API_KEY"}
    return subprocess.run(
        [MESOSCAN, "batch", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**base, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
    )


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def dev_gateway(tmp_path):
    """`mesoscan serve --dev` with a batch limit of 2 and one submission a second (so chunks meet a 429)."""
    from tests.support.extension import DevGateway

    dev = DevGateway(
        tmp_path,
        ["127.0.0.1"],
        MESOSCAN_FRAMES="8",
        MESOSCAN_MAX_BATCH_URLS="2",
        MESOSCAN_RATE_LIMIT="1/second",
        MESOSCAN_READ_RATE_LIMIT="100000/minute",
    ).start()
    try:
        yield dev.base, dev.service
    finally:
        dev.service.stop()


def test_through_a_dev_gateway(dev_gateway, server, tmp_path):
    base, service = dev_gateway
    rows = [
        {"url": server.url("/files/ffpp_004.mp4"), "ref": "a"},
        {"url": server.url("/files/ffpp_634.mp4"), "ref": "b"},
        {"url": server.url("/files/nope.mp4"), "ref": "404"},
        {"url": "http://10.0.0.1/clip.mp4", "ref": "private"},
        {"url": str(tmp_path / "local.mp4"), "ref": "local"},
        {"url": server.url("/files/ffpp_004.mp4") + "#again", "ref": "dup"},
        {"url": server.url("/files/ffpp_519.mp4"), "ref": "c"},
    ]
    (tmp_path / "local.mp4").write_bytes(b"never sent")
    listing = tmp_path / "feed.jsonl"
    listing.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    result = batch([str(listing), "--out", str(out), "--gateway", base])
    assert result.returncode == 1, (result.stderr, service.log())
    # five distinct URLs reach the gateway in chunks of two; the second chunk within the second meets a 429
    assert "the gateway answered 429" in result.stderr and "Retry-After" in result.stderr
    # the gateway charges a batch per URL: two URLs never fit a limit of one a second, so chunks are split
    assert "the gateway's rate limit refuses 2 URLs at once: sending 1 and 1" in result.stderr
    entries = read_jsonl(out / "results.jsonl")
    assert [e["input"] for e in entries] == rows
    by_ref = {e["input"]["ref"]: e for e in entries}
    for entry in entries:
        validate(entry["result"])
    for ref in ("a", "b", "c"):
        doc = by_ref[ref]["result"]
        assert doc["status"] == "done", doc["error"]
        assert doc["frames_sampled"] == 8 and doc["top_faces"]
        page = requests.get(by_ref[ref]["report_url"], timeout=10)
        assert page.status_code == 200 and "<svg" in page.text
    assert by_ref["dup"]["result"] == by_ref["a"]["result"]
    assert by_ref["dup"]["report_url"] == by_ref["a"]["report_url"]
    assert by_ref["404"]["result"]["error"]["code"] == "download_failed"
    assert by_ref["404"]["report_url"].startswith(base)
    assert by_ref["private"]["result"]["error"]["code"] == "blocked_address"
    assert by_ref["private"]["result"]["error"]["message"].startswith("row 4: rejected by the gateway")
    local = by_ref["local"]["result"]["error"]
    assert local["code"] == "invalid_url" and "never sent to a gateway" in local["message"]
    assert "local.mp4" not in service.log(200_000)

    table = list(csv.reader((out / "results.csv").read_text(encoding="utf-8-sig").splitlines()))
    assert table[0][:2] == ["url", "ref"] and table[0][-1] == "report_url"
    assert [r[-1] for r in table[1:]] == [e["report_url"] or "" for e in entries]

    again = batch([str(listing), "--out", str(out), "--gateway", base])
    assert again.returncode == 1 and "scanned 0 videos" in again.stdout
    assert read_jsonl(out / "results.jsonl") == entries
    refused = batch([str(listing), "--out", str(out)])  # in-process results are a different result
    assert refused.returncode == 2 and "other settings" in refused.stderr


def test_keyed_gateway_refuses_a_bad_key_with_exit_3(server_stack, tmp_path):
    listing = tmp_path / "urls.txt"
    listing.write_text(server_stack.clip("ffpp_004.mp4") + "\n")
    for env in ({"MESOSCAN_API_KEY": "msk_not_a_key"}, {}):
        out = tmp_path / f"out{len(env)}"
        result = batch([str(listing), "--out", str(out), "--gateway", server_stack.base_url], env)
        assert result.returncode == 3, result.stderr
        assert "refused the API key" in result.stderr and "MESOSCAN_API_KEY" in result.stderr
        assert not (out / "results.jsonl").exists()


def test_keyed_gateway_with_its_key(server_stack, tmp_path):
    listing = tmp_path / "urls.txt"
    listing.write_text(server_stack.clip("ffpp_004.mp4") + "\n")
    out = tmp_path / "good"
    good = batch(
        [str(listing), "--out", str(out), "--gateway", server_stack.base_url],
        {"MESOSCAN_API_KEY": server_stack.api_key},
    )
    assert good.returncode == 0, (good.stderr, server_stack.logs())
    [entry] = read_jsonl(out / "results.jsonl")
    validate(entry["result"])
    assert entry["result"]["status"] == "done"
    assert entry["report_url"].startswith(server_stack.base_url)


def test_unreachable_gateway_exits_3(tmp_path):
    listing = tmp_path / "urls.txt"
    listing.write_text("https://example.org/video.mp4\n")
    result = batch(
        [str(listing), "--out", str(tmp_path / "out"), "--gateway", f"http://127.0.0.1:{free_port()}"], timeout=60
    )
    assert result.returncode == 3, result.stderr
    assert "cannot reach the gateway" in result.stderr
