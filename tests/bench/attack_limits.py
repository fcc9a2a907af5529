"""Measurements of the work one hostile input can cause (issue 19): peak memory and seconds, before and after a fix.

Run one attack per process (peak memory is the process's own plus its children's):

    python -m tests.bench.attack_limits page --gzip --mb 300 --timeout 10   # a page inflating to 300 MB
    python -m tests.bench.attack_limits page --mb 300 --timeout 10          # a plain 300 MB page
    python -m tests.bench.attack_limits media DIR                           # writes huge.mp4 (16384x8640), many.mp4

then `/usr/bin/time -v mesoscan scan DIR/huge.mp4` for the media. Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import multiprocessing
import resource
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def peak_mb() -> float:
    """The peak of this process or of a fetch process it waited for (the server's process is not waited for)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def page_body(mb: int) -> bytes:
    row = b"<p>" + b"a" * 1000 + b"</p>\n"
    return b"<html><head><title>big</title></head><body>\n" + row * (mb * 1024 * 1024 // len(row)) + b"</body></html>"


def _serve(mb: int, compressed: bool, conn) -> None:
    body = page_body(mb)
    if compressed:
        body = gzip.compress(body, compresslevel=9)
    server = serve(body, "gzip" if compressed else None)
    conn.send((server.server_port, len(body)))
    server.serve_forever()


def serve(body: bytes, encoding: str | None) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            if encoding:
                self.send_header("Content-Encoding", encoding)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    return server


def attack_page(mb: int, compressed: bool, timeout: float) -> None:
    from scanner.config import ScannerSettings
    from scanner.download import fetch_video
    from scanner.errors import ScanError

    # The server is another process, so that only the fetch counts in this one's peak memory.
    receive, send = multiprocessing.get_context("spawn").Pipe(duplex=False)
    server = multiprocessing.get_context("spawn").Process(target=_serve, args=(mb, compressed, send), daemon=True)
    server.start()
    port, sent = receive.recv()
    staging = Path(tempfile.mkdtemp(prefix="attack-"))
    settings = ScannerSettings(
        network_allowlist=[f"127.0.0.1:{port}"], temp_dir=staging, download_timeout_s=timeout, socket_timeout_s=5
    )
    print(
        f"page of {mb} MB, sent {sent / 1024:.0f} KB{' gzip' if compressed else ''}, limit {timeout:g} s; "
        f"peak before the fetch {peak_mb():.0f} MB"
    )
    started = time.monotonic()
    cpu0 = time.process_time()
    try:
        with fetch_video(f"http://127.0.0.1:{port}/page", settings):
            outcome = "a video (unexpected)"
    except ScanError as e:
        outcome = f"{e.code}: {e.message[:100]}"
    took = time.monotonic() - started
    print(f"fetch_video returned after {took:.1f} s ({outcome}); peak {peak_mb():.0f} MB so far")
    time.sleep(2)
    busy = [t.name for t in threading.enumerate() if t.name.startswith("mesoscan")]
    print(
        f"2 s later: threads still working: {busy or 'none'}; CPU {time.process_time() - cpu0:.1f} s; "
        f"left in the staging dir: {[p.name for p in staging.iterdir()]}; peak {peak_mb():.0f} MB"
    )
    server.kill()


def make_media(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    ffmpeg = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-f", "lavfi"]
    subprocess.run(
        [
            *ffmpeg,
            "-i",
            "color=c=gray:s=16384x8640:r=2:d=1",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
            "-y",
            str(directory / "huge.mp4"),
        ],
        check=True,
    )
    subprocess.run(
        [
            *ffmpeg,
            "-i",
            "color=c=gray:s=7680x4320:r=2:d=1",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
            "-y",
            str(directory / "8k.mp4"),
        ],
        check=True,
    )
    subprocess.run(
        [
            *ffmpeg,
            "-i",
            "color=c=gray:s=16x16:r=1000:d=300",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "1000",
            "-y",
            str(directory / "many.mp4"),
        ],
        check=True,
    )
    for path in sorted(directory.glob("*.mp4")):
        print(f"{path}: {path.stat().st_size / 1024:.0f} KB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="attack", required=True)
    page = sub.add_parser("page")
    page.add_argument("--mb", type=int, default=300)
    page.add_argument("--gzip", action="store_true")
    page.add_argument("--timeout", type=float, default=10)
    media = sub.add_parser("media")
    media.add_argument("directory", type=Path)
    args = parser.parse_args()
    if args.attack == "page":
        attack_page(args.mb, args.gzip, args.timeout)
    else:
        make_media(args.directory)


if __name__ == "__main__":
    main()
