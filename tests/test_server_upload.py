"""Uploads through real processes: a gunicorn gateway, a Celery worker, Redis, PostgreSQL; multipart bodies sent with
requests, and with raw sockets where a client must misbehave (stop mid-body, stream past the limit, hang up)."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from scanner.verdict import validate
from tests.conftest import VIDEOS_DIR, require_shared
from tests.support.server_stack import postgres_database, service_env, start_gateway, wait_for

pytestmark = pytest.mark.slow

LIMIT_MB = 1
"""The upload limit of the `limits` gateway (the stack's is the default 200 MB)."""


def clips() -> list[Path]:
    return sorted(require_shared(VIDEOS_DIR).glob("*.mp4"))


def upload(stack_or_base, data: bytes, name: str = "clip.mp4", key: str | None = None, **fields) -> requests.Response:
    base = stack_or_base if isinstance(stack_or_base, str) else stack_or_base.base_url
    key = key or stack_or_base.api_key
    return requests.post(
        f"{base}/api/v1/scans",
        headers={"X-API-Key": key},
        data=fields,
        files={"file": (name, data, "video/mp4")},
        timeout=60,
    )


def stored(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def cli_documents(paths: list[Path], env: dict[str, str]) -> dict[str, dict]:
    """`mesoscan scan FILE --json` for each file, in one process (the model loads once): the documents by name."""
    code = (
        "import json, sys\n"
        "from click.testing import CliRunner\n"
        "from scanner.cli import scan\n"
        "out = {}\n"
        "for path in sys.argv[1:]:\n"
        "    result = CliRunner().invoke(scan, [path, '--json'], catch_exceptions=False)\n"
        "    out[path] = json.loads(result.stdout[result.stdout.index('{'):])\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *map(str, paths)], env=env, capture_output=True, text=True, timeout=600, check=True
    )
    return {Path(k).name: v for k, v in json.loads(done.stdout.splitlines()[-1]).items()}


def comparable(document: dict) -> dict:
    """The document without what differs between a file scanned by its path and the same bytes uploaded."""
    source = {k: v for k, v in document["source"].items() if k not in ("url", "title", "kind", "file_name")}
    return {**{k: v for k, v in document.items() if k not in ("source", "timings_ms")}, "source": source}


@pytest.fixture(scope="module")
def limits(server_stack, tmp_path_factory):
    """A second gateway with a 1 MB upload limit, a 1 s duration limit, no verdict reuse and a queue nobody
    consumes (its uploads stay stored), on a database of its own."""
    from server.db import session_scope, upgrade
    from server.keys import create_key

    directory = tmp_path_factory.mktemp("limit-uploads")
    with postgres_database() as database_url:
        upgrade(database_url)
        with session_scope(database_url) as session:
            key = create_key(session, "upload limits").key
        env = service_env(
            database_url,
            server_stack.redis.url,
            MESOSCAN_UPLOAD_DIR=str(directory),
            MESOSCAN_MAX_UPLOAD_MB=str(LIMIT_MB),
            MESOSCAN_MAX_DURATION_S="1",
            MESOSCAN_CACHE_TTL_S="0",
            MESOSCAN_QUEUE="mesoscan.upload-limits",
        )
        gateway, base = start_gateway(env, tmp_path_factory.mktemp("limit-logs"))
        try:
            yield {"base": base, "key": key, "dir": directory, "db": database_url, "gateway": gateway}
        finally:
            gateway.stop()
            server_stack.redis.client().delete("mesoscan.upload-limits")
            from server.db import get_engine

            get_engine(database_url)[0].dispose()


# --- through the worker ---------------------------------------------------------------------------------------------


def test_every_clip_uploaded_gets_the_verdict_mesoscan_scan_gives(server_stack):
    stack = server_stack
    paths = clips()
    scans = {}
    for path in paths:
        r = upload(stack, path.read_bytes(), name=path.name)
        assert r.status_code in (200, 202), r.text  # 200: the same bytes were scanned by URL earlier in this run
        body = r.json()
        assert body["url"] is None and body["upload"] == {"file_name": path.name, "size_bytes": path.stat().st_size}
        scans[path.name] = body["id"]
    expected = cli_documents(paths, stack.env)
    for path in paths:
        scan = stack.wait_scan(scans[path.name], timeout=240)
        assert scan["status"] == "done", (scan, stack.logs())
        document = scan["result"]
        validate(document)
        source = document["source"]
        assert source["kind"] == "upload" and source["file_name"] == path.name and source["url"] is None
        assert expected[path.name]["status"] == "done"
        assert comparable(document) == comparable(expected[path.name]), path.name
    wait_for(lambda: not stored(stack.upload_dir), 10, what="the stored uploads to be removed")


def test_the_same_bytes_twice_reuse_the_verdict(server_stack):
    stack = server_stack
    data = (require_shared(VIDEOS_DIR) / "dfdc_abofeumbvv.mp4").read_bytes()
    first = upload(stack, data, name="first.mp4")
    assert first.status_code in (200, 202), first.text
    done = stack.wait_scan(first.json()["id"], timeout=240)
    assert done["status"] == "done", stack.logs()
    queued_before = stack.redis.client().llen("mesoscan.scans")

    again = upload(stack, data, name="again.mp4")
    assert again.status_code == 200, again.text
    body = again.json()
    assert body["cached"] is True and body["status"] == "done" and body["id"] != done["id"]
    assert body["reused_from"] in (done["id"], done["reused_from"])
    assert body["result"]["verdict"] == done["result"]["verdict"]
    assert body["result"]["source"]["file_name"] == "again.mp4"  # its own name, not the earlier upload's
    validate(body["result"])
    assert stack.redis.client().llen("mesoscan.scans") == queued_before  # nothing new to scan
    assert stored(stack.upload_dir) == []
    assert stack.session().get(body["status_url"], timeout=5).json()["result"] == body["result"]


def test_files_that_are_not_videos_are_refused_at_once(server_stack, media_assets):
    stack = server_stack
    for name, code in (("text.mp4", "not_a_video"), ("truncated.mp4", "corrupt_video"), ("audio.mp4", "not_a_video")):
        r = upload(stack, media_assets.files[name].read_bytes(), name=name)
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert set(r.json()) == {"error"} and error["code"] == code and error["message"]
        assert ".part-" not in error["message"]  # the stored name is never shown
        assert stored(stack.upload_dir) == []


def test_a_video_over_the_duration_limit_is_refused(limits):
    clip = require_shared(VIDEOS_DIR) / "ffpp_004.mp4"  # 0.2 MB: within the size limit, over the 1 s one
    r = upload(limits["base"], clip.read_bytes(), key=limits["key"])
    assert r.status_code == 422 and r.json()["error"]["code"] == "too_long", r.text
    assert stored(limits["dir"]) == []


def test_the_gateway_rejects_requests_without_a_file(server_stack):
    http = server_stack.session()
    r = http.post(f"{server_stack.base_url}/api/v1/scans", files={"model": (None, "meso4_dfdc")}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
    r = http.post(
        f"{server_stack.base_url}/api/v1/scans",
        data={"model": "no-such-model"},
        files={"file": ("a.mp4", b"x" * 1000)},
        timeout=10,
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_model"
    r = requests.post(f"{server_stack.base_url}/api/v1/scans", files={"file": ("a.mp4", b"x" * 1000)}, timeout=10)
    assert r.status_code == 401
    assert stored(server_stack.upload_dir) == []


# --- limits and misbehaving clients (raw sockets) ------------------------------------------------------------------


def multipart_head(boundary: str, file_name: bytes = b"clip.mp4") -> bytes:
    return (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="'.encode()
        + file_name
        + b'"\r\nContent-Type: video/mp4\r\n\r\n'
    )


def raw_request(base: str, key: str, headers: dict[str, str]) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    lines = [
        "POST /api/v1/scans HTTP/1.1",
        f"Host: {host}:{port}",
        f"X-API-Key: {key}",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    length = next(
        (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), None
    )
    while length is not None and len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, json.loads(body or b"{}")


def test_a_declared_size_over_the_limit_is_refused_before_any_byte(limits):
    boundary = secrets.token_hex(8)
    sock = raw_request(
        limits["base"],
        limits["key"],
        {"Content-Type": f"multipart/form-data; boundary={boundary}", "Content-Length": str(5 * LIMIT_MB * 1_000_000)},
    )
    try:
        status, body = read_response(sock)  # not one byte of the body was sent
    finally:
        sock.close()
    assert status == 413 and body["error"]["code"] == "too_large", body
    assert stored(limits["dir"]) == []


def test_a_stream_is_refused_the_moment_it_passes_the_limit(limits):
    """Chunked, so the gateway cannot know the size up front: it must count while reading, keep the partial file
    on disk (not in memory) until then, answer 413 once the limit is passed, and leave nothing behind."""
    boundary = secrets.token_hex(8)
    sock = raw_request(
        limits["base"],
        limits["key"],
        {"Content-Type": f"multipart/form-data; boundary={boundary}", "Transfer-Encoding": "chunked"},
    )
    block = os.urandom(64 * 1024)

    def chunk(data: bytes) -> bytes:
        return f"{len(data):x}\r\n".encode() + data + b"\r\n"

    try:
        sock.sendall(chunk(multipart_head(boundary)))
        sent = 0
        while sent < LIMIT_MB * 1_000_000 // 2:
            sock.sendall(chunk(block))
            sent += len(block)
        parts = wait_for(
            lambda: [n for n in stored(limits["dir"]) if n.startswith(".part-")], 10, what="the partial upload on disk"
        )
        assert len(parts) == 1
        while sent <= LIMIT_MB * 1_000_000 + 64 * 1024:
            sock.sendall(chunk(block))
            sent += len(block)
        status, body = read_response(sock)  # the client still has an endless body to send: no more is needed
    finally:
        sock.close()
    assert status == 413 and body["error"]["code"] == "too_large", body
    wait_for(lambda: stored(limits["dir"]) == [], 10, what="the partial upload to be removed")


@pytest.mark.parametrize("chunked", [False, True])
def test_a_client_that_hangs_up_mid_upload_leaves_nothing(limits, chunked):
    boundary = secrets.token_hex(8)
    head = multipart_head(boundary)
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    headers.update({"Transfer-Encoding": "chunked"} if chunked else {"Content-Length": str(len(head) + 900_000)})
    sock = raw_request(limits["base"], limits["key"], headers)
    data = head + os.urandom(300_000)
    sock.sendall(f"{len(data):x}\r\n".encode() + data + b"\r\n" if chunked else data)
    wait_for(lambda: any(n.startswith(".part-") for n in stored(limits["dir"])), 10, what="the partial upload")
    sock.close()
    wait_for(lambda: stored(limits["dir"]) == [], 10, what="the partial upload to be removed")
    assert limits["gateway"].alive
    assert requests.get(f"{limits['base']}/healthz", timeout=5).status_code == 200


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory) -> bytes:
    """Half a second of video: under the `limits` gateway's 1 s and 1 MB, so it is accepted and stays stored."""
    path = tmp_path_factory.mktemp("short") / "short.mp4"
    subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc=duration=0.5:size=160x120:rate=10",
            "-pix_fmt",
            "yuv420p",
            "-c:v",
            "libx264",
            str(path),
        ],
        check=True,
    )
    return path.read_bytes()


def test_path_tricks_in_the_file_name_change_nothing_on_disk(limits, short_clip):
    from server.db import session_scope
    from server.models import Scan

    directory = limits["dir"]
    around = {p: sorted(x.name for x in p.iterdir()) for p in (directory.parent, directory.parent.parent)}
    names = [
        b"../../x.mp4",
        b"../" * 40 + b"tmp/evil.mp4",
        b"/etc/passwd",
        b"..\\..\\win.ini",
        b"a\x00b.mp4",
        b"nul\x00",
        b"long" + b"a" * 5000 + b".mp4",
        b".part-abc",
        "vid\u00e9o \u2014 caf\u00e9.mp4".encode(),
    ]
    ids = {}
    for raw in names:
        boundary = secrets.token_hex(8)
        body = multipart_head(boundary, raw) + short_clip + f"\r\n--{boundary}--\r\n".encode()
        sock = raw_request(
            limits["base"],
            limits["key"],
            {"Content-Type": f"multipart/form-data; boundary={boundary}", "Content-Length": str(len(body))},
        )
        try:
            sock.sendall(body)
            status, answer = read_response(sock)
        finally:
            sock.close()
        assert status == 202, (raw, answer)
        ids[answer["id"]] = (raw, answer["upload"]["file_name"])
    assert stored(directory) == sorted(ids)  # each file is named by its scan id, nothing else
    for scan_id in ids:
        assert (directory / scan_id).read_bytes() == short_clip
    assert {p: sorted(x.name for x in p.iterdir()) for p in around} == around
    assert not Path("/tmp/evil.mp4").exists()
    shown = {raw: name for raw, name in ids.values()}
    assert shown[b"../../x.mp4"] == "../../x.mp4" and shown[b"/etc/passwd"] == "/etc/passwd"  # kept as text
    assert shown[b"a\x00b.mp4"] == "a\ufffdb.mp4" and shown[b"nul\x00"] == "nul\ufffd"
    assert shown[b"long" + b"a" * 5000 + b".mp4"] == ("long" + "a" * 5000)[:255]
    assert shown["vid\u00e9o \u2014 caf\u00e9.mp4".encode()] == "vid\u00e9o \u2014 caf\u00e9.mp4"
    with session_scope(limits["db"]) as session:
        rows = {s.id: s.upload_name for s in session.query(Scan).filter(Scan.id.in_(list(ids)))}
    assert rows == {scan_id: name for scan_id, (_raw, name) in ids.items()}
    for scan_id in ids:  # the gateway itself never removes a queued scan's file; the test does
        (directory / scan_id).unlink()


# --- the daily byte budget and the rate limit (in process, on the real PostgreSQL and Redis) ------------------------


def test_uploads_count_their_bytes_against_a_daily_budget_per_key(make_app, pg_url, tmp_path, stack_redis):
    import io

    from server.db import session_scope
    from server.keys import create_key
    from server.models import utcnow

    with session_scope(pg_url) as session:
        a, b = create_key(session, "budget a"), create_key(session, "budget b")
    first, second = a.key, b.key
    clip = (require_shared(VIDEOS_DIR) / "ffpp_004.mp4").read_bytes()  # 0.18 MB
    app = make_app(upload_daily_mb=0.5, upload_dir=tmp_path, cache_ttl_s=0, queue="mesoscan.budget-tests")
    # An earlier database's keys had these ids too, and used up their budgets: a new key starts with its own.
    storage = app.extensions["mesoscan_limiter"].storage
    for key_id in (a.id, b.id):
        storage.incr(f"mesoscan/upload-bytes/key:{key_id}/{utcnow().date().isoformat()}", 600, 10**9)
    client = app.test_client()

    def send(key: str, data: bytes = clip):
        return client.post(
            "/api/v1/scans",
            headers={"X-API-Key": key},
            content_type="multipart/form-data",
            data={"file": (io.BytesIO(data), "clip.mp4")},
        )

    try:
        first_reply = send(first)
        assert first_reply.status_code == 202, first_reply.get_json()
        assert send(first).status_code == 202  # 0.36 MB of 0.5
        refused = send(first)
        assert refused.status_code == 429, refused.get_json()
        assert refused.get_json()["error"]["code"] == "upload_budget_exceeded"
        assert 0 < int(refused.headers["Retry-After"]) <= 86400
        assert send(second).status_code == 202  # another key has its own budget
        # Bytes received count even when the file is refused afterwards.
        assert send(second, b"not a video " * 20_000).status_code == 422  # 0.24 MB
        assert send(second).status_code == 429
        stored_names = [p.name for p in tmp_path.iterdir()]
        assert len(stored_names) == 3 and not any(n.startswith(".part-") for n in stored_names)
    finally:
        stack_redis.client().delete("mesoscan.budget-tests")


def test_uploads_count_against_the_submission_rate_limit(make_app, pg_url, tmp_path, stack_redis):
    import io

    from server.db import session_scope
    from server.keys import create_key

    with session_scope(pg_url) as session:
        key = create_key(session, "upload rate").key
    app = make_app(rate_limit="2/minute", upload_dir=tmp_path, queue="mesoscan.budget-tests")
    client = app.test_client()
    clip = (require_shared(VIDEOS_DIR) / "ffpp_004.mp4").read_bytes()
    try:
        answers = [
            client.post(
                "/api/v1/scans",
                headers={"X-API-Key": key},
                content_type="multipart/form-data",
                data={"file": (io.BytesIO(clip), "clip.mp4")},
            ).status_code
            for _ in range(3)
        ]
        assert answers[0] == 202 and answers[1] in (200, 202) and answers[2] == 429
        assert (
            client.post(
                "/api/v1/scans", headers={"X-API-Key": key}, json={"url": "https://videos.example/x.mp4"}
            ).status_code
            == 429
        )  # one budget for both
    finally:
        stack_redis.client().delete("mesoscan.budget-tests")


def test_the_recovery_job_removes_what_crashes_left_behind(server_stack):
    """A worker that died after its scan ended leaves the stored file; a gateway that died mid-upload leaves a
    partial one: the workers' recovery round removes both (and files of scans that no longer exist), and keeps a
    partial upload that may still be arriving."""
    from server.db import session_scope
    from server.models import Scan

    stack = server_stack
    first = upload(stack, (require_shared(VIDEOS_DIR) / "ffpp_634.mp4").read_bytes(), name="ended.mp4")
    ended = stack.wait_scan(first.json()["id"], timeout=240)
    assert ended["status"] == "done"
    with session_scope(stack.database_url) as session:
        assert session.get(Scan, ended["id"]).status == "done"
    directory = stack.upload_dir
    leftovers = [directory / ended["id"], directory / secrets.token_urlsafe(16), directory / ".part-abandoned"]
    for path in leftovers:
        path.write_bytes(b"x" * 1000)
    hour_ago = time.time() - 2 * 3600
    os.utime(directory / ".part-abandoned", (hour_ago, hour_ago))
    arriving = directory / ".part-arriving"
    arriving.write_bytes(b"x" * 1000)
    try:
        wait_for(lambda: not any(p.exists() for p in leftovers), 20, what="the recovery job to sweep the uploads")
        assert arriving.exists()
    finally:
        arriving.unlink(missing_ok=True)
