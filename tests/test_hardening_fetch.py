"""Bounded work for any URL or file (issue 19): pages capped after decompression, a deadline that holds while yt-dlp
parses, no hand-off to ffmpeg, no proxies from the environment, no file FFmpeg would follow. Loopback only."""

from __future__ import annotations

import contextlib
import gzip
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from scanner.config import ScannerSettings
from scanner.download import fetch_video
from scanner.errors import ScanError
from scanner.probe import SAFE_OPEN_OPTIONS, probe_video
from tests.conftest import VIDEOS_DIR

CLIP = "ffpp_004.mp4"


def html_page(mb: float) -> bytes:
    row = b"<p>" + b"a" * 1000 + b"</p>\n"
    return b"<html><head><title>big</title></head><body>\n" + row * int(mb * 2**20 // len(row)) + b"</body></html>"


class PageServer:
    """Serves one body at every path (optionally gzip-encoded) and counts requests, on 127.0.0.1."""

    def __init__(self, body: bytes, encoding: str | None = None, content_type: str = "text/html; charset=utf-8"):
        self.hits: Counter[str] = Counter()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                outer.hits[self.path] += 1
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                if encoding:
                    self.send_header("Content-Encoding", encoding)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.netloc = f"127.0.0.1:{self.httpd.server_port}"

    def url(self, path: str = "/page") -> str:
        return f"http://{self.netloc}{path}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def page_server():
    servers: list[PageServer] = []

    def make(*args, **kwargs) -> PageServer:
        servers.append(PageServer(*args, **kwargs))
        return servers[-1]

    yield make
    for s in servers:
        s.stop()


def settings_for(staging: Path, *netlocs: str, **overrides) -> ScannerSettings:
    values = {
        "network_allowlist": list(netlocs),
        "temp_dir": staging,
        "socket_timeout_s": 5,
        "download_timeout_s": 30,
    } | overrides
    return ScannerSettings(**values)


def fetch_error(url: str, settings: ScannerSettings) -> ScanError:
    with pytest.raises(ScanError) as info, fetch_video(url, settings):
        pytest.fail("the fetch should have failed")
    return info.value


def child_processes() -> list[str]:
    """Pids of this process's children (of any of its threads), from /proc; a thread that ends while they are
    listed has none left to count."""
    pids = []
    for task in Path("/proc/self/task").iterdir():
        try:
            pids += (task / "children").read_text().split()
        except FileNotFoundError:
            continue
    return pids


_BEFORE: set[str] = set()


@pytest.fixture(autouse=True)
def _children_before():
    """Children that were there before the test (a browser or server other tests left for the session)."""
    _BEFORE.clear()
    _BEFORE.update(child_processes())


def assert_nothing_left(staging: Path) -> None:
    assert sorted(set(child_processes()) - _BEFORE) == [], "a fetch process outlived fetch_video"
    assert [t.name for t in threading.enumerate() if t.name.startswith("mesoscan")] == []
    assert list(staging.iterdir()) == []
    time.sleep(1)  # nothing still running may put anything back
    assert list(staging.iterdir()) == [], "something re-created files after the fetch returned"


# Pages are capped after decompression -------------------------------------------------------------------------------


def test_a_compressed_page_is_capped_after_decompression(page_server, staging):
    body = gzip.compress(html_page(64), compresslevel=6)  # about 130 KB on the wire, 64 MB inflated
    server = page_server(body, encoding="gzip")
    started = time.monotonic()
    error = fetch_error(server.url(), settings_for(staging, server.netloc, max_page_mb=1))
    assert (error.code, error.retryable) == ("too_large", False), error.message
    assert "1 MB" in error.message and "decompressed" in error.message
    assert time.monotonic() - started < 10
    assert_nothing_left(staging)


def test_a_plain_page_over_the_cap_is_refused_and_one_under_it_is_read(page_server, staging):
    big = page_server(html_page(3))
    error = fetch_error(big.url(), settings_for(staging, big.netloc, max_page_mb=2))
    assert error.code == "too_large", error.message
    small = page_server(html_page(1))  # the control: under the cap it is read, and has no video
    error = fetch_error(small.url(), settings_for(staging, small.netloc, max_page_mb=2))
    assert error.code == "unsupported_url", error.message
    assert_nothing_left(staging)


# The deadline holds for CPU-bound work ------------------------------------------------------------------------------


def test_the_deadline_holds_while_yt_dlp_parses_a_huge_page(page_server, staging):
    """Parsing 150 MB of HTML keeps yt-dlp busy (holding the GIL) for many seconds: the fetch is killed on time."""
    server = page_server(gzip.compress(html_page(150), compresslevel=1), encoding="gzip")
    settings = settings_for(staging, server.netloc, max_page_mb=400, download_timeout_s=2)
    started = time.monotonic()
    error = fetch_error(server.url(), settings)
    took = time.monotonic() - started
    assert (error.code, error.retryable) == ("timeout", False), error.message
    assert took < 4, f"fetch_video returned {took:.1f} s after the start, with a 2 s limit"
    assert_nothing_left(staging)


# Timeouts a remote server causes are not retried --------------------------------------------------------------------


def test_timeouts_caused_by_the_server_are_not_retryable(server, staging):
    stalled = fetch_error(
        server.url("/stall/ffpp_634.mp4?after=65536"), settings_for(staging, server.netloc, socket_timeout_s=0.5)
    )
    assert (stalled.code, stalled.retryable) == ("timeout", False), stalled.message
    slow = fetch_error(server.url("/page/drip"), settings_for(staging, server.netloc, download_timeout_s=1.5))
    assert (slow.code, slow.retryable) == ("timeout", False), slow.message
    assert_nothing_left(staging)


# yt-dlp never hands a stream to ffmpeg -----------------------------------------------------------------------------


def sample_aes_playlist(server) -> Path:
    return "\n".join(
        [
            "#EXTM3U",
            "#EXT-X-VERSION:5",
            "#EXT-X-TARGETDURATION:4",
            "#EXT-X-PLAYLIST-TYPE:VOD",
            f'#EXT-X-KEY:METHOD=SAMPLE-AES,URI="{server.url("/files/key.bin")}"',
            "#EXTINF:3.0,",
            server.url("/hls/seg000.ts"),
            "#EXT-X-ENDLIST",
            "",
        ]
    )


def test_a_stream_that_needs_ffmpeg_is_refused_even_when_ffmpeg_is_found(server, staging, tmp_path, monkeypatch):
    """SAMPLE-AES HLS is beyond yt-dlp's native downloader, which then delegates to ffmpeg (its own sockets, no
    guard). With ffmpeg made findable, the hand-off must still be refused, explicitly."""
    from yt_dlp.downloader import external

    playlist = tmp_path / "sample-aes.m3u8"
    playlist.write_text(sample_aes_playlist(server))
    server.files["sample-aes.m3u8"] = playlist
    marker = tmp_path / "ffmpeg-was-started"

    def spy(fd, *args, **kwargs):
        marker.write_text("ffmpeg would have fetched the stream")
        return False

    monkeypatch.setattr(external.FFmpegFD, "available", classmethod(lambda cls, path=None: True))
    monkeypatch.setattr(external.FFmpegFD, "real_download", spy)
    error = fetch_error(server.url("/files/sample-aes.m3u8"), settings_for(staging, server.netloc))
    assert not marker.exists(), "yt-dlp handed the stream to ffmpeg"
    assert (error.code, error.retryable) == ("unsupported_url", False), error.message
    assert "ffmpeg" in error.message.lower()
    assert not any(path.endswith(".ts") for path in server.hits)
    assert_nothing_left(staging)


def aes128_hls(server, directory: Path, key_url: str) -> str:
    """The test HLS rendition, each segment encrypted with AES-128-CBC (IV: the media sequence number)."""
    from Cryptodome.Cipher import AES
    from Cryptodome.Util.Padding import pad

    key = bytes(range(16))
    (directory / "aes.key").write_bytes(key)
    server.files["aes.key"] = directory / "aes.key"
    source = server.hls_dir / "index.m3u8"
    lines, sequence = [], 0
    for line in source.read_text().splitlines():
        if line.startswith("#EXTM3U"):
            lines += [line, f'#EXT-X-KEY:METHOD=AES-128,URI="{key_url}"']
        elif line and not line.startswith("#"):
            iv = sequence.to_bytes(16, "big")
            encrypted = directory / f"enc-{line}"
            encrypted.write_bytes(AES.new(key, AES.MODE_CBC, iv).encrypt(pad((server.hls_dir / line).read_bytes(), 16)))
            server.files[encrypted.name] = encrypted
            lines.append(server.url(f"/files/{encrypted.name}"))
            sequence += 1
        else:
            lines.append(line)
    playlist = directory / "aes.m3u8"
    playlist.write_text("\n".join(lines) + "\n")
    server.files["aes.m3u8"] = playlist
    return server.url("/files/aes.m3u8")


def test_aes128_hls_is_decrypted_natively_through_the_guard(media_server_factory, staging, tmp_path):
    server, other = media_server_factory(), media_server_factory()
    url = aes128_hls(server, tmp_path, server.url("/files/aes.key"))
    with fetch_video(url, settings_for(staging, server.netloc)) as video:
        assert video.duration_s == pytest.approx(12.36, abs=0.3)
        assert video.info.frame_count > 250
    assert server.hits["/files/aes.key"] >= 1
    (tmp_path / "other").mkdir()
    blocked_key = aes128_hls(server, tmp_path / "other", other.url("/files/aes.key"))  # the key elsewhere: blocked
    error = fetch_error(blocked_key, settings_for(staging, server.netloc))
    assert error.code == "blocked_address", error.message
    assert other.hits == {}
    assert_nothing_left(staging)


# Proxies from the environment are ignored ---------------------------------------------------------------------------


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"])
def test_proxies_in_the_environment_are_ignored(server, page_server, staging, monkeypatch, variable):
    proxy = page_server(b"proxied", content_type="text/plain")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.setenv(variable, proxy.url(""))
    with fetch_video(server.url(f"/files/{CLIP}"), settings_for(staging, server.netloc)) as video:
        assert video.filesize == server.files[CLIP].stat().st_size
    assert proxy.hits == {}
    assert_nothing_left(staging)


# A file FFmpeg would follow ----------------------------------------------------------------------------------------


def test_a_playlist_file_does_not_make_ffmpeg_read_what_it_lists(media_assets, tmp_path):
    """A local HLS playlist listing a file elsewhere on this machine: FFmpeg's hls demuxer follows it (the control
    shows it does, even with local files only allowed); probing refuses it as `not_a_video`."""
    import av

    elsewhere = media_assets.hls_dir / "seg000.ts"
    playlist = tmp_path / "listing.m3u8"
    playlist.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:3.0,\n{elsewhere}\n#EXT-X-ENDLIST\n")
    unsafe = {k: v for k, v in SAFE_OPEN_OPTIONS.items() if k != "format_whitelist"}
    with av.open(str(playlist), options=unsafe) as container:  # the control: FFmpeg reads the listed file
        assert container.format.name == "hls"
        assert sum(1 for _ in container.decode(container.streams.video[0])) > 10
    with pytest.raises(ScanError) as info:
        probe_video(playlist)
    assert info.value.code == "not_a_video", info.value.message


# Frames: pixels and count ------------------------------------------------------------------------------------------


def make_clip(path: Path, size: str, rate: int, seconds: float, gop: int = 250) -> Path:
    subprocess.run(
        [
            "ffmpeg",
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            f"color=c=gray:s={size}:r={rate}:d={seconds}",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
            "-g",
            str(gop),
            "-y",
            str(path),
        ],
        check=True,
    )
    return path


PEAK_SCRIPT = """
import resource, sys
from scanner.errors import ScanError
from scanner.probe import probe_video
probe_video(sys.argv[1])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    probe_video(sys.argv[2])
    print("accepted", 0)
except ScanError as e:
    print(e.code, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def test_frames_over_the_pixel_budget_are_refused_before_one_is_decoded(tmp_path):
    """A 7680×4320 frame is 50 MB of YUV: refused (`too_large`) with no growth in peak memory."""
    small = make_clip(tmp_path / "small.mp4", "320x240", 2, 1)
    huge = make_clip(tmp_path / "8k.mp4", "7680x4320", 2, 1)
    result = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, str(small), str(huge)],
        capture_output=True,
        text=True,
        check=True,
        env={"MESOSCAN_MAX_FRAME_PIXELS": str(3840 * 2160), "PATH": "/usr/bin:/bin"},
    )
    code, grown_mb = result.stdout.split()
    assert code == "too_large", result.stdout
    assert int(grown_mb) < 20, f"probing the 8K file grew peak memory by {grown_mb} MB"


def test_large_frames_are_scaled_down_before_they_become_rgb(tmp_path):
    from scanner.video import sample_frames

    clip = make_clip(tmp_path / "uhd.mp4", "3840x2160", 5, 1)
    frames = list(sample_frames(clip, count=2, frame_pixels=1920 * 1080))
    assert [f.image.shape for f in frames] == [(1080, 1920, 3)] * 2
    assert [f.image.shape for f in sample_frames(VIDEOS_DIR / CLIP, count=1, frame_pixels=1920 * 1080)] == [
        (720, 1280, 3)
    ]  # under the budget: untouched


def test_a_file_with_too_many_frames_is_too_long(tmp_path):
    many = make_clip(tmp_path / "many.mp4", "16x16", 1000, 5, gop=1000)  # 5,000 tiny frames in 5 s
    started = time.monotonic()
    with pytest.raises(ScanError) as info:
        probe_video(many, max_duration_s=600, max_frames=1000)
    assert info.value.code == "too_long" and "1,000 frames" in info.value.message
    assert time.monotonic() - started < 5
    assert probe_video(many, max_duration_s=600, max_frames=5000).frame_count == 5000  # the control
