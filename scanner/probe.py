"""Opening a media file with PyAV and classifying it: a video (with its facts), `not_a_video` or `corrupt_video`."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

from scanner.errors import CorruptVideoError, NotAVideoError, TooLongError
from scanner.video import PacketIndex, decode_limits, limit_decoder, read_index

log = logging.getLogger(__name__)

# Containers that keep a seek index (mp4/mov sample tables, Matroska cues, AVI idx1): seeking to a time is cheap.
_INDEXED_FORMATS = {"mov", "mp4", "matroska", "webm", "avi", "asf"}

SAFE_OPEN_OPTIONS = {
    # Downloaded files are attacker-controlled: without these, a "video" that is really an HLS playlist or an ffconcat
    # script makes FFmpeg open the URLs or local files it lists, behind the network guard's back.
    "protocol_whitelist": "file",
    "format_whitelist": "mov,matroska,mpegts,avi,flv,asf,mpeg,ogg,mxf",
}
"""FFmpeg options for opening any media file of MesoScan's: local files only, container demuxers only."""


def open_media(path: str | Path, max_pixels: int | None = None):
    """`av.open` for reading a (possibly downloaded) media file safely; use it for every file that is decoded.

    The decoders FFmpeg opens to find the streams' parameters allocate no frame over `max_pixels` (default: the
    settings' `max_frame_pixels`)."""
    import av

    _, max_pixels, _ = decode_limits(0, max_pixels, 0)
    options = {**SAFE_OPEN_OPTIONS, "max_pixels": str(max_pixels)}
    return av.open(str(path), options=options, metadata_errors="ignore")


@dataclass(frozen=True)
class VideoInfo:
    duration_s: float
    width: int
    height: int
    fps: float | None
    frame_count: int
    """Video packets actually present in the file (counted, not taken from the header)."""
    codec: str
    container: str
    """PyAV's format name, e.g. `mov,mp4,m4a,3gp,3g2,mj2`, `matroska,webm`, `mpegts`."""
    has_keyframe_index: bool
    """The container keeps a seek index (mp4/mov, Matroska/WebM, AVI); False for streams such as MPEG-TS."""
    keyframes: int
    has_audio: bool
    bit_rate: int | None
    index: PacketIndex = field(repr=False, compare=False)
    """Every video packet's timestamps and key-frame flags, for `scanner.video.sample_frames`."""

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "index"}


