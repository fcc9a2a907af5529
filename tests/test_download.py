"""Fetching through yt-dlp from real HTTP servers on loopback: good sources, bad inputs, the SSRF boundary, cleanup."""

from __future__ import annotations

import _thread
import hashlib
import socket
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

from scanner.config import ScannerSettings
from scanner.download import DownloadedVideo, fetch_video, open_local_video
from scanner.errors import ScanError
from tests.conftest import VIDEOS_DIR

CLIP = "ffpp_004.mp4"  # 12.36 s, 1280x720, 25 fps, 181 kB


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def settings_for(staging):
    """Settings that reach exactly the given servers (host:port allowlist), with short timeouts."""

    def make(*servers, **overrides) -> ScannerSettings:
        values = {
            "network_allowlist": [server.netloc for server in servers],
            "temp_dir": staging,
            "socket_timeout_s": 2,
            "download_timeout_s": 30,
        }
        values.update(overrides)
        return ScannerSettings(**values)

    return make


def assert_clean(staging: Path) -> None:
    assert staging.is_dir()
    assert list(staging.iterdir()) == [], "temp files were left behind"


def fetch_error(url: str, settings: ScannerSettings) -> ScanError:
    with pytest.raises(ScanError) as info, fetch_video(url, settings):
        pytest.fail("the fetch should have failed")
    return info.value


# Good sources -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "title"),
    [
        (f"/files/{CLIP}", "ffpp_004"),
        (f"/page/video/{CLIP}", "Clip ffpp_004.mp4"),
        (f"/page/og/{CLIP}", "OG clip ffpp_004.mp4"),
        (f"/chain/3/{CLIP}", "ffpp_004"),
        ("/files/clip.mov", "clip"),
    ],
)
def test_fetches_direct_files_and_pages(server, settings_for, staging, path, title):
    stages: list[tuple[str, float | None]] = []
    url = server.url(path)
    with fetch_video(url, settings_for(server), progress=lambda s, f: stages.append((s, f))) as video:
        assert isinstance(video, DownloadedVideo)
        assert video.path.is_file()
        assert video.path.parent.parent == staging
        original = server.files[Path(urllib.parse.urlsplit(server.url(path)).path).name]
        assert video.sha256 == sha256(original) == sha256(video.path)
        assert video.filesize == original.stat().st_size
        assert video.title is not None and video.title.startswith(title)
        assert (video.width, video.height) == (1280, 720)
        assert video.duration_s == pytest.approx(12.36, abs=0.05)
        assert video.fps == pytest.approx(25)
        source = video.source
        assert source == {
            "url": url,
            "title": video.title,
            "duration_s": video.duration_s,
            "width": 1280,
            "height": 720,
            "fps": video.fps,
            "sha256": video.sha256,
        }
    assert_clean(staging)
    assert stages[0] == ("resolving", 0.0)
    assert stages[-1] == ("done", 1.0)
    fractions = [f for s, f in stages if s == "downloading" and f is not None]
    assert fractions and all(0 <= f <= 1 for f in fractions)
    assert fractions == sorted(fractions)


def test_fetches_webm(server, settings_for, staging):
    with fetch_video(server.url("/files/clip.webm"), settings_for(server)) as video:
        assert video.sha256 == sha256(server.files["clip.webm"])
        assert video.info.codec == "vp8"
        assert "webm" in video.info.container
        assert (video.width, video.height) == (320, 180)
        assert video.duration_s == pytest.approx(3, abs=0.1)
    assert_clean(staging)


