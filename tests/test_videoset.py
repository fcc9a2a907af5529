"""Labelled video folders: reading, `mesoscan extract-faces` and video-level `mesoscan evaluate`."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from scanner.config import ScannerSettings
from scanner.pipeline import Scanner
from scanner.videoset import evaluate_videos, extract_faces, is_video_folder, read_videos
from serving.dataset import read_crops
from serving.errors import InvalidInputError
from tests.conftest import CROPS_DIR, VIDEOS_DIR, require_shared

PAIRS = ["ffpp_004.mp4", "ffpp_004_982_NT.mp4", "ffpp_519.mp4", "ffpp_519_515_DF.mp4"]


@pytest.fixture(scope="module")
def small_videos(tmp_path_factory):
    """Two real/fake pairs in labels.csv form (links to the shared clips)."""
    folder = tmp_path_factory.mktemp("videos")
    with (require_shared(VIDEOS_DIR) / "labels.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["filename"] in PAIRS]
    for row in rows:
        (folder / row["filename"]).symlink_to(VIDEOS_DIR / row["filename"])
    with (folder / "labels.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder


def test_read_the_shared_video_labels():
    videos = {v.path.name: v for v in read_videos(require_shared(VIDEOS_DIR))}
    assert len(videos) == 9
    assert sum(v.fake for v in videos.values()) == 5
    assert videos["ffpp_004_982_NT.mp4"].cluster == videos["ffpp_004.mp4"].cluster == "ffpp_004"
    assert videos["dfdc_yhffcuhhjy.mp4"].cluster == "wdpsifpppf"  # its original, absent from the folder


def test_real_and_fake_folders_and_what_a_folder_holds(tmp_path):
    for label, name in [("real", "ffpp_004.mp4"), ("fake", "ffpp_004_982_NT.mp4")]:
        (tmp_path / label).mkdir()
        (tmp_path / label / name).symlink_to(VIDEOS_DIR / name)
    videos = read_videos(tmp_path)
    assert [(v.path.name, v.fake) for v in videos] == [("ffpp_004.mp4", 0), ("ffpp_004_982_NT.mp4", 1)]
    assert is_video_folder(tmp_path)
    assert is_video_folder(VIDEOS_DIR)
    assert not is_video_folder(require_shared(CROPS_DIR))
    with pytest.raises(InvalidInputError, match="no labelled videos"):
        read_videos(tmp_path / "nothing")


def test_extract_faces_builds_a_training_set_of_the_scan_crops(small_videos, tmp_path, settings):
    scanner = Scanner(ScannerSettings(frames=4), serving_settings=settings)
    labels = extract_faces(small_videos, tmp_path / "set", scanner)
    crops = read_crops(tmp_path / "set")
    assert len(crops) >= 4 * len(PAIRS) - 1
    assert {c.cluster for c in crops} == {"ffpp_004", "ffpp_519"}  # fakes share their original's cluster
    rows = list(csv.DictReader(labels.open()))
    assert {r["source_video"] for r in rows} == set(PAIRS)
    first = np.asarray(Image.open(tmp_path / "set" / rows[0]["filename"]))
    assert first.shape == (256, 256, 3)
    # Exactly the crops a scan scores: the same frame's face from the scanner's own stream.
    from scanner.download import open_local_video

    video = next(v for v in read_videos(small_videos) if v.path.name == rows[0]["source_video"])
    with (
        open_local_video(video.path, scanner.settings) as opened,
        scanner.faces(opened.path, opened.info.index) as stream,
    ):
        streamed = [crops[0] for found in stream for _, crops in found]
    assert any(np.array_equal(first, crop) for crop in streamed)
    geometry = json.loads((tmp_path / "set" / "geometry.json").read_text())
    assert geometry["model"] == scanner.predictor.spec.name
    assert geometry["crop_margin"] == scanner.predictor.spec.crop_margin == scanner.margins[0]


def test_video_level_evaluation_scores_each_video_once_per_model(small_videos, tmp_path, settings):
    metrics, rows = evaluate_videos(
        small_videos,
        ["meso4_df", "mesoinception4_df"],
        ScannerSettings(frames=4),
        tmp_path / "report",
        serving_settings=settings,
    )
    assert [r["video"] for r in rows] == PAIRS
    for name in ("meso4_df", "mesoinception4_df"):
        m = metrics[name]
        assert m["videos"] == 4
        assert m["n"] == 4
        labels = [int(r["label"] == "FAKE") for r in rows]
        scores = [r[name]["fake_probability"] for r in rows]
        assert m["roc_auc"] == pytest.approx(roc_auc_score(labels, scores))
        assert m["fake_called_real"] == sum(1 for r in rows if r["label"] == "FAKE" and r[name]["label"] == "real")
    report = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert set(report) == {"meso4_df", "mesoinception4_df"}
    assert (tmp_path / "report" / "roc.png").stat().st_size > 1000
    assert json.loads((tmp_path / "report" / "videos.json").read_text()) == rows


def test_cli_evaluate_dispatches_on_what_the_folder_holds(small_videos, tmp_path):
    run = [sys.executable, "-m", "serving", "evaluate", "--model", "meso4_df"]
    videos = subprocess.run(
        [*run, "--data", str(small_videos), "--frames", "4"], capture_output=True, text=True, timeout=600
    )
    assert videos.returncode == 0, videos.stderr
    assert "ffpp_519_515_DF.mp4  FAKE" in videos.stdout
    assert "fake→real" in videos.stdout
    crops = subprocess.run(
        [*run, "--data", str(CROPS_DIR), "--split", "test"], capture_output=True, text=True, timeout=600
    )
    assert crops.returncode == 0, crops.stderr
    assert "meso4_df" in crops.stdout
    assert "ROC AUC" in crops.stdout
    extracted = subprocess.run(
        [
            sys.executable,
            "-m",
            "serving",
            "extract-faces",
            str(small_videos),
            "--out",
            str(tmp_path / "set"),
            "--frames",
            "2",
            "--model",
            "meso4_df",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert extracted.returncode == 0, extracted.stderr
    assert "faces from 4 videos" in extracted.stdout
    geometry = json.loads((tmp_path / "set" / "geometry.json").read_text())
    assert geometry["model"] == "meso4_df" and geometry["crop_margin"] == 1.18, "the chosen model's geometry"
