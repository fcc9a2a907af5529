"""Face crops for the model: square with a margin, rotated upright on the eyes, resized to 256×256 RGB."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from scanner.blazeface import LEFT_EYE, RIGHT_EYE, Detection, check_frame
from serving.errors import InvalidInputError


@dataclass(eq=False)
class FaceCrop:
    """`image`: [256, 256, 3] uint8 RGB. `box`: (x, y, side, side) of the crop square in frame pixels, before it
    is turned by `angle_deg` about its centre (parts outside the frame are filled black)."""

    image: np.ndarray = field(repr=False)
    box: tuple[int, int, int, int]
    angle_deg: float


def eye_angle(detection: Detection) -> float:
    """Roll of the face in degrees: the angle of the line from the right eye to the left eye (0 when level;
    positive when the face leans clockwise in the image, whose y axis points down)."""
    (rx, ry), (lx, ly) = detection.keypoints[RIGHT_EYE], detection.keypoints[LEFT_EYE]
    return math.degrees(math.atan2(float(ly - ry), float(lx - rx)))


def cut_square(
    frame_rgb: np.ndarray, detection: Detection, margin: float = 1.3
) -> tuple[np.ndarray, tuple[int, int, int, int], float]:
    """The upright square around a face at the frame's own resolution: (image [S, S, 3], box, angle_deg).

    The side S is `margin` × the longer side of the detected box, centred on the box; the square's corner is put on
    whole pixels so that a level face is copied exactly, without resampling.
    """
    frame = check_frame(frame_rgb)
    if not (math.isfinite(margin) and margin > 0):
        raise InvalidInputError(f"crop margin must be a positive number, got {margin}")
    x, y, w, h = detection.box
    side = max(1, round(margin * max(w, h)))
    x0, y0 = round(x + w / 2 - side / 2), round(y + h / 2 - side / 2)
    angle = eye_angle(detection)
    import cv2

    # Map each crop pixel to the frame: rotate about the square's centre (pixel-index coordinates), no scaling.
    c = (side - 1) / 2
    cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    to_frame = np.array([[cos, -sin, x0 + c - (cos * c - sin * c)], [sin, cos, y0 + c - (sin * c + cos * c)]])
    square = cv2.warpAffine(
        frame,
        to_frame,
        (side, side),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )
    return square, (x0, y0, side, side), angle


def crop_face(frame_rgb: np.ndarray, detection: Detection, margin: float = 1.3) -> FaceCrop:
    """One detected face → the model's input (256×256 RGB uint8, resized by `serving.images.resize_face_numpy`)."""
    from serving.images import resize_face_numpy

    square, box, angle = cut_square(frame_rgb, detection, margin)
    return FaceCrop(image=resize_face_numpy(square), box=box, angle_deg=angle)


def select_faces(detections: Sequence[Detection], min_face_px: float) -> tuple[list[Detection], int]:
    """Keep faces whose detected box is at least `min_face_px` wide in the frame → (kept, how many skipped)."""
    kept = [d for d in detections if d.box[2] >= min_face_px]
    return kept, len(detections) - len(kept)
