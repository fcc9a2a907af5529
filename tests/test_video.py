"""Frame sampling: evenly across the whole video, exactly the frames a full decode gives, only what is needed."""

from __future__ import annotations

import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from scanner.errors import CorruptVideoError, NotAVideoError
from scanner.video import PacketIndex, choose_frames, decode_ranges, index_packets, sample_frames
from tests.conftest import VIDEOS_DIR, require_shared


def full_decode(path, stream: int = 0) -> dict[int, np.ndarray]:
    with av.open(str(path)) as container:
        return {f.pts: f.to_ndarray(format="rgb24") for f in container.decode(video=stream)}


@pytest.fixture(scope="module")
def dense_keyframes(tmp_path_factory):
    """A clip re-encoded with a key frame every 5 frames and B-frames, where jumping saves work."""
    out = tmp_path_factory.mktemp("video") / "dense.mp4"
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-i",
            str(require_shared(VIDEOS_DIR / "ffpp_004.mp4")),
            "-t",
            "6",
            "-vf",
            "scale=320:180",
            "-c:v",
            "libx264",
            "-g",
            "5",
            "-bf",
            "2",
            "-an",
            str(out),
        ],
        check=True,
    )
    return out


def synthetic_index(keyframes: list[bool]) -> PacketIndex:
    return PacketIndex(pts=list(range(len(keyframes))), keyframe=keyframes, time_base=Fraction(1, 25), start_pts=0)


def test_frames_are_chosen_evenly_across_the_whole_video():
    index = synthetic_index([i % 50 == 0 for i in range(1000)])
    chosen = choose_frames(index, 10)
    assert chosen == [50, 150, 250, 350, 450, 550, 650, 750, 850, 950]
    assert choose_frames(index, 2000) == list(range(1000))  # never more frames than the video has
    assert choose_frames(index, 3, keyframes=True) == [150, 500, 800]
    assert all(k % 50 == 0 for k in choose_frames(index, 100, keyframes=True))


def test_ranges_decode_sequentially_when_key_frames_are_sparse():
    index = synthetic_index([i % 250 == 0 for i in range(300)])
    assert decode_ranges(index, [10, 100, 200, 260, 290]) == [(0, 200), (250, 290)]


def test_ranges_jump_over_whole_groups_when_key_frames_are_dense():
    index = synthetic_index([i % 5 == 0 for i in range(100)])
    assert decode_ranges(index, [3, 22, 23, 61]) == [(0, 3), (20, 23), (60, 61)]
    assert decode_ranges(index, [4, 5]) == [(0, 5)]  # adjacent ranges are one run


@pytest.mark.parametrize("name", ["ffpp_004.mp4", "dfdc_yhffcuhhjy.mp4"])
def test_sampled_frames_are_exactly_those_of_a_full_decode(name):
    path = require_shared(VIDEOS_DIR / name)
    index = index_packets(path)
    frames = list(sample_frames(path, 32, index=index))
    reference = full_decode(path)
    assert len(frames) == 32
    times = [f.t for f in frames]
    assert times == sorted(times)
    duration = index.seconds(max(index.pts))
    assert times[0] < duration / 16 and times[-1] > duration * 15 / 16  # the whole video, not the start
    ordered = sorted(reference)
    for frame in frames:
        assert np.array_equal(frame.image, reference[ordered[frame.index]])


def test_dense_key_frames_decode_fewer_packets_and_the_same_frames(dense_keyframes):
    index = index_packets(dense_keyframes)
    wanted = choose_frames(index, 8)
    ranges = decode_ranges(index, wanted)
    assert sum(b - a + 1 for a, b in ranges) < len(index.pts) / 2
    reference = full_decode(dense_keyframes)
    ordered = sorted(reference)
    frames = list(sample_frames(dense_keyframes, 8, index=index))
    assert [ordered[f.index] for f in frames] == wanted
    for frame in frames:
        assert np.array_equal(frame.image, reference[ordered[frame.index]])


def test_key_frame_mode_decodes_key_frames_only(dense_keyframes):
    index = index_packets(dense_keyframes)
    keys = sorted(p for p, k in zip(index.pts, index.keyframe, strict=True) if k)
    frames = list(sample_frames(dense_keyframes, 6, keyframes=True, index=index))
    assert len(frames) == 6
    ordered = index.frame_pts
    assert all(ordered[f.index] in keys for f in frames)
    reference = full_decode(dense_keyframes)
    for frame in frames:
        assert np.array_equal(frame.image, reference[ordered[frame.index]])


def test_not_a_video_and_corrupt_video(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("hello, this is not a video\n" * 100)
    with pytest.raises(NotAVideoError):
        index_packets(text)
    audio = tmp_path / "tone.m4a"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=d=1", str(audio)], check=True)
    with pytest.raises(NotAVideoError, match="no video stream"):
        index_packets(audio)
    data = require_shared(VIDEOS_DIR / "ffpp_004.mp4").read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(CorruptVideoError, match="starts like mp4"):
        list(sample_frames(truncated, 32))


def _udta_first(mp4: Path) -> None:
    """Move the `udta` box (where the mp4 muxer keeps cover art) to the front of `moov`, so that demuxers read the
    cover art first and make it stream 0. The media data comes before `moov`: no chunk offset moves."""

    def boxes(data: bytes, start: int, end: int):
        while start < end:
            size = int.from_bytes(data[start : start + 4], "big")
            yield data[start + 4 : start + 8], data[start : start + size]
            start += size

    data = mp4.read_bytes()
    top = list(boxes(data, 0, len(data)))
    assert [kind for kind, _ in top].index(b"mdat") < [kind for kind, _ in top].index(b"moov")
    out = b""
    for kind, box in top:
        if kind == b"moov":
            children = sorted(boxes(box, 8, len(box)), key=lambda child: child[0] != b"udta")
            box = box[:8] + b"".join(child for _, child in children)
        out += box
    mp4.write_bytes(out)


@pytest.fixture(scope="module")
def cover_art_first(tmp_path_factory) -> Path:
    """A shared clip with a PNG cover (an attached picture) as its first video stream."""
    out = tmp_path_factory.mktemp("cover")
    cover, video = out / "cover.png", out / "cover_first.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "color=c=red:s=64x64", "-frames:v", "1", str(cover)],
        check=True,
    )
    clip = require_shared(VIDEOS_DIR / "ffpp_004.mp4")
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-i",
            str(cover),
            "-i",
            str(clip),
            "-map",
            "0",
            "-map",
            "1:v",
            "-t",
            "3",
            "-c",
            "copy",
            "-disposition:v:0",
            "attached_pic",
            str(video),
        ],
        check=True,
    )
    _udta_first(video)
    with av.open(str(video)) as container:
        first = container.streams.video[0]
        assert first.codec_context.name == "png" and first.disposition & av.stream.Disposition.attached_pic
    return video


def test_cover_art_first_is_skipped_by_probe_index_and_decode(cover_art_first):
    """Probing, indexing and decoding all read the clip's video, never the cover art in front of it."""
    from scanner.probe import probe_video

    info = probe_video(cover_art_first)
    assert info.codec == "h264" and (info.width, info.height) != (64, 64)
    assert index_packets(cover_art_first) == info.index
    frames = list(sample_frames(cover_art_first, 8, index=info.index))
    reference = full_decode(cover_art_first, stream=1)
    assert len(frames) == 8
    for frame in frames:
        pts = info.index.frame_pts[frame.index]
        np.testing.assert_array_equal(frame.image, reference[pts])
