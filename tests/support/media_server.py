"""A real threaded HTTP server on loopback serving test media: files (Range), pages, HLS, redirects, errors, stalls.

Use `MediaServer` directly (`with MediaServer(files) as server: server.url("/files/clip.mp4")`) or through the pytest
fixtures `media_assets` (the generated files, built once per session with ffmpeg) and `media_server_factory`.

Routes (GET and HEAD):
- `/files/<name>`: the file, with `Range` support; `Content-Type` from the name's extension.
- `/nolength/<name>?every=S`: the file without `Content-Length` (ends when the connection closes), 64 KiB every S s.
- `/stall/<name>?after=N`: headers and the first N bytes, then silence until the server stops or `stall_s` passes.
- `/drip/<name>?chunk=N&every=S`: the file, N bytes every S seconds.
- `/page/video/<name>`, `/page/og/<name>`: HTML embedding `/files/<name>` with `<video src>` or `og:video`.
- `/page/multi/<name>,<name>`: a page with several `<video>` elements.
- `/page/blob/<name>`: a page whose `<video>` plays the file from a `blob:` URL (script), with `og:video` beside.
- `/page/embed?src=URL`: a page whose `<video src>` is URL (which may be on another server).
- `/page/frame?src=URL`: a page showing URL in an `<iframe>` (another server's page: a cross-origin player).
- `/page/novideo`: an HTML page without any video. `/page/drip`: a page sent one byte at a time, slowly.
- `/hls/<file>`: the HLS playlist and segments (`/hls/index.m3u8`) when an HLS directory is given;
  `/hls/index.m3u8?base=URL` lists the segments as absolute URLs under URL; `/hls/master.m3u8` is a master playlist
  offering MASTER_VARIANTS (1080p, 720p, 360p) under `/hls/variant/<height>/`.
- `/redirect?to=URL`: a 302 to URL. `/chain/<n>/<name>`: n redirects, then `/files/<name>`.
- `/status/<code>`: an empty answer with that status. Anything else: 404.
`hits` and `bytes_sent` count requests and body bytes per path, `responses` lists (path, body bytes) per answered
request, so tests can tell that nothing (or only part of a file) was sent.
"""

from __future__ import annotations

import collections
import html
import json
import mimetypes
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

