"""Opening a media file with PyAV and classifying it: a video (with its facts), `not_a_video` or `corrupt_video`."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

from scanner.errors import CorruptVideoError, NotAVideoError, TooLongError
from scanner.media import SAFE_OPEN_OPTIONS, decode_limits, open_container, open_media, video_stream
from scanner.video import PacketIndex, limit_decoder, read_index

__all__ = ["SAFE_OPEN_OPTIONS", "VideoInfo", "open_container", "open_media", "probe_video"]

log = logging.getLogger(__name__)

# Containers that keep a seek index (mp4/mov sample tables, Matroska cues, AVI idx1): seeking to a time is cheap.
_INDEXED_FORMATS = {"mov", "mp4", "matroska", "webm", "avi", "asf"}


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


def probe_video(
    path: str | Path,
    max_duration_s: float | None = None,
    *,
    max_frames: int | None = None,
    max_pixels: int | None = None,
) -> VideoInfo:
    """Open `path`, check it holds a decodable video stream and describe it.

    Raises NotAVideoError (not media, audio only, a still image), CorruptVideoError (looks like a video container but
    cannot be opened, decoded, or is truncated), TooLongError (longer than max_duration_s, more than `max_frames`
    frames) and TooLargeError (frames over `max_pixels`). The frame limits default to the settings'.
    """

    path = Path(path)
    max_frames, max_pixels, _ = decode_limits(max_frames, max_pixels, 0)
    with open_container(path, max_pixels) as container:
        return _describe(container, path, max_duration_s, max_frames, max_pixels)


def _describe(container, path: Path, max_duration_s: float | None, max_frames: int, max_pixels: int) -> VideoInfo:
    fmt = container.format.name
    if fmt == "image2" or fmt.endswith("_pipe"):
        raise NotAVideoError(f"{path.name} is a still image ({fmt}), not a video")
    stream = video_stream(container, path.name)
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
            f"{path.name} is truncated: {packets} of the {stream.frames} frames its header lists are present"
        )
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
