"""Opening a (possibly downloaded) media file safely with PyAV and picking the one video stream MesoScan reads."""

from __future__ import annotations

from pathlib import Path

from scanner.errors import CorruptVideoError, NotAVideoError

SAFE_OPEN_OPTIONS = {
    # Downloaded files are attacker-controlled: without these, a "video" that is really an HLS playlist or an ffconcat
    # script makes FFmpeg open the URLs or local files it lists, behind the network guard's back.
    "protocol_whitelist": "file",
    "format_whitelist": "mov,matroska,mpegts,avi,flv,asf,mpeg,ogg,mxf",
}
"""FFmpeg options for opening any media file of MesoScan's: local files only, container demuxers only."""


def decode_limits(max_frames: int | None, max_pixels: int | None, frame_pixels: int | None) -> tuple[int, int, int]:
    """The decoding limits given; the documented defaults (`ScannerSettings`' own, never the environment: entry
    points pass their settings' limits) for those left out."""
    from scanner.config import ScannerSettings

    fields = ScannerSettings.model_fields
    return (
        fields["max_frames"].default if max_frames is None else max_frames,
        fields["max_frame_pixels"].default if max_pixels is None else max_pixels,
        fields["frame_pixels"].default if frame_pixels is None else frame_pixels,
    )


def open_media(path: str | Path, max_pixels: int | None = None):
    """`av.open` for reading a (possibly downloaded) media file safely; use it for every file that is decoded.

    The decoders FFmpeg opens to find the streams' parameters allocate no frame over `max_pixels` (default: the
    settings' `max_frame_pixels`)."""
    import av

    _, max_pixels, _ = decode_limits(0, max_pixels, 0)
    options = {**SAFE_OPEN_OPTIONS, "max_pixels": str(max_pixels)}
    return av.open(str(path), options=options, metadata_errors="ignore")


def sniff_container(path: Path) -> str | None:
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
        if kind := sniff_container(path):
            raise CorruptVideoError(f"{path.name} starts like {kind} but cannot be opened: {e}") from e
        raise NotAVideoError(f"{path.name} is not a media file") from e


def video_stream(container, name: str):
    """THE video stream of an open container: the first one that is not cover art (an attached picture).

    Probing, indexing and decoding all read this one, so a packet index always matches the stream decoded.
    `NotAVideoError` naming what the file holds instead when there is none."""
    import av

    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    kinds = sorted({s.type for s in container.streams if s not in container.streams.video})
    if container.streams.video:
        kinds.append("cover art")
    raise NotAVideoError(f"{name} has no video stream (only {' and '.join(kinds) or 'nothing'})")
