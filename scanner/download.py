"""Getting a video to scan: fetching a URL with yt-dlp inside the network guard, or opening a local file (CLI only).

`fetch_video(url)` accepts http(s) URLs only (never paths or file://), `open_local_video(path)` is the CLI's way in;
the gateway must only ever call `fetch_video`. Both are context managers: a fetched video lives in a private temp
directory that is removed on exit, also on errors, timeouts and Ctrl-C.

A fetch runs yt-dlp in a forked child process, so that the wall-clock limit (`download_timeout_s`), Ctrl-C and a
cancelling progress callback hold whatever yt-dlp is doing: blocked in a read or busy parsing a page (CPU-bound work
holds the GIL, so a thread could not be stopped). The child is killed, waited for, and only then is the temp directory
removed: nothing of a fetch outlives `fetch_video`. yt-dlp never starts a program (ffmpeg, aria2c) in that child:
`_refuse_external_programs` makes any such hand-off an `unsupported_url` error.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scanner.config import ScannerSettings
from scanner.errors import (
    CorruptVideoError,
    DownloadFailedError,
    InvalidUrlError,
    NotAVideoError,
    ScanError,
    ScanTimeoutError,
    TooLargeError,
    TooLongError,
    UnsupportedUrlError,
)
from scanner.netguard import AddressPolicy, NetGuard, guarded_youtube_dl
from scanner.probe import VideoInfo, probe_video
from serving.files import private_temp_dir, sha256_of

log = logging.getLogger(__name__)

Progress = Callable[[str, float | None], None]
"""progress(stage, fraction): stages `resolving`, `downloading` (fraction None when the size is unknown), `probing`,
`done`, always in the caller's thread; an exception raised by the callback stops the fetch (its process is killed)
and is re-raised to the caller of `fetch_video` (a way to cancel)."""

# Protocols yt-dlp downloads natively, through the guarded request handler.
_NATIVE_PROTOCOLS = {"http", "https", "m3u8", "m3u8_native", "http_dash_segments"}
_POLL_S = 0.1
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Linux: the fetch process is killed when the process that started it dies (e.g. a worker's hard time limit)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _refuse_external_programs() -> None:
    """In the fetch process only: yt-dlp's hand-offs to ffmpeg or other programs fail with `unsupported_url`.

    yt-dlp delegates what its native downloaders cannot do (SAMPLE-AES or otherwise unsupported HLS, live streams,
    some DASH) to ffmpeg, which would open its own sockets behind the network guard. `ffmpeg_location` points at an
    empty directory too, but that only works while ffmpeg is not found elsewhere; this refuses the hand-off itself.
    AES-128 HLS is decrypted natively (pycryptodomex), through the guard.
    """
    from yt_dlp.downloader import external

    def refuse(fd: Any, *_args: Any, **_kwargs: Any) -> Any:
        raise UnsupportedUrlError(
            f"this stream needs {fd.get_basename()} to download; MesoScan fetches only with its own guarded downloader"
        )

    todo = [external.ExternalFD]
    while todo:  # FFmpegFD, Aria2cFD, CurlFD, ... each may define its own
        downloader = todo.pop()
        todo += downloader.__subclasses__()
        downloader.real_download = refuse  # type: ignore[method-assign]
        downloader._call_downloader = refuse  # type: ignore[method-assign]
        downloader.available = classmethod(lambda cls, path=None: False)  # type: ignore[method-assign]


@dataclass(frozen=True)
class DownloadedVideo:
    path: Path
    url: str | None
    """The URL asked for; None for a local file."""
    title: str | None
    duration_s: float
    width: int
    height: int
    fps: float | None
    sha256: str
    filesize: int
    info: VideoInfo
    webpage_url: str | None = None
    extractor: str | None = None

    @property
    def source(self) -> dict[str, Any]:
        """The `source` part of a verdict document."""
        return {
            "url": self.url,
            "title": self.title,
            "duration_s": self.duration_s,
            "width": self.width,
            "height": self.height,
            "fps": self.fps,
            "sha256": self.sha256,
        }


def _probe(path: Path, settings: ScannerSettings) -> VideoInfo:
    return probe_video(
        path, settings.max_duration_s, max_frames=settings.max_frames, max_pixels=settings.max_frame_pixels
    )


def _downloaded(path: Path, url: str | None, info: VideoInfo, meta: dict[str, Any]) -> DownloadedVideo:
    return DownloadedVideo(
        path=path,
        url=url,
        title=meta.get("title"),
        duration_s=info.duration_s,
        width=info.width,
        height=info.height,
        fps=info.fps,
        sha256=sha256_of(path),
        filesize=path.stat().st_size,
        info=info,
        webpage_url=meta.get("webpage_url"),
        extractor=meta.get("extractor"),
    )


@contextlib.contextmanager
def open_local_video(path: str | Path, settings: ScannerSettings) -> Iterator[DownloadedVideo]:
    """A local file for the CLI (`mesoscan scan ./clip.mp4`): probed in place, never copied nor deleted."""
    local = Path(path).expanduser()
    if not local.is_file():
        raise InvalidUrlError(f"{path}: no such file")
    local = local.resolve()
    info = _probe(local, settings)
    yield _downloaded(local, None, info, {"title": local.name})


@contextlib.contextmanager
def fetch_video(url: str, settings: ScannerSettings, progress: Progress | None = None) -> Iterator[DownloadedVideo]:
    """Download the video behind an http(s) URL into a private temp dir, check and probe it; the dir goes on exit.

    Raises a ScanError: invalid_url, blocked_address, unsupported_url, download_failed, too_large, too_long,
    not_a_video, corrupt_video or timeout (`retryable` is True only for transient failures).
    """
    policy = AddressPolicy.from_settings(settings)
    policy.check_url(url)
    with private_temp_dir(settings.temp_dir, "mesoscan-") as workdir:
        yield _Fetch(url.strip(), settings, NetGuard(policy), workdir, progress).run()


class _AbortError(Exception):
    """Raised inside yt-dlp (progress hook, in the fetch process) to stop a download; the reason is in
    `_Fetch.failure`."""


class _YtdlpLog:
    """yt-dlp's logger: messages go to `logging`, the recent ones are kept to explain failures."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def _keep(self, msg: str) -> None:
        self.lines = [*self.lines[-49:], msg]

    def debug(self, msg: str) -> None:
        self._keep(msg)
        log.debug("yt-dlp: %s", msg)

    info = debug

    def warning(self, msg: str) -> None:
        self._keep(msg)
        log.info("yt-dlp: %s", msg)

    def error(self, msg: str) -> None:
        self._keep(msg)
        log.info("yt-dlp: %s", msg)

    def mentions(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def find(self, pattern: str) -> re.Match | None:
        return next((m for line in reversed(self.lines) if (m := re.search(pattern, line))), None)


class _ForkedChild:
    """`target(connection)` in a forked process (plain `os.fork`: multiprocessing refuses children of daemonic
    processes such as Celery's pool workers); the parent reads what it sends on `receive`."""

    def __init__(self, target: Callable[[Any], None]):
        self.receive, send = multiprocessing.Pipe(duplex=False)
        self.exitcode: int | None = None
        self.pid = os.fork()
        if self.pid == 0:  # the child: never returns into the caller's code
            code = 1
            try:
                self.receive.close()
                target(send)
                code = 0
            finally:
                os._exit(code)
        send.close()

    def is_alive(self) -> bool:
        if self.exitcode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.exitcode = os.waitstatus_to_exitcode(status)
        return self.exitcode is None

    def kill_and_wait(self) -> None:
        if self.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self.exitcode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        self.receive.close()


class _Fetch:
    """One fetch: yt-dlp runs in a forked child process (`_child`), this process watches the clock and the caller.

    The child may be killed at any moment (deadline, Ctrl-C, a progress callback that raised): it holds nothing but
    its sockets and files in `workdir`, which is removed only once the child is gone.
    """

    def __init__(self, url: str, settings: ScannerSettings, guard: NetGuard, workdir: Path, progress: Progress | None):
        self.url = url
        self.settings = settings
        self.guard = guard
        self.workdir = workdir
        self.progress = progress
        self.max_bytes = int(settings.max_filesize_mb * 1024 * 1024)
        self.deadline = time.monotonic() + settings.download_timeout_s
        self.failure: ScanError | None = None  # first typed failure decided on our side (in the child)
        self.log = _YtdlpLog()
        self._conn: Any = None  # the child's end of the pipe (in the child)

    def _too_large(self, size: str) -> TooLargeError:
        return TooLargeError(f"the video is {size}, over the {self.settings.max_filesize_mb:g} MB limit")

    def _timeout(self) -> ScanTimeoutError:
        return ScanTimeoutError(f"the download took longer than {self.settings.download_timeout_s:g} s")

    def _fail(self, error: ScanError) -> ScanError:
        if self.failure is None:
            self.failure = error
        return self.failure

    # parent process ---------------------------------------------------------------------------------------------

    def run(self) -> DownloadedVideo:
        self._report("resolving", 0.0)
        child = _ForkedChild(self._child)  # inherits the settings, the guard and its resolver
        receive = child.receive
        outcome: tuple[Any, ...] | None = None
        try:
            while outcome is None:
                if time.monotonic() > self.deadline:
                    raise self._timeout()
                if receive.poll(_POLL_S):  # short waits: Ctrl-C and the deadline are seen promptly
                    try:
                        message = receive.recv()
                    except EOFError:  # the child died without a word
                        break
                    if message[0] == "progress":
                        self._report(message[1], message[2])
                    else:
                        outcome = message
                elif not child.is_alive() and not receive.poll():
                    break
        finally:  # success, a typed failure, a callback's exception, Ctrl-C: the child is gone before the temp dir
            child.kill_and_wait()
        if outcome is None:
            raise DownloadFailedError(
                f"the fetch process ended unexpectedly (exit status {child.exitcode})", retryable=False
            )
        if outcome[0] == "error":
            raise outcome[1]
        if outcome[0] == "crash":
            raise RuntimeError(f"the fetch of {self.url} crashed: {outcome[1]}")
        _, path, meta = outcome
        return self._finish(Path(path), meta)

    def _report(self, stage: str, fraction: float | None) -> None:
        if self.progress is not None:
            self.progress(stage, fraction)  # an exception here stops the fetch and reaches the caller

    def _finish(self, path: Path, meta: dict[str, Any]) -> DownloadedVideo:
        self._report("probing", None)
        size = path.stat().st_size
        if size > self.max_bytes:
            raise self._too_large(f"{size / 2**20:.1f} MB")
        info = _probe(path, self.settings)
        if info.container == "mpegts":
            path = self._remux_to_mp4(path)
            info = _probe(path, self.settings)
        video = _downloaded(path, self.url, info, meta)
        self._report("done", 1.0)
        return video

    def _remux_to_mp4(self, path: Path) -> Path:
        """HLS yields MPEG-TS; remux it (video only, no re-encoding) to mp4 for cheap seeking. Local files only."""
        ffmpeg = shutil.which("ffmpeg")
        if ffmpeg is None:
            log.warning("ffmpeg not found: keeping %s as MPEG-TS", path.name)
            return path
        target = path.with_name("video.remuxed.mp4")
        try:
            subprocess.run(
                [
                    ffmpeg,
                    "-nostdin",
                    "-hide_banner",
                    "-loglevel",
                    "error",
                    "-protocol_whitelist",
                    "file",
                    "-f",
                    "mpegts",
                    "-i",
                    str(path),
                    "-map",
                    "0:v:0",
                    "-c",
                    "copy",
                    "-movflags",
                    "+faststart",
                    "-y",
                    str(target),
                ],
                check=True,
                capture_output=True,
                timeout=max(30.0, self.deadline - time.monotonic()),
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            stderr = getattr(e, "stderr", b"") or b""
            detail = stderr.decode(errors="replace")[-300:]
            raise CorruptVideoError(f"the HLS video could not be remuxed: {detail}") from e
        path.unlink()
        return target

    # child process ----------------------------------------------------------------------------------------------

    def _child(self, conn: Any) -> None:
        """Runs yt-dlp and sends ("progress", stage, fraction)..., then ("result", path, meta) or ("error", e)."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it kills this process
        _die_with_parent()
        _refuse_external_programs()
        self._conn = conn
        try:
            path, info = self._download()
            meta = {k: info.get(k) for k in ("title", "webpage_url", "extractor")}
            conn.send(("result", str(path), meta))
        except Exception as e:  # handed to the parent as a typed error
            error = self.failure if self.failure is not None else self._classify(e)
            if isinstance(error, ScanError):
                conn.send(("error", error))
            else:
                conn.send(("crash", f"{type(e).__name__}: {e}"))
        finally:
            conn.close()

    def _params(self) -> dict[str, Any]:
        no_ffmpeg = self.workdir / "no-ffmpeg"
        no_ffmpeg.mkdir()
        return {
            "format": self._select_format,
            "outtmpl": {"default": "video.%(ext)s"},
            "paths": {"home": str(self.workdir), "temp": str(self.workdir)},
            "noplaylist": True,
            "extract_flat": "in_playlist",
            "socket_timeout": self.settings.socket_timeout_s,
            "max_filesize": self.max_bytes,
            "retries": 1,
            "fragment_retries": 1,
            "extractor_retries": 0,
            "file_access_retries": 0,
            "skip_unavailable_fragments": False,
            "concurrent_fragment_downloads": 1,
            "buffersize": 1 << 16,
            "noresizebuffer": True,  # fixed 64 KiB reads: the progress hook sees every block (size limit, deadline)
            "proxy": "",  # never take proxies from the environment
            "ffmpeg_location": str(no_ffmpeg),  # yt-dlp must never start ffmpeg on a URL
            "fixup": "never",
            "external_downloader": {"default": "native"},
            "hls_prefer_native": True,
            "cachedir": False,
            "updatetime": False,
            "overwrites": True,
            "quiet": True,
            "noprogress": True,
            "no_color": True,
            "logger": self.log,
            "progress_hooks": [self._hook],
        }

    def _select_format(self, ctx: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """The best rendition at most max_height tall (else the smallest), fetched natively; audio is not needed."""
        formats = ctx["formats"]
        native = [f for f in formats if (f.get("protocol") or "https") in _NATIVE_PROTOCOLS]
        if not native:
            protocols = sorted({str(f.get("protocol")) for f in formats})
            self._fail(UnsupportedUrlError(f"no format can be fetched over http(s) or HLS (only {protocols})"))
            return
        videos = [f for f in native if f.get("vcodec") != "none"]
        if not videos:
            self._fail(NotAVideoError("the URL offers audio only"))
            return
        fitting = [f for f in videos if (f.get("height") or 0) <= self.settings.max_height]
        yield fitting[-1] if fitting else min(videos, key=lambda f: f.get("height") or 0)

    def _send_progress(self, stage: str, fraction: float | None) -> None:
        self._conn.send(("progress", stage, fraction))

    def _hook(self, status: dict[str, Any]) -> None:
        if status.get("status") != "downloading":
            return
        done = status.get("downloaded_bytes") or 0
        total = status.get("total_bytes")
        if done > self.max_bytes or (total and total > self.max_bytes):
            self._fail(self._too_large(f"{total / 2**20:.1f} MB" if total else f"over {done / 2**20:.1f} MB"))
            raise _AbortError("too large")
        if time.monotonic() > self.deadline:
            self._fail(self._timeout())
            raise _AbortError("deadline")
        estimate = total or status.get("total_bytes_estimate")
        self._send_progress("downloading", min(done / estimate, 1.0) if estimate else None)

    def _download(self) -> tuple[Path, dict[str, Any]]:
        max_page_bytes = int(self.settings.max_page_mb * 1024 * 1024)
        with guarded_youtube_dl(self._params(), self.guard, max_page_bytes=max_page_bytes) as ydl:
            info = ydl.extract_info(self.url, download=False)
            info = self._single_video(info)
            self._check_known_limits(info)
            self._send_progress("downloading", 0.0)
            info = ydl.process_ie_result(info, download=True)
        return self._file_of(info), info

    def _single_video(self, info: dict[str, Any] | None) -> dict[str, Any]:
        if not info:
            raise UnsupportedUrlError("yt-dlp found no video at this URL")
        if info.get("_type") in ("playlist", "multi_video"):
            entries = list(info.get("entries") or [])
            raise UnsupportedUrlError(f"the URL is a playlist ({len(entries)} entries); give the URL of one video")
        if info.get("_type") not in (None, "video"):
            raise UnsupportedUrlError(f"yt-dlp returned a {info.get('_type')} result, not a video")
        if info.get("is_live") or info.get("live_status") in ("is_live", "is_upcoming"):
            raise UnsupportedUrlError("live streams are not supported")
        return info

    def _check_known_limits(self, info: dict[str, Any]) -> None:
        """Limits yt-dlp knows before downloading (duration, size) are enforced before the first media byte."""
        duration = info.get("duration")
        if duration and duration > self.settings.max_duration_s:
            raise TooLongError(f"video lasts {duration:.0f} s, over the {self.settings.max_duration_s:g} s limit")
        size = info.get("filesize") or info.get("filesize_approx")
        if size and size > self.max_bytes:
            raise self._too_large(f"about {size / 2**20:.1f} MB")

    def _file_of(self, info: dict[str, Any]) -> Path:
        candidates = [Path(d["filepath"]) for d in info.get("requested_downloads") or [] if d.get("filepath")]
        candidates += sorted(p for p in self.workdir.glob("video.*") if p.suffix not in (".part", ".ytdl"))
        for path in candidates:
            if path.is_file():
                return path
        # yt-dlp skips some files without raising (e.g. a Content-Length over max_filesize): say why.
        if skipped := self.log.find(r"larger than max-filesize \((\d+) bytes"):
            raise self._too_large(f"{int(skipped.group(1)) / 2**20:.1f} MB")
        last = self.log.lines[-1] if self.log.lines else "no message"
        raise DownloadFailedError(f"yt-dlp finished without producing a file ({last})")

    # error classification -------------------------------------------------------------------------------------------

    def _classify(self, error: BaseException) -> BaseException:
        """The ScanError that explains a failure raised from inside yt-dlp."""
        if not isinstance(error, Exception):
            return error  # KeyboardInterrupt and the like stay what they are
        if isinstance(error, ScanError):
            return error
        if self.guard.violation is not None:
            return self.guard.violation
        return _classify_ytdlp_error(error, self.log)


def _causes(error: BaseException) -> Iterator[BaseException]:
    """An exception and everything it wraps (yt-dlp's exc_info/cause attributes, __cause__, __context__)."""
    seen: set[int] = set()
    todo = [error]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen or not isinstance(e, BaseException):
            continue
        seen.add(id(e))
        yield e
        exc_info = getattr(e, "exc_info", None)
        if isinstance(exc_info, tuple) and len(exc_info) > 1:
            todo.append(exc_info[1])
        todo += [getattr(e, "cause", None), getattr(e, "scan_error", None), e.__cause__, e.__context__]


def _download_failed(message: str, retryable: bool) -> DownloadFailedError:
    return DownloadFailedError(message, retryable=retryable)


def _classify_ytdlp_error(error: Exception, ytdlp_log: _YtdlpLog) -> ScanError:
    import urllib3.exceptions
    from yt_dlp.networking.exceptions import HTTPError, TransportError
    from yt_dlp.utils import UnsupportedError

    chain = list(_causes(error))
    message = str(getattr(error, "msg", None) or error).removeprefix("ERROR: ")
    for e in chain:
        if isinstance(e, ScanError):
            return e
    for e in chain:
        if isinstance(e, HTTPError):
            status = e.status
            transient = status >= 500 or status in (408, 425, 429)
            return _download_failed(f"the server answered HTTP {status} {e.reason or ''}".strip(), transient)
    for e in chain:
        if isinstance(e, UnsupportedError):
            return UnsupportedUrlError(f"no video found at this URL ({message})")
    for e in chain:
        if isinstance(e, socket.gaierror):
            return _download_failed(f"the host name cannot be resolved ({e})", retryable=e.errno == socket.EAI_AGAIN)
    for e in chain:
        # Before timeouts: urllib3's NewConnectionError (connection refused) subclasses its ConnectTimeoutError.
        if isinstance(e, ConnectionError | urllib3.exceptions.NewConnectionError):
            return _download_failed(f"network error: {message}", retryable=True)
    for e in chain:
        if isinstance(e, TimeoutError | urllib3.exceptions.TimeoutError):
            return ScanTimeoutError(f"the server stopped responding ({message})")
    for e in chain:
        if isinstance(e, TransportError | urllib3.exceptions.ProtocolError):
            return _download_failed(f"network error: {message}", retryable=True)
    if status := re.search(r"HTTP Error (\d{3})", message):  # reported by a downloader after its retries
        code = int(status.group(1))
        return _download_failed(f"the server answered HTTP {code}", code >= 500 or code in (408, 425, 429))
    if "Unsupported URL" in message:
        return UnsupportedUrlError(f"no video found at this URL ({message})")
    if "timed out" in message.lower() or ytdlp_log.mentions("timed out"):
        return ScanTimeoutError(f"the server stopped responding ({message})")
    return _download_failed(message, retryable=False)
