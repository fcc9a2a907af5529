"""Crop geometry of a training set, measured with the scanner's own face detector.

A model must see faces cut the way its training crops were cut. `measure_crop_margin` pads training crops with
black into a larger frame, finds the face in each with BlazeFace (the scan's detector and settings), and returns
the median of crop side / longer side of the detected box: the margin the scanner then cuts that model's faces with.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

SAMPLE = 200
PAD = 0.5
"""Black border on each side, as a fraction of the crop side (the detector needs context around a face)."""


def padded(image: np.ndarray, pad: float = PAD) -> tuple[np.ndarray, int]:
    """`image` centred in a black frame `pad` × its side wider on each side → (frame, crop side)."""
    side = max(image.shape[:2])
    border = round(pad * side)
    frame = np.zeros((image.shape[0] + 2 * border, image.shape[1] + 2 * border, 3), np.uint8)
    frame[border : border + image.shape[0], border : border + image.shape[1]] = image
    return frame, side


def crop_ratio(image: np.ndarray, detector) -> float | None:
    """Crop side / longer side of the most confident face found in the padded crop (None: no face found)."""
    frame, side = padded(image)
    detections = detector.detect(frame)
    if not detections:
        return None
    best = max(detections, key=lambda d: d.score)
    return side / max(best.box[2], best.box[3])


def measure_crop_margin(paths: list[Path], seed: int = 0, sample: int = SAMPLE, *, detector) -> dict:
    """The crop geometry of training crops `paths` (a seeded sample of `sample` of them), for the model's JSON,
    measured with the scanner's `detector` (a `FaceDetector` made from the command's settings)."""
    from PIL import Image

    chosen = sorted(paths) if len(paths) <= sample else sorted(random.Random(seed).sample(sorted(paths), sample))  # noqa: S311
    ratios = []
    for path in chosen:
        with Image.open(path) as im:
            ratio = crop_ratio(np.asarray(im.convert("RGB")), detector)
        if ratio is not None:
            ratios.append(ratio)
    if not ratios:
        from serving.errors import InvalidInputError

        raise InvalidInputError(f"no face found in any of {len(chosen)} training crops: cannot measure their margin")
    r = np.asarray(ratios)
    return {
        "margin": round(float(np.median(r)), 3),
        "p10": round(float(np.percentile(r, 10)), 3),
        "p90": round(float(np.percentile(r, 90)), 3),
        "measured": len(chosen),
        "faces_found": len(ratios),
        "note": (
            f"median crop side / longer side of BlazeFace's face box over {len(ratios)} of {len(chosen)} "
            "training crops (seeded sample), each padded with black and run through the scanner's "
            "detector"
        ),
    }
