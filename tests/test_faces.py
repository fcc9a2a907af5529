"""Face crops: square with margin, upright on the eyes, 256×256 by the project's resize; too-small faces skipped."""

from __future__ import annotations

import math
from functools import cache

import cv2
import numpy as np
import pytest

from scanner.blazeface import LEFT_EYE, RIGHT_EYE, Detection, FaceDetector
from scanner.config import ScannerSettings
from scanner.faces import crop_face, cut_square, eye_angle, select_faces
from serving.errors import InvalidInputError
from serving.images import resize_face, resize_face_numpy
from tests.conftest import VIDEOS_DIR, require_shared


@cache
def frame_of(name: str, index: int = 0) -> np.ndarray:
    import av

    with av.open(str(require_shared(VIDEOS_DIR / name))) as container:
        for k, frame in enumerate(container.decode(video=0)):
            if k == index:
                return frame.to_ndarray(format="rgb24")
    raise AssertionError(f"{name} has no frame {index}")


@cache
def detector() -> FaceDetector:
    return FaceDetector("full", min_score=ScannerSettings().min_detection_score)


def face(box, right_eye, left_eye, score=0.9) -> Detection:
    keypoints = np.zeros((6, 2), np.float32)
    keypoints[RIGHT_EYE], keypoints[LEFT_EYE] = right_eye, left_eye
    return Detection(box=box, score=score, keypoints=keypoints)


def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_level_face_is_copied_exactly():
    frame = noise(300, 400)
    square, box, angle = cut_square(frame, face((100, 50, 80, 80), (120, 80), (160, 80)), margin=1.3)
    assert angle == 0
    assert box == (88, 38, 104, 104)  # side 1.3 × 80 = 104, centred on (140, 90)
    np.testing.assert_array_equal(square, frame[38:142, 88:192])


def test_margin_scales_the_longer_side():
    frame = noise(300, 400)
    _, box, _ = cut_square(frame, face((100, 50, 60, 90), (120, 80), (150, 80)), margin=2.0)
    assert box[2:] == (180, 180)
    assert (box[0] + 90, box[1] + 90) == (130, 95)


def test_tilted_face_is_turned_upright():
    upright = np.zeros((200, 200, 3), np.uint8)
    cv2.rectangle(upright, (40, 60), (90, 80), (255, 0, 0), -1)  # "eyes" and "mouth": asymmetric shapes
    cv2.circle(upright, (140, 70), 15, (0, 255, 0), -1)
    cv2.rectangle(upright, (70, 140), (130, 150), (0, 0, 255), -1)
    tilt = 25.0
    frame = np.zeros((400, 400, 3), np.uint8)
    frame[100:300, 100:300] = upright
    # Turn the picture about its centre so that the eye line points 25° below the x axis (y down).
    turn = cv2.getRotationMatrix2D((199.5, 199.5), -tilt, 1.0)
    frame = cv2.warpAffine(frame, turn, (400, 400), flags=cv2.INTER_LINEAR)
    eyes = cv2.transform(np.array([[[165.0, 170.0], [240.0, 170.0]]]), turn)[0]
    detection = face((200 - 77, 200 - 77, 154, 154), eyes[0], eyes[1])
    assert eye_angle(detection) == pytest.approx(tilt, abs=1e-4)

    square, box, angle = cut_square(detection=detection, frame_rgb=frame, margin=200 / 154)
    assert box == (100, 100, 200, 200) and angle == pytest.approx(tilt)
    assert np.abs(square.astype(int) - upright).mean() < 1  # resampling blurs the edges a little
    unturned = frame[100:300, 100:300]
    assert np.abs(unturned.astype(int) - upright).mean() > 5


def test_face_at_the_frame_edge_is_filled_black():
    frame = np.full((200, 300, 3), 200, np.uint8)
    square, box, _ = cut_square(frame, face((-20, -10, 60, 60), (0, 10), (20, 10)), margin=1.5)
    assert box == (-35, -25, 90, 90)
    assert square.shape == (90, 90, 3)
    assert (square[:25] == 0).all() and (square[:, :35] == 0).all()
    assert (square[25:, 35:] == 200).all()


def test_crop_face_uses_the_project_resize():
    frame = noise(480, 640, seed=1)
    detection = face((200, 100, 200, 200), (250, 160), (350, 160))
    crop = crop_face(frame, detection, margin=1.28)  # side exactly 256: no resampling at all
    assert crop.image.shape == (256, 256, 3) and crop.image.dtype == np.uint8
    assert crop.box == (172, 72, 256, 256)
    np.testing.assert_array_equal(crop.image, frame[72:328, 172:428])

    small = crop_face(frame, face((300, 200, 80, 80), (320, 230), (360, 230)), margin=1.3)
    assert small.box == (288, 188, 104, 104)
    np.testing.assert_array_equal(small.image, resize_face_numpy(frame[188:292, 288:392]))
    assert np.abs(small.image.astype(int) - resize_face(frame[188:292, 288:392])).max() <= 1


@pytest.mark.parametrize("margin", [0, -1.0, float("nan")])
def test_bad_margin_is_refused(margin):
    with pytest.raises(InvalidInputError, match="margin"):
        cut_square(noise(100, 100), face((10, 10, 50, 50), (20, 30), (40, 30)), margin=margin)


def test_bad_frame_is_refused():
    with pytest.raises(InvalidInputError, match="RGB uint8"):
        crop_face(np.zeros((100, 100), np.uint8), face((10, 10, 50, 50), (20, 30), (40, 30)))


def test_select_faces_by_width():
    faces = [face((0, 0, w, w), (0, 0), (1, 0)) for w in (30, 47.9, 48, 100)]
    kept, skipped = select_faces(faces, min_face_px=48)
    assert [f.box[2] for f in kept] == [48, 100]
    assert skipped == 2
    assert select_faces([], 48) == ([], 0)


def test_real_face_crop_shows_an_upright_face():
    frame = frame_of("ffpp_634.mp4")
    (found,) = detector().detect(frame)
    crop = crop_face(frame, found, margin=1.3)
    (again,) = detector().detect(crop.image)
    assert abs(eye_angle(again)) < 5
    assert 256 / 1.3 * 0.75 < again.box[2] < 256 / 1.3 * 1.25
    cx, cy = again.centre
    assert abs(cx - 128) < 30 and abs(cy - 128) < 30


def test_rolled_real_face_is_turned_upright():
    frame = frame_of("ffpp_519.mp4")
    height, width = frame.shape[:2]
    turn = cv2.getRotationMatrix2D((width / 2, height / 2), -20, 1.0)  # 20° clockwise on screen
    rolled = cv2.warpAffine(frame, turn, (width, height))
    (upright,), (tilted,) = detector().detect(frame), detector().detect(rolled)
    assert eye_angle(tilted) - eye_angle(upright) == pytest.approx(20, abs=6)

    crop = crop_face(rolled, tilted, margin=1.3)
    assert crop.angle_deg == pytest.approx(eye_angle(tilted))
    (again,) = detector().detect(crop.image)
    assert abs(eye_angle(again)) < 6
    assert math.isfinite(crop.angle_deg)
