"""`mesoscan batch`'s input and the errors found before any scan: formats, row numbers, bad rows, usage errors."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scanner.batch_input import InputError, Row, normalize_url, read_input, target_for
from scanner.config import ScannerSettings
from scanner.errors import ScanError
from scanner.netguard import AddressPolicy

MESOSCAN = str(Path(sys.executable).with_name("mesoscan"))


def test_text_list_skips_blanks_and_comments(tmp_path):
    path = tmp_path / "urls.txt"
    path.write_text("# a list\n\nhttps://example.org/a.mp4\n   \n  https://example.org/b.mp4  \n#x\n")
    batch = read_input(str(path))
    assert batch.format == "txt"
    assert [(r.number, r.url) for r in batch.rows] == [
        (3, "https://example.org/a.mp4"),
        (5, "https://example.org/b.mp4"),
    ]
    assert batch.columns == ["url"]


def test_csv_keeps_every_column_and_numbers_rows_as_a_spreadsheet(tmp_path):
    path = tmp_path / "sheet.csv"
    path.write_bytes('\ufeffid,URL,note\n1,https://e.org/a,"x, y"\n\n2,,ünï\n3,https://e.org/c\n'.encode())
    batch = read_input(str(path))
    assert batch.columns == ["id", "URL", "note"]
    assert [(r.number, r.url) for r in batch.rows] == [(2, "https://e.org/a"), (4, ""), (5, "https://e.org/c")]
    assert batch.rows[0].fields == {"id": "1", "URL": "https://e.org/a", "note": "x, y"}
    assert batch.rows[1].fields["note"] == "ünï"
    assert batch.rows[2].fields["note"] == ""  # a short row is padded, not shifted


def test_jsonl_keeps_keys_and_types_and_marks_bad_lines(tmp_path):
    path = tmp_path / "feed.jsonl"
    path.write_text('{"url": "https://e.org/a", "id": 7, "tags": ["x"]}\n\nnot json\n[1]\n{"id": 9}\n')
    batch = read_input(str(path))
    assert batch.columns == ["url", "id", "tags"]
    assert batch.rows[0].fields == {"url": "https://e.org/a", "id": 7, "tags": ["x"]}
    assert [r.number for r in batch.rows] == [1, 3, 4, 5]
    assert batch.rows[1].problem.startswith("not a JSON line")
    assert batch.rows[2].problem == "not a JSON object"
    assert batch.rows[3].url is None


def test_format_option_and_standard_input(tmp_path, monkeypatch):
    path = tmp_path / "list.data"
    path.write_text('{"url": "https://e.org/a"}\n')
    assert read_input(str(path)).format == "txt"  # unknown extension: a text list
    assert read_input(str(path), "jsonl").rows[0].url == "https://e.org/a"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b'\n{"url": "https://e.org/s", "k": 1}\n')))
    batch = read_input("-")
    assert batch.format == "jsonl" and batch.rows[0].fields["k"] == 1
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"https://e.org/t\n")))
    assert read_input("-").rows[0].url == "https://e.org/t"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "holds no rows"),
        (b"# only a comment\n\n", "holds no rows"),
        (b"\xff\xfeu\x00r\x00l\x00", "not UTF-8"),
    ],
)
def test_unusable_inputs(tmp_path, content, message):
    path = tmp_path / "in.txt"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        read_input(str(path))


def test_csv_without_url_column_and_missing_files(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text("link,note\nhttps://e.org/a,x\n")
    with pytest.raises(InputError, match="no `url` column"):
        read_input(str(path))
    with pytest.raises(InputError, match="cannot read"):
        read_input(str(tmp_path / "missing.txt"))
    with pytest.raises(InputError, match="is a directory"):
        read_input(str(tmp_path))


def _target(url, allow_local=True, number=4):
    policy = AddressPolicy.from_settings(ScannerSettings())
    return target_for(Row(number, {"url": url}, url), policy, allow_local)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("", "the url cell is empty"),
        ("   ", "the url cell is empty"),
        (None, "the url cell is empty"),
        (42, "not text"),
        ("file:///etc/passwd", "only http and https"),
        ("ftp://example.org/clip.mp4", "only http and https"),
        ("javascript:alert(1)", "only http and https"),
        ("not a url", "neither an http(s) URL nor an existing file"),
        ("https://exa mple.org/x", "spaces or control characters"),
        ("https:///nohost", "no host"),
        ("http://example.org:99999/x", "malformed URL"),
        ("https://e.org/" + "a" * 3000, "longer than"),
    ],
)
def test_bad_rows_are_invalid_urls_with_their_row_number(url, problem):
    with pytest.raises(ScanError) as caught:
        _target(url)
    assert caught.value.code == "invalid_url"
    assert caught.value.message.startswith("row 4: ")
    assert problem in caught.value.message


def test_literal_private_addresses_are_blocked_at_the_door():
    with pytest.raises(ScanError) as caught:
        _target("http://10.1.2.3/clip.mp4")
    assert caught.value.code == "blocked_address" and caught.value.message.startswith("row 4: ")


def test_local_files_in_process_only(tmp_path):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"x")
    target = _target(str(clip))
    assert (target.kind, target.value, target.key) == ("file", str(clip.resolve()), str(clip.resolve()))
    with pytest.raises(ScanError, match="never sent to a gateway"):
        target_for(Row(2, {}, str(clip)), None, allow_local=False)


def test_duplicates_share_a_key_and_the_gateway_uses_the_same_rules():
    from server import jobs

    same = [
        "https://Example.org/v?b=2&a=1",
        "HTTPS://example.org:443/v?a=1&b=2#t=10",
        "https://example.org./v?a=1&utm_source=x&b=2",
    ]
    assert {_target(u).key for u in same} == {"https://example.org/v?a=1&b=2"}
    assert jobs.normalize_url is normalize_url
    assert _target("https://example.org/v?a=2").key != _target("https://example.org/v?a=1").key


# --- errors of the whole command, before any scan (real processes) -------------------------------------------------


def batch(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([MESOSCAN, "batch", *args], capture_output=True, text=True, timeout=120, env=env, **kwargs)


def test_usage_errors_exit_2_before_any_scan(tmp_path):
    good = tmp_path / "urls.txt"
    good.write_text("not a url\n")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# nothing\n")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cases = [
        ([str(empty), "--out", str(tmp_path / "o1")], "holds no rows"),
        ([str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o2")], "cannot read"),
        ([str(good), "--out", str(blocker / "sub")], "cannot use"),
        ([str(good), "--out", str(tmp_path / "o3"), "--model", "no_such_model"], "unknown model"),
        (
            [str(good), "--out", str(tmp_path / "o4"), "--gateway", "http://127.0.0.1:9", "--frames", "8"],
            "apply to in-process scans",
        ),
        ([str(good), "--out", str(tmp_path / "o5"), "--concurrency", "0"], "--concurrency"),
    ]
    for args, message in cases:
        result = batch(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o3" / "results.jsonl").exists()


def test_a_batch_of_bad_rows_only_fails_each_row_and_starts_no_worker(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"url": "file:///etc/passwd", "id": 1}\n{"url": "", "id": 2}\nnope\n{"url": "ftp://x/y"}\n')
    out = tmp_path / "out"
    result = batch(str(rows), "--out", str(out))
    assert result.returncode == 1, result.stderr
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(e["row"], e["result"]["error"]["code"]) for e in lines] == [(n, "invalid_url") for n in (1, 2, 3, 4)]
    assert all(e["result"]["error"]["message"].startswith(f"row {e['row']}: ") for e in lines)
    assert "scanned 0 videos" in result.stdout and "invalid_url 4" in result.stdout
    assert (out / "results.csv").is_file() and (out / "report.html").is_file()
    # other settings in the same directory are refused, with a clear message
    refused = batch(str(rows), "--out", str(out), "--frames", "16")
    assert refused.returncode == 2 and "holds results made with other settings" in refused.stderr
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "results.jsonl").write_text("{}\n")
    assert batch(str(rows), "--out", str(foreign)).returncode == 2


def test_progress_bar_on_a_terminal(tmp_path):
    """On a terminal the batch draws one bar with done/failed/left; the summary still goes to stdout."""
    import fcntl
    import pty
    import struct
    import termios

    rows = tmp_path / "rows.txt"
    rows.write_text("not a url\nftp://x/y\n")
    leader, follower = pty.openpty()
    # A terminal has a size (a bare pty is 0×0, where tqdm draws nothing).
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "COLUMNS": "160"}
    process = subprocess.Popen(
        [MESOSCAN, "batch", str(rows), "--out", str(tmp_path / "out")], stdout=follower, stderr=follower, env=env
    )
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed
            break
        if not chunk:
            break
        output += chunk
    os.close(leader)
    assert process.wait(timeout=60) == 1
    text = output.decode(errors="replace")
    assert "done 0 failed 2 left 0" in text and "2/2" in text
    assert "2 rows: failed 2" in text


def test_compute_threads_are_shared_out_between_workers(tmp_path, monkeypatch):
    from scanner.batch import Batch, Options

    rows = tmp_path / "rows.txt"
    rows.write_text("not a url\n")
    monkeypatch.setenv("MESOSCAN_COMPUTE_THREADS", "5")
    batch = Batch(Options(str(rows), tmp_path / "out", frames=4))
    batch.prepare()
    env = batch._worker_env(2, str(tmp_path / "tmp"))
    assert (env["MESOSCAN_COMPUTE_THREADS"], env["MESOSCAN_FRAMES"], env["MESOSCAN_TEMP_DIR"]) == (
        "2",
        "4",
        str(tmp_path / "tmp"),
    )
    assert batch._worker_env(8, "t")["MESOSCAN_COMPUTE_THREADS"] == "1"  # never below one
    monkeypatch.delenv("MESOSCAN_COMPUTE_THREADS")
    batch = Batch(Options(str(rows), tmp_path / "out", frames=4))
    batch.prepare()
    assert batch._worker_env(1, "t")["MESOSCAN_COMPUTE_THREADS"] == str(len(os.sched_getaffinity(0)))
