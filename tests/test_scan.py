"""`mesoscan scan` end to end: real clips served on 127.0.0.1, fetched by yt-dlp, analysed, checked by the schema."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scanner.config import ScannerSettings
from scanner.pipeline import Scanner
from scanner.verdict import validate
from serving.config import ServingSettings
from serving.predictor import get_predictor
from tests.conftest import VIDEOS_DIR, require_shared

CLIP = "ffpp_634.mp4"


@pytest.fixture(scope="module")
def predictor():
    with get_predictor("meso4_df", ServingSettings()) as p:
        yield p


@pytest.fixture
def scanner_for(predictor, staging):
    def make(*servers, **overrides) -> Scanner:
        values = {
            "network_allowlist": [s.netloc for s in servers],
            "temp_dir": staging,
            "frames": 8,
            "socket_timeout_s": 3,
            "download_timeout_s": 30,
            **overrides,
        }
        return Scanner(ScannerSettings(**values), predictor=predictor)

    return make


def check_done(doc: dict, frames: int) -> None:
    validate(doc)
    assert doc["status"] == "done", doc["error"]
    assert doc["frames_sampled"] == frames
    assert len(doc["timeline"]) == frames
    assert doc["faces_analyzed"] >= frames - 1  # every shared clip shows a face in (nearly) every frame
    assert doc["people"]
    assert doc["verdict"]["label"] in {"fake", "real", "uncertain"}
    assert doc["verdict"]["fake_probability"] == max(p["fake_probability"] for p in doc["people"] if p["faces"] > 1)
    assert doc["model"] == {"name": "meso4_df", "version": 1, "backend": "embedded"}
    assert set(doc["timings_ms"]) == {"fetch", "decode", "detect", "classify", "total"}


@pytest.mark.parametrize(
    "path", [f"/files/{CLIP}", f"/page/video/{CLIP}", f"/page/og/{CLIP}", f"/chain/3/{CLIP}", "/hls/index.m3u8"]
)
def test_scan_each_kind_of_source(path, server, scanner_for, staging):
    doc = scanner_for(server).scan_url(server.url(path))
    check_done(doc, 8)
    assert doc["source"]["url"] == server.url(path)
    if path != "/hls/index.m3u8":  # HLS is remuxed into mp4: its sha256 is of that file
        original = require_shared(VIDEOS_DIR / CLIP).read_bytes()
        assert doc["source"]["sha256"] == hashlib.sha256(original).hexdigest()
        assert (doc["source"]["width"], doc["source"]["height"]) == (1280, 720)
        assert doc["source"]["duration_s"] == pytest.approx(13.52, abs=0.05)
    assert list(staging.iterdir()) == []


def test_same_bytes_same_verdict(server, scanner_for):
    scanner = scanner_for(server)
    direct = scanner.scan_url(server.url(f"/files/{CLIP}"))
    page = scanner.scan_url(server.url(f"/page/video/{CLIP}"))
    assert direct["verdict"] == page["verdict"]
    assert direct["people"] == page["people"]


BAD = [
    ("/nope.mp4", "download_failed"),
    ("/page/novideo", "unsupported_url"),
    ("/files/text.mp4", "not_a_video"),
    ("/files/truncated.mp4", "corrupt_video"),
    ("/files/audio.mp4", "not_a_video"),
    ("/stall/ffpp_634.mp4?after=65536", "timeout"),
]


@pytest.mark.parametrize(("path", "code"), BAD)
def test_bad_inputs_fail_with_their_code_and_leave_nothing(path, code, server, scanner_for, staging):
    doc = scanner_for(server).scan_url(server.url(path))
    validate(doc)
    assert doc["status"] == "failed"
    assert doc["error"]["code"] == code, doc["error"]
    assert doc["verdict"] is None
    assert list(staging.iterdir()) == []


def test_limits(server, scanner_for, staging):
    too_large = scanner_for(server, max_filesize_mb=1).scan_url(server.url("/files/dfdc_lynaeydofd.mp4"))
    assert too_large["error"]["code"] == "too_large"
    too_long = scanner_for(server, max_duration_s=5).scan_url(server.url(f"/files/{CLIP}"))
    assert too_long["error"]["code"] == "too_long"
    assert list(staging.iterdir()) == []


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://127.0.0.1/clip.mp4",
        "http://127.0.0.1:{port}/files/c",
        "http://[::1]:{port}/files/c",
        "http://[::ffff:127.0.0.1]:{port}/files/c",
    ],
)
def test_blocked_urls(url, server, scanner_for):
    doc = scanner_for().scan_url(url.format(port=server.port))
    validate(doc)
    assert doc["error"]["code"] in {"invalid_url", "blocked_address"}
    assert doc["error"]["code"] == ("invalid_url" if url.startswith(("file:", "ftp:")) else "blocked_address")
    assert server.hits == {} or sum(server.hits.values()) == 0


def test_redirect_to_loopback_is_blocked(server, media_server_factory, scanner_for):
    target = media_server_factory()
    doc = scanner_for(server).scan_url(server.url(f"/redirect?to={target.url('/files/' + CLIP)}"))
    assert doc["error"]["code"] == "blocked_address"
    assert sum(target.hits.values()) == 0


@pytest.fixture(scope="module")
def two_people(tmp_path_factory) -> Path:
    """Two different presenters side by side for 4 s (two shared clips stacked horizontally)."""
    out = tmp_path_factory.mktemp("two") / "two_people.mp4"
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-i",
            str(require_shared(VIDEOS_DIR / "ffpp_004.mp4")),
            "-i",
            str(require_shared(VIDEOS_DIR / "ffpp_634.mp4")),
            "-t",
            "4",
            "-filter_complex",
            "[0:v]scale=640:360[a];[1:v]scale=640:360[b];[a][b]hstack",
            "-an",
            str(out),
        ],
        check=True,
    )
    return out


def test_two_people_get_two_scores(two_people, scanner_for):
    doc = scanner_for().scan_file(two_people)
    check_done(doc, 8)
    assert [p["faces"] for p in doc["people"]] == [8, 8]
    assert doc["faces_analyzed"] == 16
    assert doc["source"]["url"] is None


def test_no_face_and_faces_too_small(tmp_path, scanner_for):
    blank = tmp_path / "blank.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=d=2:s=320x240", str(blank)], check=True)
    doc = scanner_for().scan_file(blank)
    validate(doc)
    assert doc["verdict"]["label"] == "no_face"
    assert doc["verdict"]["fake_probability"] is None
    tiny = tmp_path / "tiny.mp4"
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-i",
            str(require_shared(VIDEOS_DIR / CLIP)),
            "-t",
            "3",
            "-vf",
            "scale=320:180",
            "-an",
            str(tiny),
        ],
        check=True,
    )
    doc = scanner_for(min_face_px=60).scan_file(tiny)
    assert doc["verdict"]["label"] == "no_face"
    assert doc["faces_skipped"] >= 6
    assert doc["faces_analyzed"] == 0


def test_keyframe_mode(scanner_for):
    doc = scanner_for(keyframes=True, frames=32).scan_file(require_shared(VIDEOS_DIR / "ffpp_519.mp4"))
    validate(doc)
    assert doc["keyframes_only"] is True
    assert 1 <= doc["frames_sampled"] <= 8  # the clip has only a few key frames


def mesoscan(*args, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "serving", *args], capture_output=True, text=True, timeout=300, **kwargs
    )


def test_cli_scan_file_json_and_summary(tmp_path):
    out = tmp_path / "verdict.json"
    clip = require_shared(VIDEOS_DIR / "ffpp_519_515_DF.mp4")
    result = mesoscan("scan", str(clip), "--frames", "8", "--json", "--out", str(out))
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    validate(doc)
    assert json.loads(out.read_text()) == doc
    human = mesoscan("scan", str(clip), "--frames", "8", "--model", "mesoinception4_df")
    assert human.returncode == 0, human.stderr
    assert "model: mesoinception4_df v1" in human.stdout
    assert "person 0:" in human.stdout
    assert "timeline: " in human.stdout
    assert "took " in human.stdout


def test_cli_failed_scan_exits_non_zero(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n")
    result = mesoscan("scan", str(text), "--json")
    assert result.returncode == 1
    assert json.loads(result.stdout)["error"]["code"] == "not_a_video"
    assert "error [not_a_video]" in result.stderr
    missing = mesoscan("scan", str(tmp_path / "missing.mp4"))
    assert missing.returncode == 1
    assert "error [invalid_url]" in missing.stderr


def test_ctrl_c_during_download_leaves_no_temp_files(server, tmp_path):
    staging = tmp_path / "staging"
    staging.mkdir()
    env = {**os.environ, "MESOSCAN_TEMP_DIR": str(staging), "MESOSCAN_NETWORK_ALLOWLIST": json.dumps([server.netloc])}
    process = subprocess.Popen(
        [sys.executable, "-m", "serving", "scan", server.url("/drip/dfdc_lynaeydofd.mp4?chunk=65536&every=0.2")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not any(staging.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert any(staging.iterdir()), "the download never started"
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert list(staging.iterdir()) == []


def test_compute_threads_caps_tensorflow_blas_and_opencv(tmp_path):
    """MESOSCAN_COMPUTE_THREADS=1 (the worker setting): one thread each for TensorFlow's pools (imported here, so capped
    although Meso-4 runs in numpy), numpy's BLAS and OpenCV."""
    code = (
        "import cv2, tensorflow as tf\n"
        "from threadpoolctl import threadpool_info\n"
        "from scanner.config import ScannerSettings\n"
        "from scanner.pipeline import Scanner\n"
        "from serving.config import ServingSettings\n"
        "scanner = Scanner(ScannerSettings(), serving_settings=ServingSettings())\n"
        f"doc = scanner.scan_file({str(require_shared(VIDEOS_DIR / CLIP))!r})\n"
        "assert doc['status'] == 'done', doc['error']\n"
        "print(tf.config.threading.get_intra_op_parallelism_threads(),"
        " tf.config.threading.get_inter_op_parallelism_threads(), cv2.getNumThreads(),"
        " {p['num_threads'] for p in threadpool_info() if p['user_api'] == 'blas'})\n"
    )
    env = {**os.environ, "MESOSCAN_COMPUTE_THREADS": "1", "MESOSCAN_FRAMES": "4"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "1", "1", "{1}"]