mimetypes.add_type("application/vnd.apple.mpegurl", ".m3u8")
MASTER_VARIANTS = ((1920, 1080), (1280, 720), (640, 360))
"""The renditions `/hls/master.m3u8` offers (all serve the same segments, under `/hls/variant/<height>/`)."""
mimetypes.add_type("video/mp2t", ".ts")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    media: MediaServer


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args) -> None:  # keep test output quiet
        pass

    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route(head=False)

    # helpers ----------------------------------------------------------------------------------------------------

    def _write(self, data: bytes) -> bool:
        try:
            self.wfile.write(data)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            return False
        self.server.media.bytes_sent[self._path] += len(data)
        self._sent += len(data)
        return True

    def finish(self) -> None:
        super().finish()
        if getattr(self, "_path", None) is not None:
            self.server.media.responses.append((self._path, self._sent))

    def _answer(
        self,
        status: int,
        body: bytes = b"",
        content_type: str = "text/plain",
        headers: dict | None = None,
        head: bool = False,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self._write(body)

    def _file(self, name: str) -> Path | None:
        return self.server.media.files.get(name)

    def _content_type(self, path: Path) -> str:
        return mimetypes.guess_type(path.name)[0] or "application/octet-stream"

    def _route(self, head: bool) -> None:
        media = self.server.media
        parts = urllib.parse.urlsplit(self.path)
        self._path, self._sent = parts.path, 0
        self._query = query = dict(urllib.parse.parse_qsl(parts.query))
        media.hits[parts.path] += 1
        segments = [urllib.parse.unquote(s) for s in parts.path.strip("/").split("/")]
        kind, rest = segments[0], "/".join(segments[1:])
        if kind == "files" and (path := self._file(rest)):
            return self._send_file(path, head)
        if kind == "nolength" and (path := self._file(rest)):
            return self._send_unsized(path, head, float(query.get("every", 0)))
        if kind == "stall" and (path := self._file(rest)):
            return self._send_stalling(path, int(query.get("after", 65536)))
        if kind == "drip" and (path := self._file(rest)):
            return self._send_dripping(
                path.read_bytes(),
                self._content_type(path),
                int(query.get("chunk", 1024)),
                float(query.get("every", 0.1)),
            )
        if kind == "page":
            return self._page(rest, head)
        if kind == "hls" and media.hls_dir is not None and rest == "master.m3u8":
            return self._send_master(head)
        if kind == "hls" and media.hls_dir is not None:
            if m := re.fullmatch(r"variant/\d+/([^/]+)", rest):  # every variant serves the same media
                rest = m.group(1)
            target = (media.hls_dir / rest).resolve()
            if target.parent == media.hls_dir.resolve() and target.is_file():
                if target.suffix == ".m3u8" and "base" in query:
                    return self._send_playlist(target, query["base"], head)
                return self._send_file(target, head)
        if kind == "redirect" and "to" in query:
            return self._answer(302, headers={"Location": query["to"]}, head=head)
        if kind == "chain" and len(segments) >= 3 and segments[1].isdigit():
            hops, name = int(segments[1]), "/".join(segments[2:])
            location = f"/chain/{hops - 1}/{name}" if hops > 0 else f"/files/{name}"
            return self._answer(302, headers={"Location": location}, head=head)
        if kind == "status" and rest.isdigit():
            return self._answer(int(rest), HTTPStatus(int(rest)).phrase.encode(), head=head)
        return self._answer(404, b"not found", head=head)

    def _send_master(self, head: bool) -> None:
        lines = ["#EXTM3U"]
        for width, height in MASTER_VARIANTS:
            lines += [
                f"#EXT-X-STREAM-INF:BANDWIDTH={width * height * 2},RESOLUTION={width}x{height}",
                f"variant/{height}/index.m3u8",
            ]
        self._answer(200, "\n".join(lines).encode() + b"\n", "application/vnd.apple.mpegurl", head=head)

    def _send_playlist(self, path: Path, base: str, head: bool) -> None:
        """The playlist with each segment as an absolute URL under `base` (segments served from elsewhere)."""
        lines = [
            line if line.startswith("#") or not line.strip() else base.rstrip("/") + "/" + line
            for line in path.read_text().splitlines()
        ]
        self._answer(200, "\n".join(lines).encode() + b"\n", "application/vnd.apple.mpegurl", head=head)

    def _send_file(self, path: Path, head: bool) -> None:
        size = path.stat().st_size
        start, end = 0, size - 1
        status = 200
        if m := re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "")):
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            elif m.group(2):  # suffix range
                start = max(size - int(m.group(2)), 0)
            if start >= size or start > end:
                return self._answer(416, headers={"Content-Range": f"bytes */{size}"}, head=head)
            status = 206
        self.send_response(status)
        self.send_header("Content-Type", self._content_type(path))
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if head:
            return
        with open(path, "rb") as f:
            f.seek(start)
            left = end - start + 1
            while left > 0:
                block = f.read(min(left, 65536))
                if not block or not self._write(block):
                    return
                left -= len(block)

    def _send_unsized(self, path: Path, head: bool, every: float) -> None:
        self.send_response(200)
        self.send_header("Content-Type", self._content_type(path))
        self.end_headers()
        if head:
            return
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(65536), b""):
                if self.server.media.stopping.is_set() or not self._write(block):
                    return
                time.sleep(every)

    def _send_stalling(self, path: Path, after: int) -> None:
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", self._content_type(path))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self._write(data[:after]):
            self.server.media.stopping.wait(self.server.media.stall_s)

    def _send_dripping(self, data: bytes, content_type: str, chunk: int, every: float) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        media = self.server.media
        for i in range(0, len(data), chunk):
            if media.stopping.is_set() or not self._write(data[i : i + chunk]):
                return
            time.sleep(every)

    def _page(self, rest: str, head: bool) -> None:
        kind, _, name = rest.partition("/")
        src = html.escape(f"/files/{name}")
        if kind == "video" and self._file(name):
            body = (
                f"<!doctype html><html><head><title>Clip {html.escape(name)}</title></head><body>"
                f'<h1>A clip</h1><video controls width="640" src="{src}"></video></body></html>'
            )
        elif kind == "og" and self._file(name):
            absolute = html.escape(self.server.media.url(f"/files/{name}"))
            body = (
                f"<!doctype html><html><head><title>OG clip</title>"
                f'<meta property="og:title" content="OG clip {html.escape(name)}">'
                f'<meta property="og:video" content="{absolute}">'
                f'<meta property="og:video:type" content="video/mp4"></head><body><p>A clip.</p></body></html>'
            )
        elif kind == "blob" and self._file(name):  # as players on big sites do: a blob: source, og:video beside
            absolute = html.escape(self.server.media.url(f"/files/{name}"))
            body = (
                f"<!doctype html><html><head><title>Blob clip</title>"
                f'<meta property="og:video" content="{absolute}">'
                f'<meta property="og:video:type" content="video/mp4"></head>'
                f'<body><video controls width="640"></video><script>'
                f"fetch({json.dumps(f'/files/{name}')}).then(r => r.blob()).then(b => {{"
                f' document.querySelector("video").src = URL.createObjectURL(b); }});</script></body></html>'
            )
        elif kind == "frame" and "src" in self._query:
            body = (
                f"<!doctype html><html><head><title>Framed player</title></head><body>"
                f'<iframe width="680" height="420" src="{html.escape(self._query["src"])}"></iframe></body></html>'
            )
        elif kind == "embed" and "src" in self._query:
            body = (
                f"<!doctype html><html><head><title>Embedded clip</title></head><body>"
                f'<video controls src="{html.escape(self._query["src"])}"></video></body></html>'
            )
        elif kind == "multi":
            videos = "".join(f'<video controls src="/files/{html.escape(n)}"></video>' for n in name.split(","))
            body = f"<!doctype html><html><head><title>Several clips</title></head><body>{videos}</body></html>"
        elif kind == "novideo":
            body = (
                "<!doctype html><html><head><title>No video here</title></head>"
                "<body><h1>Nothing to watch</h1><p>Just text.</p></body></html>"
            )
        elif kind == "drip":
            page = b"<!doctype html><html><head><title>slow</title></head><body>" + b" " * 4096 + b"</body></html>"
            return self._send_dripping(page, "text/html", 1, 0.05)
        else:
            return self._answer(404, b"not found", head=head)
        self._answer(200, body.encode(), "text/html; charset=utf-8", head=head)


