"""Probing media files with PyAV: the shared clips against their labels, and each kind of bad file."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import pytest

from scanner.errors import CorruptVideoError, NotAVideoError, TooLongError
from scanner.probe import probe_video
from tests.conftest import VIDEOS_DIR, require_shared


def labelled_clips() -> list[dict[str, str]]:
    with open(require_shared(VIDEOS_DIR / "labels.csv"), newline="") as f:
        return list(csv.DictReader(f))


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


@pytest.mark.parametrize("row", labelled_clips(), ids=lambda row: row["filename"])
def test_shared_clips_match_their_labels(row):
    info = probe_video(VIDEOS_DIR / row["filename"])
    width, height = (int(v) for v in row["resolution"].split("x"))
    assert (info.width, info.height) == (width, height)
    assert info.duration_s == pytest.approx(float(row["duration_s"]), abs=0.05)
    assert info.fps == pytest.approx(float(row["fps"]), rel=0.01)
    assert info.frame_count == pytest.approx(float(row["duration_s"]) * float(row["fps"]), rel=0.02)
    assert info.has_audio == (row["audio"] == "yes")
    assert info.codec == "h264"
    assert info.has_keyframe_index
    assert 1 <= info.keyframes <= info.frame_count


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """Media made with ffmpeg from a shared clip: other containers, damaged and non-video files."""
    out = tmp_path_factory.mktemp("probe")
    clip = VIDEOS_DIR / "ffpp_634.mp4"  # 13.52 s, moov atom at the end
    files = {
        name: out / name
        for name in ("faststart.mp4", "clip.mkv", "clip.ts", "cover.png", "song.m4a", "still.jpg", "short.mp4")
    }
    ffmpeg("-i", str(clip), "-c", "copy", "-movflags", "+faststart", str(files["faststart.mp4"]))
    ffmpeg("-i", str(clip), "-c", "copy", str(files["clip.mkv"]))
    ffmpeg("-i", str(clip), "-c", "copy", str(files["clip.ts"]))
    ffmpeg("-i", str(clip), "-frames:v", "1", str(files["still.jpg"]))
    ffmpeg("-f", "lavfi", "-i", "color=c=red:s=64x64", "-frames:v", "1", str(files["cover.png"]))
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "sine=duration=2",
        "-i",
        str(files["cover.png"]),
        "-map",
        "0",
        "-map",
        "1",
        "-c:a",
        "aac",
        "-c:v",
        "png",
        "-disposition:v",
        "attached_pic",
        str(files["song.m4a"]),
    )
    ffmpeg("-i", str(clip), "-t", "2", "-c", "copy", str(files["short.mp4"]))
    data = files["faststart.mp4"].read_bytes()
    files["truncated_faststart.mp4"] = out / "truncated_faststart.mp4"
    files["truncated_faststart.mp4"].write_bytes(data[: len(data) // 2])
    files["header_only.mp4"] = out / "header_only.mp4"
    files["header_only.mp4"].write_bytes(clip.read_bytes()[:32] + bytes(range(256)) * 64)
    files["empty.mp4"] = out / "empty.mp4"
    files["empty.mp4"].write_bytes(b"")
    files["page.mp4"] = out / "page.mp4"
    files["page.mp4"].write_text("<!doctype html><html><body><video src='x.mp4'></video></body></html>\n" * 10)
    return files


@pytest.mark.parametrize(
    ("name", "container", "indexed"),
    [
        ("faststart.mp4", "mov,mp4", True),
        ("clip.mkv", "matroska", True),
        ("clip.ts", "mpegts", False),
    ],
)
def test_containers(made, name, container, indexed):
    info = probe_video(made[name])
    assert info.container.startswith(container)
    assert info.has_keyframe_index is indexed
    assert (info.width, info.height) == (1280, 720)
    assert info.duration_s == pytest.approx(13.52, abs=0.1)
    assert info.frame_count == 338


def test_to_dict_is_plain_data(made):
    info = probe_video(made["short.mp4"])
    assert info.to_dict()["frame_count"] == info.frame_count
    assert info.duration_s == pytest.approx(2, abs=0.1)


@pytest.mark.parametrize("name", ["text.mp4", "audio.mp4"])
def test_served_bad_files_are_not_videos(media_assets, name):
    with pytest.raises(NotAVideoError):
        probe_video(media_assets.files[name])


@pytest.mark.parametrize("name", ["empty.mp4", "page.mp4", "song.m4a", "still.jpg", "missing.mp4"])
def test_not_a_video(made, tmp_path, name):
    path = made.get(name, tmp_path / name)
    with pytest.raises(NotAVideoError) as info:
        probe_video(path)
    assert info.value.code == "not_a_video"


@pytest.mark.parametrize("name", ["playlist.m3u8", "playlist.mp4", "list.ffconcat"])
def test_files_listing_other_files_are_not_followed(made, tmp_path, name):
    """A downloaded "video" that is an HLS playlist or ffconcat script must not make FFmpeg open what it lists."""
    target = made["faststart.mp4"]
    if name.endswith("ffconcat"):
        text = f"ffconcat version 1.0\nfile '{target}'\n"
    else:
        text = f"#EXTM3U\n#EXT-X-TARGETDURATION:14\n#EXTINF:13.5,\nfile://{target}\n#EXT-X-ENDLIST\n"
    (tmp_path / name).write_text(text)
    with pytest.raises(NotAVideoError):
        probe_video(tmp_path / name)


def test_truncated_file_is_corrupt(media_assets):
    with pytest.raises(CorruptVideoError, match="mp4"):
        probe_video(media_assets.files["truncated.mp4"])


@pytest.mark.parametrize("name", ["truncated_faststart.mp4", "header_only.mp4"])
def test_damaged_files_are_corrupt(made, name):
    with pytest.raises(CorruptVideoError) as info:
        probe_video(made[name])
    assert info.value.code == "corrupt_video"


def test_duration_limit():
    clip = VIDEOS_DIR / "ffpp_519.mp4"  # 30.04 s
    with pytest.raises(TooLongError) as info:
        probe_video(clip, max_duration_s=5)
    assert info.value.code == "too_long"
    assert probe_video(clip, max_duration_s=31).duration_s == pytest.approx(30.04, abs=0.05)


def test_duration_limit_on_mpegts(made):
    """MPEG-TS has no duration field; FFmpeg estimates one from timestamps and the limit holds on it."""
    with pytest.raises(TooLongError):
        probe_video(made["clip.ts"], max_duration_s=10)