def test_fetches_hls_with_the_native_downloader(server, settings_for, staging):
    segments = sorted(p.name for p in server.hls_dir.glob("*.ts"))
    assert len(segments) >= 3
    with fetch_video(server.url("/hls/index.m3u8"), settings_for(server)) as video:
        assert (video.width, video.height) == (640, 360)
        assert video.duration_s == pytest.approx(12.36, abs=0.2)
        assert video.info.container.startswith("mov,mp4")  # remuxed from MPEG-TS, locally
        assert video.info.has_keyframe_index
        assert video.info.frame_count == pytest.approx(309, abs=2)
        assert video.sha256 == sha256(video.path)
    for segment in segments:
        assert server.hits[f"/hls/{segment}"] == 1
    assert_clean(staging)


@pytest.mark.parametrize(("max_height", "chosen"), [(720, 720), (1080, 1080), (480, 360), (144, 360)])
def test_hls_master_playlist_rendition_choice(server, settings_for, staging, max_height, chosen):
    """At most max_height tall, the tallest such; none small enough: the smallest."""
    with fetch_video(server.url("/hls/master.m3u8"), settings_for(server, max_height=max_height)) as video:
        assert video.duration_s == pytest.approx(12.36, abs=0.2)
    fetched = {int(path.split("/")[3]) for path in server.hits if path.startswith("/hls/variant/") and ".ts" in path}
    assert fetched == {chosen}
    assert_clean(staging)


def test_allow_private_networks_reaches_loopback(server, staging):
    settings = ScannerSettings(allow_private_networks=True, temp_dir=staging, socket_timeout_s=2)
    with fetch_video(server.url(f"/files/{CLIP}"), settings) as video:
        assert video.sha256 == sha256(server.files[CLIP])
    assert_clean(staging)


def test_temp_dir_goes_when_the_caller_fails(server, settings_for, staging):
    def scan_and_fail() -> None:
        with fetch_video(server.url(f"/files/{CLIP}"), settings_for(server)) as video:
            assert video.path.is_file()
            assert len(list(staging.iterdir())) == 1
            raise RuntimeError("the caller failed")

    with pytest.raises(RuntimeError, match="caller"):
        scan_and_fail()
    assert_clean(staging)


def test_progress_callback_can_cancel(server, settings_for, staging):
    class CancelledError(Exception):
        pass

    def progress(stage: str, fraction: float | None) -> None:
        if stage == "downloading" and fraction:
            raise CancelledError

    with pytest.raises(CancelledError), fetch_video(server.url("/files/ffpp_634.mp4"), settings_for(server), progress):
        pytest.fail("the fetch should have been cancelled")
    assert_clean(staging)


# Bad inputs: each with its code, nothing left behind ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "code", "retryable", "overrides"),
    [
        ("/nope.mp4", "download_failed", False, {}),
        ("/status/404", "download_failed", False, {}),
        ("/status/503", "download_failed", True, {}),
        ("/page/embed?src=/status/502", "download_failed", True, {}),
        ("/page/embed?src=/nope.mp4", "download_failed", False, {}),
        ("/page/multi/ffpp_004.mp4,ffpp_634.mp4", "unsupported_url", False, {}),
        ("/page/novideo", "unsupported_url", False, {}),
        ("/files/text.mp4", "not_a_video", False, {}),
        ("/files/truncated.mp4", "corrupt_video", False, {}),
        ("/files/audio.mp4", "not_a_video", False, {}),
        ("/files/dfdc_lynaeydofd.mp4", "too_large", False, {"max_filesize_mb": 1}),
        ("/hls/index.m3u8", "too_large", False, {"max_filesize_mb": 0.5}),
        ("/files/ffpp_519.mp4", "too_long", False, {"max_duration_s": 5}),
        (f"/page/video/{CLIP}", "too_long", False, {"max_duration_s": 5}),
        ("/hls/index.m3u8", "too_long", False, {"max_duration_s": 5}),
        ("/stall/ffpp_634.mp4?after=65536", "timeout", False, {"socket_timeout_s": 0.5}),
    ],
)
def test_bad_inputs(server, settings_for, staging, path, code, retryable, overrides):
    error = fetch_error(server.url(path), settings_for(server, **overrides))
    assert (error.code, error.retryable) == (code, retryable), error.message
    assert error.to_dict() == {"code": code, "message": error.message, "retryable": retryable}
    assert_clean(staging)


