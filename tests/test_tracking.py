"""Person ids across sparse frames: synthetic box sequences and a real two-person frame made of two clips."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest

from scanner.blazeface import Detection, FaceDetector
from scanner.config import ScannerSettings
from scanner.tracking import FaceTracker, box_iou
from tests.conftest import VIDEOS_DIR, require_shared


def faces(*boxes) -> list[Detection]:
    return [Detection(box=tuple(float(v) for v in b), score=0.9, keypoints=np.zeros((6, 2), np.float32)) for b in boxes]


def test_box_iou():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (20, 20, 10, 10)) == 0.0


def test_ids_are_stable_for_still_faces_in_any_order():
    tracker = FaceTracker()
    a, b = (100, 100, 120, 120), (700, 120, 110, 110)
    assert tracker.assign(0.0, faces(a, b)) == [0, 1]
    assert tracker.assign(2.5, faces(b, a)) == [1, 0]
    assert tracker.assign(5.0, faces((110, 96, 118, 118), (690, 125, 112, 112))) == [0, 1]
    assert tracker.count == 2


def test_two_people_crossing_keep_their_ids():
    """They pass each other between two samples: only their motion tells who is who afterwards."""
    tracker = FaceTracker()
    for k in range(7):  # 100 px (under one face width) per sample; at k = 3 they are 30 px apart, at k = 4 past
        right_walker = (140 + 100 * k, 200, 110, 110)
        left_walker = (770 - 100 * k, 200, 110, 110)
        assert tracker.assign(1.5 * k, faces(right_walker, left_walker)) == [0, 1], k
        assert tracker.assign(1.5 * k + 0.5, []) == []  # a frame without faces changes nothing
    assert tracker.count == 2


def test_face_that_leaves_and_comes_back_nearby_keeps_its_id():
    tracker = FaceTracker()
    stays, leaves = (800, 150, 100, 100), (200, 160, 120, 120)
    assert tracker.assign(0, faces(stays, leaves)) == [0, 1]
    assert tracker.assign(2, faces(leaves, stays)) == [1, 0]
    assert tracker.assign(4, faces(stays)) == [0]
    assert tracker.assign(6, faces(stays)) == [0]
    assert tracker.assign(8, faces((240, 150, 125, 125), stays)) == [1, 0]  # back, 40 px from where it was
    assert tracker.count == 2


def test_new_person_gets_a_new_id():
    tracker = FaceTracker()
    assert tracker.assign(0, faces((100, 100, 100, 100))) == [0]
    assert tracker.assign(1, faces((105, 100, 100, 100), (600, 300, 90, 90))) == [0, 1]
    assert tracker.assign(2, faces((1000, 100, 100, 100), (110, 100, 100, 100), (600, 305, 90, 90))) == [2, 0, 1]
    assert tracker.assign(3, []) == []
    assert tracker.count == 3


def test_far_jump_or_a_very_different_size_is_another_person():
    tracker = FaceTracker()
    assert tracker.assign(0, faces((100, 100, 100, 100))) == [0]
    assert tracker.assign(1, faces((400, 100, 100, 100))) == [1]  # three face widths away
    assert tracker.assign(2, faces((390, 80, 300, 300))) == [2]  # three times larger
    assert tracker.count == 3


def test_retired_tracks_after_a_long_gap():
    tracker = FaceTracker(max_gap_s=5)
    assert tracker.assign(0, faces((100, 100, 100, 100))) == [0]
    assert tracker.assign(4, faces((100, 100, 100, 100))) == [0]
    assert tracker.assign(10, faces((100, 100, 100, 100))) == [1]


def test_time_must_not_go_back():
    tracker = FaceTracker()
    tracker.assign(2.0, faces((0, 0, 50, 50)))
    with pytest.raises(ValueError, match="time order"):
        tracker.assign(1.0, faces((0, 0, 50, 50)))


@cache
def clip_frames(name: str, count: int = 5) -> tuple[np.ndarray, ...]:
    import av

    with av.open(str(require_shared(VIDEOS_DIR / name))) as container:
        frames = list(container.decode(video=0))
    picks = np.linspace(0, len(frames) - 1, count).round().astype(int)
    return tuple(frames[i].to_ndarray(format="rgb24") for i in picks)


def test_two_people_side_by_side_in_real_frames():
    """Two 720p clips of different people, each cut to its 640 px around the face, side by side: 1280×720."""
    detector = FaceDetector("full", min_score=ScannerSettings().min_detection_score)
    tracker = FaceTracker()
    left_ids, right_ids = set(), set()
    for step, (left, right) in enumerate(zip(clip_frames("ffpp_004.mp4"), clip_frames("ffpp_634.mp4"), strict=True)):
        frame = np.concatenate([left[:, 460:1100], right[:, 350:990]], axis=1)
        found = detector.detect(frame)
        assert len(found) == 2, (step, [d.box for d in found])
        ids = tracker.assign(2.5 * step, found)
        for detection, person in zip(found, ids, strict=True):
            (left_ids if detection.centre[0] < 640 else right_ids).add(person)
    assert len(left_ids) == 1 and len(right_ids) == 1 and left_ids != right_ids
    assert tracker.count == 2