def _sniff_container(path: Path) -> str | None:
    """The media container a file's first bytes announce, if any (to tell a damaged video from something else)."""
    with open(path, "rb") as f:
        head = f.read(400)
    if len(head) >= 8 and head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot"):
        return "mp4/mov"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska/webm"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "avi"
    if head.startswith(b"FLV\x01"):
        return "flv"
    if head.startswith(b"\x00\x00\x01\xba"):
        return "mpeg-ps"
    if len(head) > 376 and head[0] == head[188] == head[376] == 0x47:
        return "mpeg-ts"
    if head.startswith(b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"):
        return "asf/wmv"
    return None


def probe_video(path: str | Path, max_duration_s: float | None = None, *, max_frames: int | None = None,
                max_pixels: int | None = None) -> VideoInfo:
    """Open `path`, check it holds a decodable video stream and describe it.

    Raises NotAVideoError (not media, audio only, a still image), CorruptVideoError (looks like a video container but
    cannot be opened, decoded, or is truncated), TooLongError (longer than max_duration_s, more than `max_frames`
    frames) and TooLargeError (frames over `max_pixels`). The frame limits default to the settings'.
    """

    path = Path(path)
    max_frames, max_pixels, _ = decode_limits(max_frames, max_pixels, 0)
    with open_container(path, max_pixels) as container:
        return _describe(container, path, max_duration_s, max_frames, max_pixels)


def open_container(path: Path, max_pixels: int | None = None):
    """`open_media`, with a failure classified: `CorruptVideoError` when the file starts like a video container,
    `NotAVideoError` otherwise."""
    import av

    if not path.is_file():
        raise NotAVideoError(f"{path.name}: no such file")
    if path.stat().st_size == 0:
        raise NotAVideoError(f"{path.name} is empty")
    try:
        return open_media(path, max_pixels)
    except (av.FFmpegError, UnicodeDecodeError) as e:
        if kind := _sniff_container(path):
            raise CorruptVideoError(f"{path.name} starts like {kind} but cannot be opened: {e}") from e
        raise NotAVideoError(f"{path.name} is not a media file") from e


def _describe(container, path: Path, max_duration_s: float | None, max_frames: int, max_pixels: int) -> VideoInfo:
    import av

    fmt = container.format.name
    if fmt == "image2" or fmt.endswith("_pipe"):
        raise NotAVideoError(f"{path.name} is a still image ({fmt}), not a video")
    videos = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not videos:
        kinds = sorted({s.type for s in container.streams if s not in container.streams.video})
        if container.streams.video:
            kinds.append("cover art")
        raise NotAVideoError(f"{path.name} has no video stream (only {' and '.join(kinds) or 'nothing'})")
    stream = videos[0]
    ctx = stream.codec_context
    rate = stream.average_rate or stream.guessed_rate
    fps = float(rate) if rate else None

    limit_decoder(stream, max_pixels)  # before anything is decoded
    duration = _header_duration(container, stream)
    if max_duration_s is not None and duration is not None and duration > max_duration_s:
        raise TooLongError(f"video lasts {duration:.1f} s, over the {max_duration_s:g} s limit")

    # Demux every video packet (cheap: no decoding) to count frames and to catch truncation, which a header that was
    # written before the media data (fast-start mp4) does not show. The same pass indexes the packets for sampling.
    try:
        index = read_index(container, stream, max_frames)
    except CorruptVideoError as e:
        raise CorruptVideoError(f"{path.name}: {e}") from None
    packets, keyframes = len(index.pts), sum(index.keyframe)
    first_pts, last_end = index.start_pts, index.end_pts
    if stream.frames and packets < stream.frames - max(2, stream.frames // 100):
        raise CorruptVideoError(
            f"{path.name} is truncated: {packets} of the {stream.frames} frames its header lists are present")
    if duration is None and last_end is not None and stream.time_base:
        duration = float((last_end - (first_pts or 0)) * Fraction(stream.time_base))
    if duration is None and fps:
        duration = packets / fps
    if max_duration_s is not None and duration is not None and duration > max_duration_s:
        raise TooLongError(f"video lasts {duration:.1f} s, over the {max_duration_s:g} s limit")

    width, height = _first_frame_size(container, stream, path)
    return VideoInfo(
        duration_s=round(duration or 0.0, 3),
        width=width,
        height=height,
        fps=round(fps, 3) if fps else None,
        frame_count=packets,
        codec=ctx.name,
        container=fmt,
        has_keyframe_index=bool(_INDEXED_FORMATS & set(fmt.split(","))),
        keyframes=keyframes,
        has_audio=bool(container.streams.audio),
        bit_rate=container.bit_rate or None,
        index=index,
    )


def _header_duration(container, stream) -> float | None:
    if stream.duration and stream.time_base:
        return float(stream.duration * Fraction(stream.time_base))
    if container.duration:
        return container.duration / 1_000_000
    return None


def _first_frame_size(container, stream, path: Path) -> tuple[int, int]:
    """Decode the first frame: a file whose video cannot be decoded at all is corrupt."""
    import av

    container.seek(0, stream=stream)
    try:
        for frame in container.decode(stream):
            return frame.width, frame.height
    except av.FFmpegError as e:
        raise CorruptVideoError(f"{path.name}: the video cannot be decoded: {e}") from e
    raise CorruptVideoError(f"{path.name}: no video frame could be decoded")