def test_connection_refused_is_retryable(settings_for, staging):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there once closed
    error = fetch_error(f"http://127.0.0.1:{port}/clip.mp4", settings_for(network_allowlist=[f"127.0.0.1:{port}"]))
    assert (error.code, error.retryable) == ("download_failed", True), error.message
    assert_clean(staging)


def test_unknown_host_is_permanent(settings_for, staging, monkeypatch):
    def nxdomain(host, *args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", nxdomain)  # the guard's resolver: no real DNS lookup
    error = fetch_error("http://no-such-host.invalid/clip.mp4", settings_for())
    assert (error.code, error.retryable) == ("download_failed", False), error.message
    assert_clean(staging)


def test_too_large_aborts_a_stream_of_unknown_length_early(server, settings_for, staging):
    name = "dfdc_lynaeydofd.mp4"  # 3.9 MB, sent without Content-Length, 64 KiB every 50 ms
    error = fetch_error(server.url(f"/nolength/{name}?every=0.05"), settings_for(server, max_filesize_mb=1))
    assert error.code == "too_large"
    assert_clean(staging)
    deadline = time.monotonic() + 5
    while server.hits[f"/nolength/{name}"] > len([r for r in server.responses if r[0] == f"/nolength/{name}"]):
        assert time.monotonic() < deadline, "the server never finished its answers"
        time.sleep(0.05)
    sent = [n for path, n in server.responses if path == f"/nolength/{name}"]
    size = server.files[name].stat().st_size
    assert max(sent) < size / 2, f"the download went on after the limit: {sent} of {size} bytes"


def test_wall_clock_limit_stops_a_slow_drip(server, settings_for, staging):
    started = time.monotonic()
    error = fetch_error(server.url("/page/drip"), settings_for(server, download_timeout_s=1.5))
    assert (error.code, error.retryable) == ("timeout", False)
    assert time.monotonic() - started < 5
    assert_clean(staging)


def test_ctrl_c_cleans_up(server, settings_for, staging):
    settings = settings_for(server, socket_timeout_s=20)
    timer = threading.Timer(0.7, _thread.interrupt_main)
    started = time.monotonic()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt), fetch_video(server.url("/stall/ffpp_634.mp4"), settings):
            pytest.fail("the stalled download should not finish")
    finally:
        timer.cancel()
    assert time.monotonic() - started < 5
    assert_clean(staging)


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://127.0.0.1/clip.mp4",
        "./clip.mp4",
        str(VIDEOS_DIR / CLIP),
        f"file://{VIDEOS_DIR / CLIP}",
    ],
)
def test_local_paths_and_other_schemes_are_invalid_urls(url, settings_for, staging):
    error = fetch_error(url, settings_for(allow_private_networks=True))
    assert error.code == "invalid_url"
    assert_clean(staging)


# SSRF: URLs, redirects and embedded URLs that point at loopback -------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.0.0.2",
        "localhost",
        "2130706433",
        "0x7f.1",
        "0177.0.0.1",
        "127.1",
        "0.0.0.0",
        "0",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
    ],
)
def test_urls_to_loopback_are_blocked(server, settings_for, staging, host):
    error = fetch_error(f"http://{host}:{server.port}/files/{CLIP}", settings_for())
    assert (error.code, error.retryable) == ("blocked_address", False)
    assert server.hits == {}
    assert_clean(staging)


@pytest.fixture
def server6(media_server_factory):
    return media_server_factory(host="::1")


def test_url_to_ipv6_loopback_is_blocked(server6, settings_for, staging):
    error = fetch_error(server6.url(f"/files/{CLIP}"), settings_for())
    assert error.code == "blocked_address"
    assert server6.hits == {}
    assert_clean(staging)