@dataclass
class MediaServer:
    """A threaded HTTP server on loopback; `files` maps served names to paths."""

    files: dict[str, Path] = field(default_factory=dict)
    host: str = "127.0.0.1"
    hls_dir: Path | None = None
    stall_s: float = 30.0
    hits: collections.Counter = field(default_factory=collections.Counter)
    bytes_sent: collections.Counter = field(default_factory=collections.Counter)
    responses: list[tuple[str, int]] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def netloc(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def url(self, path: str) -> str:
        return f"http://{self.netloc}{path}"

    def start(self) -> MediaServer:
        server_class = _Server6 if ":" in self.host else _Server
        self._httpd = server_class((self.host, 0), _Handler)
        self._httpd.media = self
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"media-server-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> MediaServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass(frozen=True)
class MediaAssets:
    """The files a media server serves: shared clips plus bad inputs and an HLS rendition made with ffmpeg."""

    files: dict[str, Path]
    hls_dir: Path


def build_assets(directory: Path, videos_dir: Path) -> MediaAssets:
    """Make the generated test media in `directory` (a few seconds of ffmpeg)."""
    if shutil.which("ffmpeg") is None:
        raise RuntimeError("ffmpeg is needed to build the test media")
    directory.mkdir(parents=True, exist_ok=True)
    files = {p.name: p for p in sorted(videos_dir.glob("*.mp4"))}
    clip = videos_dir / "ffpp_004.mp4"

    text = directory / "text.mp4"
    text.write_text("This is a text file with a video's name.\n" * 20)
    truncated = directory / "truncated.mp4"
    truncated.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])

    def ffmpeg(*args: str) -> None:
        subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args], check=True)

    audio = directory / "audio.mp4"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=3", "-c:a", "aac", str(audio))
    hls_dir = directory / "hls"
    hls_dir.mkdir(exist_ok=True)
    # Re-encoded with a keyframe every second so that the playlist has several segments.
    ffmpeg(
        "-i",
        str(clip),
        "-an",
        "-vf",
        "scale=640:-2",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-g",
        "25",
        "-sc_threshold",
        "0",
        "-f",
        "hls",
        "-hls_time",
        "3",
        "-hls_playlist_type",
        "vod",
        "-hls_segment_filename",
        str(hls_dir / "seg%03d.ts"),
        str(hls_dir / "index.m3u8"),
    )
    mov = directory / "clip.mov"
    ffmpeg("-i", str(clip), "-c", "copy", "-f", "mov", str(mov))
    webm = directory / "clip.webm"
    ffmpeg(
        "-i",
        str(clip),
        "-t",
        "3",
        "-vf",
        "scale=320:-2",
        "-c:v",
        "libvpx",
        "-deadline",
        "realtime",
        "-cpu-used",
        "8",
        "-b:v",
        "300k",
        str(webm),
    )
    files.update({"text.mp4": text, "truncated.mp4": truncated, "audio.mp4": audio, "clip.mov": mov, "clip.webm": webm})
    return MediaAssets(files=files, hls_dir=hls_dir)


@pytest.fixture(scope="session")
def media_assets(tmp_path_factory) -> MediaAssets:
    from tests.conftest import VIDEOS_DIR, require_shared

    return build_assets(tmp_path_factory.mktemp("media"), require_shared(VIDEOS_DIR))


@pytest.fixture
def media_server_factory(media_assets) -> Iterator[Callable[..., MediaServer]]:
    """`make(host="127.0.0.1", **options)` starts a MediaServer over the test media; all are stopped afterwards."""
    servers: list[MediaServer] = []

    def make(host: str = "127.0.0.1", **options) -> MediaServer:
        options.setdefault("files", dict(media_assets.files))
        options.setdefault("hls_dir", media_assets.hls_dir)
        server = MediaServer(host=host, **options).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def server(media_server_factory) -> MediaServer:
    """A media server on 127.0.0.1 whose stalling routes hang for 20 s."""
    return media_server_factory(stall_s=20)


@pytest.fixture
def staging(tmp_path) -> Path:
    """An empty directory to stage downloads in: tests check it is empty again afterwards."""
    path = tmp_path / "staging"
    path.mkdir()
    return path
