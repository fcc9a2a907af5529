"""`mesoscan batch` in-process, end to end: the shared clips served on 127.0.0.1 plus bad rows, real worker processes,
the output contract, resume after `kill -9`, two scans at once, SIGTERM, and report.html in real Chromium."""

from __future__ import annotations

import copy
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from scanner.batch_input import normalize_url
from scanner.verdict import validate
from tests.conftest import DEFAULT_MODEL
from tests.support.media_server import MediaServer

MESOSCAN = str(Path(sys.executable).with_name("mesoscan"))
FRAMES = "8"
OUR_COLUMNS = [
    "label",
    "fake_probability",
    "confidence",
    "people",
    "faces_analyzed",
    "duration_s",
    "error_code",
    "error_message",
    "model",
]


def batch_env(server: MediaServer, staging: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MESOSCAN_") or k in ("MESOSCAN_MODELS_DIR", "MESOSCAN_MODELS_MIRROR")
    }
    env.update(
        {
            "MESOSCAN_NETWORK_ALLOWLIST": json.dumps([server.netloc]),
            "MESOSCAN_TEMP_DIR": str(staging),
            "MESOSCAN_SOCKET_TIMEOUT_S": "30",
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
    )
    return env


def run_batch(args: list[str], env: dict[str, str], timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run([MESOSCAN, "batch", *args], capture_output=True, text=True, env=env, timeout=timeout)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def without_timings(entry: dict) -> dict:
    entry = copy.deepcopy(entry)
    entry["result"].pop("timings_ms")
    return entry


def worker_pids(parent_pid: int, direct: bool = False) -> list[int]:
    """Live `scanner.batch_pool` processes of the batch `parent_pid` (their second argument): its workers and any
    process they forked; `direct`: only the batch's own children."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            state, ppid = (proc / "stat").read_text().rsplit(")", 1)[1].split()[:2]
        except OSError:
            continue
        if direct and int(ppid) != parent_pid:
            continue
        if b"scanner.batch_pool" in argv and argv[-3:-2] == [str(parent_pid).encode()] and state != "Z":
            found.append(int(proc.name))
    return found


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(interval)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def clips_server(media_assets):
    with MediaServer(files=dict(media_assets.files), stall_s=60) as server:
        yield server


@dataclass
class Contract:
    input: Path
    out: Path
    rows: list[dict]
    """The input's rows as written (the CSV's cells)."""
    clips: list[str]
    result: subprocess.CompletedProcess
    env: dict[str, str]
    staging: Path
    hits: dict[str, int]
    """The media server's requests per path after the batch."""


BAD_ROWS = {
    "404": "/files/nope.mp4",
    "text": "/files/text.mp4",
    "503": "/status/503",
}


@pytest.fixture(scope="module")
def contract(clips_server, tmp_path_factory) -> Contract:
    """The shared clips plus bad rows, as a CSV with extra columns, scanned with two workers."""
    from tests.conftest import VIDEOS_DIR, require_shared

    root = tmp_path_factory.mktemp("batch")
    staging = root / "staging"
    staging.mkdir()
    clips = sorted(p.name for p in require_shared(VIDEOS_DIR).glob("*.mp4"))
    rows = [
        {"url": clips_server.url(f"/files/{name}"), "id": f"c{i}", "note": f"ünï «{name}», ok"}
        for i, name in enumerate(clips)
    ]
    first = clips_server.url(f"/files/{clips[0]}")
    rows += [
        {"url": clips_server.url(BAD_ROWS["404"]), "id": "b404", "note": "=1+1"},
        {"url": clips_server.url(BAD_ROWS["text"]), "id": "btext", "note": "a text file named .mp4"},
        {"url": clips_server.url(BAD_ROWS["503"]), "id": "b503", "note": "a server that is down: retried"},
        {"url": "file:///etc/passwd", "id": "bfile", "note": ""},
        {"url": "not a url at all", "id": "binvalid", "note": '"quoted", with comma'},
        {"url": "", "id": "bempty", "note": "empty cell"},
        {"url": first.replace("http://", "HTTP://") + "?utm_source=sheet#t=3", "id": "dup", "note": "duplicate"},
    ]
    path = root / "videos.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "url", "note"])
        writer.writeheader()
        writer.writerows(rows)
    env = batch_env(clips_server, staging)
    out = root / "out"
    result = run_batch([str(path), "--out", str(out), "--frames", FRAMES, "--concurrency", "2", "--retries", "1"], env)
    return Contract(path, out, rows, clips, result, env, staging, dict(clips_server.hits))


def test_outputs_follow_the_contract(contract):
    result = contract.result
    assert result.returncode == 1, result.stderr  # some rows failed
    assert list(contract.staging.iterdir()) == []  # temp files removed
    entries = read_jsonl(contract.out / "results.jsonl")
    assert len(entries) == len(contract.rows)
    assert [e["row"] for e in entries] == list(range(2, len(contract.rows) + 2))  # input order, spreadsheet rows
    for entry, row in zip(entries, contract.rows, strict=True):
        validate(entry["result"])
        assert entry["input"] == row  # the row's own fields, unchanged
        assert entry["result"]["status"] in ("done", "failed")
    by_id = {e["input"]["id"]: e for e in entries}
    for i in range(len(contract.clips)):
        entry = by_id[f"c{i}"]
        doc = entry["result"]
        assert doc["status"] == "done", doc["error"]
        assert entry["url"] == normalize_url(contract.rows[i]["url"])
        assert doc["source"]["url"] == contract.rows[i]["url"]
        assert doc["frames_sampled"] == int(FRAMES)
        assert doc["verdict"]["label"] in ("fake", "real", "uncertain")
        assert doc["model"]["name"] == DEFAULT_MODEL
        assert doc["top_faces"] and doc["top_faces"][0]["jpeg_base64"]  # face crops stay in the document
        assert entry["attempts"] == 1
    assert by_id["b404"]["result"]["error"]["code"] == "download_failed"
    assert by_id["btext"]["result"]["error"]["code"] == "not_a_video"
    busy = by_id["b503"]
    assert (busy["result"]["error"]["code"], busy["result"]["error"]["retryable"]) == ("download_failed", True)
    assert busy["attempts"] == 2  # one retry (--retries 1), after a backoff
    assert "retrying " + contract.rows[11]["url"] in result.stderr
    for key, number in (("bfile", 12 + 2), ("binvalid", 13 + 2), ("bempty", 14 + 2)):
        error = by_id[key]["result"]["error"]
        assert error["code"] == "invalid_url"
        assert error["message"].startswith(f"row {number}: "), error
        assert by_id[key]["url"] is None
    # the duplicate: scanned once (the server saw one download), reported for both rows
    assert by_id["dup"]["result"] == by_id["c0"]["result"]
    assert by_id["dup"]["url"] == by_id["c0"]["url"]
    assert contract.hits[f"/files/{contract.clips[0]}"] == contract.hits[f"/files/{contract.clips[1]}"] > 0
    assert "failures: " in result.stdout and "invalid_url 3" in result.stdout
    assert "2 workers" in result.stdout and "MiB per worker" in result.stdout


def test_csv_columns_come_back_unchanged(contract):
    raw = (contract.out / "results.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")  # UTF-8 with a byte-order mark: spreadsheets read it as UTF-8
    table = list(csv.reader(raw.decode("utf-8-sig").splitlines()))
    assert table[0] == ["id", "url", "note", *OUR_COLUMNS]  # no report_url in-process
    entries = read_jsonl(contract.out / "results.jsonl")
    assert len(table) - 1 == len(contract.rows)
    for cells, row, entry in zip(table[1:], contract.rows, entries, strict=True):
        assert cells[:3] == [row["id"], row["url"], row["note"]]
        ours = dict(zip(OUR_COLUMNS, cells[3:], strict=True))
        doc = entry["result"]
        if doc["status"] == "done":
            assert ours["label"] == doc["verdict"]["label"]
            assert float(ours["fake_probability"]) == doc["verdict"]["fake_probability"]
            assert int(ours["people"]) == len(doc["people"])
            assert ours["error_code"] == ""
            assert ours["model"] == f"{doc['model']['name']} v{doc['model']['version']}"
        else:
            assert ours["label"] == "failed"
            assert ours["error_code"] == doc["error"]["code"]
            assert ours["error_message"].lstrip("'") == doc["error"]["message"]


def test_rerun_resumes_retries_failed_only_when_asked_and_fail_on(contract, clips_server, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(contract.out, out)
    before = read_jsonl(out / "results.jsonl")
    hits = dict(clips_server.hits)
    again = run_batch([str(contract.input), "--out", str(out), "--frames", FRAMES, "--retries", "1"], contract.env)
    assert again.returncode == 1, again.stderr
    assert "scanned 0 videos" in again.stdout
    assert dict(clips_server.hits) == hits  # nothing downloaded again, not even the failed rows
    assert read_jsonl(out / "results.jsonl") == before
    # a retryable failure with fewer attempts than --retries allows is tried again; the others are not
    more = run_batch([str(contract.input), "--out", str(out), "--frames", FRAMES, "--retries", "2"], contract.env)
    assert more.returncode == 1, more.stderr
    assert "scanned 1 videos" in more.stdout
    assert clips_server.hits[BAD_ROWS["503"]] > hits[BAD_ROWS["503"]]
    assert clips_server.hits[BAD_ROWS["404"]] == hits[BAD_ROWS["404"]]
    assert [e["attempts"] for e in read_jsonl(out / "results.jsonl") if e["input"]["id"] == "b503"] == [3]
    hits = dict(clips_server.hits)

    labels = {e["result"]["verdict"]["label"] for e in before if e["result"]["status"] == "done"}
    for fail_on, matched in (("fake", {"fake"}), ("uncertain", {"fake", "uncertain"})):
        gated = run_batch(
            [str(contract.input), "--out", str(out), "--frames", FRAMES, "--fail-on", fail_on], contract.env
        )
        assert gated.returncode == (10 if labels & matched else 1), (fail_on, labels, gated.stderr)

    retried = run_batch(
        [
            str(contract.input),
            "--out",
            str(out),
            "--frames",
            FRAMES,
            "--retry-failed",
            "--concurrency",
            "1",
            "--retries",
            "0",
        ],
        contract.env,
    )
    assert retried.returncode == 1, retried.stderr
    assert "scanned 3 videos" in retried.stdout  # the 404, the text file and the 503; invalid rows are no videos
    assert clips_server.hits[BAD_ROWS["404"]] > hits[BAD_ROWS["404"]]
    assert all(clips_server.hits[f"/files/{name}"] == hits[f"/files/{name}"] for name in contract.clips)
    after = read_jsonl(out / "results.jsonl")
    for entry in after:  # rescanned and kept documents alike
        validate(entry["result"])
    assert [e["attempts"] for e in after if e["input"]["id"] == "b404"] == [2]
    assert [without_timings(e) for e in after if e["result"]["status"] == "done"] == [
        without_timings(e) for e in before if e["result"]["status"] == "done"
    ]


def test_resume_after_kill_9_equals_an_uninterrupted_run(server, tmp_path):
    clips = ["ffpp_004.mp4", "ffpp_634.mp4", "ffpp_519.mp4", "ffpp_004_982_NT.mp4", "ffpp_634_660_FS.mp4"]
    listing = tmp_path / "urls.txt"
    listing.write_text("# five clips\n" + "".join(server.url(f"/files/{c}") + "\n" for c in clips))
    staging = tmp_path / "staging"
    staging.mkdir()
    env = batch_env(server, staging)
    out = tmp_path / "out"
    args = [str(listing), "--out", str(out), "--frames", FRAMES, "--concurrency", "1"]
    process = subprocess.Popen(
        [MESOSCAN, "batch", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    journal = out / "results.jsonl"

    def journaled() -> list[dict] | None:
        if process.poll() is not None:
            pytest.fail(f"the batch ended ({process.returncode}) before it was killed")
        lines = journal.read_text().splitlines() if journal.exists() else []
        return [json.loads(line) for line in lines] if len(lines) >= 2 else None

    finished = wait_until(journaled, 300, "two journaled items", interval=0.02)
    process.kill()  # SIGKILL: no handler runs in the batch
    process.wait()
    finished = [json.loads(line) for line in journal.read_text().splitlines()]  # complete lines only
    assert 2 <= len(finished) < len(clips)
    wait_until(lambda: not worker_pids(process.pid), 30, "the orphaned workers to stop")
    wait_until(lambda: list(staging.iterdir()) == [], 30, "the temp files to go")
    done_paths = {"/" + e["url"].split("/", 3)[3] for e in finished}
    hits = {path: server.hits[path] for path in done_paths}

    resumed = run_batch(args, env)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(finished)} rows already have a result" in resumed.stderr
    assert {path: server.hits[path] for path in done_paths} == hits  # no finished item downloaded twice

    fresh = tmp_path / "fresh"
    uninterrupted = run_batch([str(listing), "--out", str(fresh), "--frames", FRAMES, "--concurrency", "1"], env)
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    a, b = read_jsonl(journal), read_jsonl(fresh / "results.jsonl")
    assert [e["row"] for e in a] == [2, 3, 4, 5, 6]
    for entry in a:
        validate(entry["result"])
    assert [without_timings(e) for e in a] == [without_timings(e) for e in b]
    assert list(staging.iterdir()) == []


def test_two_scans_run_at_once_and_sigterm_stops_cleanly(server, tmp_path):
    """Two downloads that the server holds open: with --concurrency 2 it sees both at the same time."""
    stalls = [f"/stall/{name}" for name in ("ffpp_004.mp4", "ffpp_634.mp4")]
    listing = tmp_path / "urls.txt"
    listing.write_text("".join(server.url(path) + "?after=65536\n" for path in stalls))
    staging = tmp_path / "staging"
    staging.mkdir()
    env = {**batch_env(server, staging), "MESOSCAN_DOWNLOAD_TIMEOUT_S": "120"}
    server.stall_s = 120
    out = tmp_path / "out"
    process = subprocess.Popen(
        [
            MESOSCAN,
            "batch",
            str(listing),
            "--out",
            str(out),
            "--frames",
            FRAMES,
            "--concurrency",
            "2",
            "--retries",
            "0",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def both_open() -> bool:
            answered = {path for path, _ in server.responses}
            return all(server.hits[p] >= 1 and p not in answered for p in stalls)

        wait_until(both_open, 240, "both downloads to be open at once")
        assert any(staging.iterdir())  # the downloads are staged
        assert len(worker_pids(process.pid, direct=True)) == 2
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143, stderr
    assert "run the same command again to resume" in stderr
    assert list(staging.iterdir()) == []
    assert not worker_pids(process.pid)
    journal = out / "results.jsonl"
    assert not journal.exists() or all(json.loads(line) for line in journal.read_text().splitlines())


# --- report.html in real Chromium ----------------------------------------------------------------------------------


def visible_rows(page) -> list[dict]:
    return page.eval_on_selector_all(
        "#results tbody tr:not([hidden])",
        "rows => rows.map(r => ({row: +r.dataset.row, label: r.dataset.label, prob: +r.dataset.prob,"
        " title: r.dataset.title}))",
    )


def test_report_opens_offline_sorts_and_filters(contract, guarded_page, tmp_path):
    page = guarded_page
    report = contract.out / "report.html"
    page.goto(report.as_uri())
    csp = page.get_attribute("meta[http-equiv=Content-Security-Policy]", "content")
    assert csp.startswith("default-src 'none'; img-src data:; style-src 'sha256-") and "unsafe" not in csp
    rows = visible_rows(page)
    assert [r["row"] for r in rows] == list(range(2, len(contract.rows) + 2))
    entries = {e["row"]: e for e in read_jsonl(contract.out / "results.jsonl")}
    for r in rows:
        doc = entries[r["row"]]["result"]
        assert r["label"] == (doc["verdict"]["label"] if doc["status"] == "done" else "failed")
    counts = page.inner_text("#counts")
    assert f"{sum(r['label'] == 'failed' for r in rows)} failed" in counts

    page.click("button[data-sort=prob]")
    probs = [r["prob"] for r in visible_rows(page)]
    assert probs == sorted(probs) and len(set(probs)) > 2
    page.click("button[data-sort=prob]")
    assert [r["prob"] for r in visible_rows(page)] == sorted(probs, reverse=True)
    assert page.get_attribute("th:has(button[data-sort=prob])", "aria-sort") == "descending"
    page.click("button[data-sort=title]")
    titles = [r["title"].lower() for r in visible_rows(page)]
    assert titles == sorted(titles)

    page.select_option("#filter", "failed")
    shown = visible_rows(page)
    assert shown and {r["label"] for r in shown} == {"failed"}
    assert page.locator("#failed li").count() == len(shown)
    assert "The video could not be downloaded." in page.inner_text("#failed")
    page.select_option("#filter", "")
    assert len(visible_rows(page)) == len(contract.rows)

    done = [e for e in entries.values() if e["result"]["status"] == "done"]
    assert page.locator("td.thumb img[loading=lazy]").count() == len(done)
    assert page.locator("svg.spark").count() == len(done)
    assert page.locator("script[src], link, iframe, [style]").count() == 0
    assert all(url == report.as_uri() or url.startswith("data:") for url in page.network_log), page.network_log
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)


def test_report_of_1000_videos_stays_small_and_escapes_what_videos_say(contract, guarded_page, tmp_path):
    from scanner.batch_report import write_html

    entries = read_jsonl(contract.out / "results.jsonl")
    hostile = '<img src=x onerror="document.title=\'owned\'"><script>document.title="owned"</script>'
    many = []
    for i in range(1000):
        entry = copy.deepcopy(entries[i % len(entries)])
        entry["row"] = i + 2
        if entry["result"]["status"] == "done":
            entry["result"]["source"]["title"] = f"{hostile} #{i}"
        many.append(entry)
    report = tmp_path / "report.html"
    write_html(report, many, {"model": "m v1", "gateway": None, "frames": 8, "keyframes": False, "finished_at": "now"})
    assert report.stat().st_size < 6_000_000  # small thumbnails: a few KB a video
    page = guarded_page
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(report.as_uri())
    assert page.title().startswith("MesoScan batch report")  # no injected script ran
    assert page.locator("#results tbody tr").count() == 1000
    assert page.locator("#results tbody img").count() == sum(1 for e in many if e["result"]["top_faces"])
    assert page.locator("script").count() == 1
    assert hostile in page.locator("#results tbody td.title .t").first.inner_text()
    page.click("button[data-sort=prob]")
    page.click("button[data-sort=prob]")
    top = visible_rows(page)[0]
    assert top["prob"] == max(
        e["result"]["verdict"]["fake_probability"] for e in many if e["result"]["status"] == "done"
    )
    assert not dialogs
