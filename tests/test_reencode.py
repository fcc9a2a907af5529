"""Re-encoding videos for `mesoscan evaluate --degrade` at video level: the FFmpeg passes, what they do to a real
clip, failures, clean-up, and the evaluation that runs on them."""

from __future__ import annotations

import csv

import av
import numpy as np
import pytest

from scanner.config import ScannerSettings
from scanner.errors import CorruptVideoError
from scanner.reencode import passes, reencode
from scanner.videoset import evaluate_videos
from serving.degrade import parse_chain
from serving.errors import InvalidInputError
from tests.conftest import VIDEOS_DIR, require_shared

CLIP = "ffpp_004.mp4"  # 1280×720, 309 frames, already web-compressed (FF++ c23)


def _read(path) -> tuple[tuple[int, int], int, np.ndarray]:
    """(width, height), frame count, and the first frame (RGB)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    return (frames[0].shape[1], frames[0].shape[0]), len(frames), frames[0]


def test_a_chain_becomes_one_encode_per_h264_step_and_a_lossless_one_for_what_is_left():
    assert passes(parse_chain("h264:30")) == [([], 30)]
    assert passes(parse_chain("downscale:0.5,blur:1.5,h264:28")) == [
        (["scale=max(2\\,trunc(0.5*iw/2)*2):max(2\\,trunc(0.5*ih/2)*2):flags=area", "gblur=sigma=1.5"], 28)
    ]
    two = passes(parse_chain("h264:23,downscale:0.5,h264:30,blur:2"))
    assert [crf for _, crf in two] == [23, 30, None]
    assert two[2][0] == ["gblur=sigma=2"]
    with pytest.raises(InvalidInputError, match="jpeg is not a step for a video"):
        passes(parse_chain("downscale:0.5,jpeg:40"))


def test_reencoding_a_real_clip_loses_what_the_steps_say_and_leaves_one_file(tmp_path):
    source = require_shared(VIDEOS_DIR) / CLIP
    size, count, original = _read(source)

    half = reencode(source, tmp_path, parse_chain("h264:23,downscale:0.5,h264:30"), max_frames=36_000)
    assert sorted(p.name for p in tmp_path.iterdir()) == [half.name], "earlier passes are removed"
    half_size, half_count, _ = _read(half)
    assert half_size == (size[0] // 2, size[1] // 2) and half_count == count
    half.unlink()

    def error(crf: int) -> float:
        out = reencode(source, tmp_path, parse_chain(f"h264:{crf}"), max_frames=36_000)
        try:
            frame_size, _, first = _read(out)
            assert frame_size == size
            return float(np.abs(first.astype(int) - original).mean())
        finally:
            out.unlink()

    assert error(18) < error(40) < error(51), "a higher CRF loses more of the picture"

    short = reencode(source, tmp_path, parse_chain("blur:2"), max_frames=10)
    _, short_count, blurred = _read(short)
    assert short_count == 11, "work is bounded: one frame over max_frames, so a video too long to scan stays so"
    assert 0 < np.abs(blurred.astype(int) - original).mean() < 20


def test_a_video_ffmpeg_cannot_read_is_a_corrupt_video_with_its_words(tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 500)
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(CorruptVideoError, match=r"re-encoding broken.mp4 \(pass 1\) failed: .+"):
        reencode(broken, work, parse_chain("h264:30"), max_frames=100)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """ffpp_004 and its NeuralTextures fake, plus a broken file listed as a real video."""
    folder = tmp_path_factory.mktemp("videos")
    with (require_shared(VIDEOS_DIR) / "labels.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["filename"] in (CLIP, "ffpp_004_982_NT.mp4")]
    for row in rows:
        (folder / row["filename"]).symlink_to(VIDEOS_DIR / row["filename"])
    (folder / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 500)
    with (folder / "labels.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows([*rows, {**rows[0], "filename": "broken.mp4"}])
    return folder


def test_video_level_evaluation_under_a_degradation_scores_the_reencoded_videos(pair, tmp_path, settings):
    temp = tmp_path / "temp"
    scanner = ScannerSettings(frames=4, temp_dir=temp)
    clean, clean_rows = evaluate_videos(pair, ["meso4_df"], scanner, serving_settings=settings)
    seen = []
    worse, rows = evaluate_videos(
        pair,
        ["meso4_df"],
        scanner,
        serving_settings=settings,
        degradation=parse_chain("downscale:0.5,h264:35"),
        on_video=lambda found: seen.append((found.video.path.name, sorted(p.name for p in temp.iterdir()))),
    )
    assert [r["video"] for r in rows] == [r["video"] for r in clean_rows] == [CLIP, "ffpp_004_982_NT.mp4", "broken.mp4"]
    assert [name for name, _ in seen] == [CLIP, "ffpp_004_982_NT.mp4", "broken.mp4"], "rows name the originals"
    assert all(left == [] for _, left in seen) and list(temp.iterdir()) == [], "each re-encode is gone once scored"
    assert clean["meso4_df"]["degrade"] is None and worse["meso4_df"]["degrade"] == "downscale:0.5,h264:35"
    assert worse["meso4_df"]["failed"] == 1 and rows[2]["error"] == "corrupt_video"
    assert all(r["faces"] for r in rows[:2])
    scores = [
        (c["meso4_df"]["fake_probability"], d["meso4_df"]["fake_probability"])
        for c, d in zip(clean_rows, rows, strict=True)
    ]
    assert all(abs(c - d) > 1e-4 for c, d in scores[:2]), f"the degraded videos are what was scored: {scores}"
