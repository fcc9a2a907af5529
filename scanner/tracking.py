"""Person identities across sparsely sampled frames, from face boxes alone (overlap, position, size)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from scanner.blazeface import Detection

_FORBIDDEN = 1e9


@dataclass
class _Track:
    id: int
    box: tuple[float, float, float, float]
    t: float
    velocity: tuple[float, float] = (0.0, 0.0)
    """Centre motion in pixels per second between the track's last two sightings."""


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two (x, y, w, h) boxes."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def _centre(box: Sequence[float]) -> tuple[float, float]:
    return box[0] + box[2] / 2, box[1] + box[3] / 2


class FaceTracker:
    """Gives each detected face a person id, stable across calls for one video.

    A face continues a person's track when it overlaps the track's last box (IoU ≥ `min_iou`) or its centre lies
    within `max_distance` face widths of the track's last centre or of where the track's last motion would have
    taken it; its width must be within a factor `max_scale_change` of the track's. Faces and tracks are paired by
    the Hungarian method (scipy) on cost = distance in face widths + (1 - IoU); unpaired faces start new ids.
    Tracks unseen for more than `max_gap_s` seconds are retired (never, by default: a person who leaves and comes
    back to the same place keeps their id). Ids count from 0 in order of appearance.
    """

    def __init__(
        self,
        min_iou: float = 0.3,
        max_distance: float = 1.0,
        max_scale_change: float = 2.0,
        max_gap_s: float | None = None,
    ):
        self.min_iou = min_iou
        self.max_distance = max_distance
        self.max_scale_change = max_scale_change
        self.max_gap_s = max_gap_s
        self._tracks: list[_Track] = []
        self._last_t: float | None = None

    @property
    def count(self) -> int:
        """How many distinct persons have been seen."""
        return len(self._tracks)

    def _cost(self, track: _Track, box: Sequence[float], t: float) -> float:
        width = (track.box[2] + box[2]) / 2
        if width <= 0 or max(track.box[2], box[2]) > self.max_scale_change * min(track.box[2], box[2]):
            return _FORBIDDEN
        (cx, cy), (tx, ty) = _centre(box), _centre(track.box)
        dt = t - track.t
        px, py = tx + track.velocity[0] * dt, ty + track.velocity[1] * dt
        distance = min(math.hypot(cx - tx, cy - ty), math.hypot(cx - px, cy - py)) / width
        overlap = box_iou(track.box, box)
        if overlap < self.min_iou and distance > self.max_distance:
            return _FORBIDDEN
        return distance + (1.0 - overlap)

    def assign(self, t: float, detections: Sequence[Detection]) -> list[int]:
        """Person ids for the faces of the frame at time `t` (seconds, not decreasing between calls), in order."""
        if self._last_t is not None and t < self._last_t:
            raise ValueError(f"frames must come in time order: got t={t} after t={self._last_t}")
        self._last_t = t
        boxes = [tuple(float(v) for v in d.box) for d in detections]
        live = [k for k, tr in enumerate(self._tracks) if self.max_gap_s is None or t - tr.t <= self.max_gap_s]
        ids: list[int | None] = [None] * len(boxes)
        if live and boxes:
            from scipy.optimize import linear_sum_assignment

            cost = np.array([[self._cost(self._tracks[k], box, t) for box in boxes] for k in live])
            for row, col in zip(*linear_sum_assignment(cost), strict=True):
                if cost[row, col] < _FORBIDDEN:
                    self._update(self._tracks[live[row]], boxes[col], t)
                    ids[col] = self._tracks[live[row]].id
        for col, box in enumerate(boxes):
            if ids[col] is None:
                self._tracks.append(_Track(id=len(self._tracks), box=box, t=t))
                ids[col] = self._tracks[-1].id
        return ids

    @staticmethod
    def _update(track: _Track, box: tuple[float, ...], t: float) -> None:
        dt = t - track.t
        if dt > 0:
            (cx, cy), (tx, ty) = _centre(box), _centre(track.box)
            track.velocity = ((cx - tx) / dt, (cy - ty) / dt)
        track.box, track.t = box, t