@pytest.fixture
def other(media_server_factory):
    """A second server on another loopback port: the target of redirects and embedded URLs."""
    return media_server_factory()


def redirect_to(server, target: str) -> str:
    return server.url("/redirect?" + urllib.parse.urlencode({"to": target}))


@pytest.mark.parametrize(
    "target",
    ["http://127.0.0.1", "http://localhost", "http://[::ffff:127.0.0.1]", "http://2130706433", "https://localhost"],
)
def test_redirects_to_other_loopback_ports_are_blocked(server, other, settings_for, staging, target):
    target = f"{target}:{other.port}/files/{CLIP}"
    error = fetch_error(redirect_to(server, target), settings_for(server))
    assert error.code == "blocked_address"
    assert server.hits["/redirect"] == 1
    assert other.hits == {}
    assert_clean(staging)


def test_redirect_to_an_allowed_target_is_followed(server, other, settings_for, staging):
    """The control for the test above: with the target allowed too, the same redirect works."""
    with fetch_video(redirect_to(server, other.url(f"/files/{CLIP}")), settings_for(server, other)) as video:
        assert video.sha256 == sha256(other.files[CLIP])
    assert other.hits[f"/files/{CLIP}"] >= 1
    assert_clean(staging)


def test_redirect_to_ipv6_loopback_is_blocked(server, server6, settings_for, staging):
    error = fetch_error(redirect_to(server, server6.url(f"/files/{CLIP}")), settings_for(server))
    assert error.code == "blocked_address"
    assert server6.hits == {}
    with fetch_video(redirect_to(server, server6.url(f"/files/{CLIP}")), settings_for(server, server6)) as video:
        assert video.sha256 == sha256(server6.files[CLIP])  # reachable when allowed: the guard did the blocking
    assert_clean(staging)


def test_video_embedded_from_a_blocked_address_is_blocked(server, other, settings_for, staging):
    page = server.url("/page/embed?" + urllib.parse.urlencode({"src": other.url(f"/files/{CLIP}")}))
    error = fetch_error(page, settings_for(server))
    assert error.code == "blocked_address"
    assert other.hits == {}
    assert_clean(staging)


def test_hls_segments_on_a_blocked_address_are_blocked(server, other, settings_for, staging):
    playlist = server.url("/hls/index.m3u8?" + urllib.parse.urlencode({"base": other.url("/hls")}))
    error = fetch_error(playlist, settings_for(server))
    assert error.code == "blocked_address"
    assert other.hits == {}
    with fetch_video(playlist, settings_for(server, other)) as video:  # the control: allowed, it downloads
        assert video.duration_s == pytest.approx(12.36, abs=0.2)
    assert sum(n for path, n in other.hits.items() if path.endswith(".ts")) >= 3
    assert_clean(staging)


# Local files (CLI only) -----------------------------------------------------------------------------------------------


def test_open_local_video_probes_in_place():
    path = VIDEOS_DIR / "dfdc_yhffcuhhjy.mp4"
    with open_local_video(path, ScannerSettings()) as video:
        assert video.path == path.resolve()
        assert video.url is None
        assert video.source["url"] is None and video.source["title"] == path.name
        assert video.sha256 == sha256(path)
        assert (video.width, video.height) == (720, 1280)
    assert path.is_file()


def test_open_local_video_errors(media_assets, tmp_path):
    with pytest.raises(ScanError) as info, open_local_video(tmp_path / "missing.mp4", ScannerSettings()):
        pass
    assert info.value.code == "invalid_url"
    with pytest.raises(ScanError) as info, open_local_video(media_assets.files["text.mp4"], ScannerSettings()):
        pass
    assert info.value.code == "not_a_video"
    with pytest.raises(ScanError) as info, open_local_video(VIDEOS_DIR / CLIP, ScannerSettings(max_duration_s=5)):
        pass
    assert info.value.code == "too_long"
