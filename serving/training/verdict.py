"""What a trained model's scores mean: calibration, threshold and `uncertain` band fitted on its validation scores,
and the crop geometry of its training crops (the JSON fields the scanner reads)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from serving.metrics import threshold_metrics
from serving.registry import DEFAULT_CROP_MARGIN

THRESHOLD_RULE = (
    "equal error rate on the validation set: the score where the false-positive rate (real called "
    "fake) equals the false-negative rate (fake called real)"
)
MeasureCrop = Callable[[list[Path], int], dict]
"""(training crop paths, seed) → `{"margin": median crop side / face box side, ...}` (see scanner.geometry)."""


def verdict_fields(labels: np.ndarray, raw_scores: np.ndarray) -> dict:
    """Calibration fitted on the validation scores, then the threshold (equal error rate) and the `uncertain` band
    on the calibrated scale: the JSON fields `calibration`, `threshold`, `band`, plus `metrics`."""
    from serving.calibration import calibrate, choose_band, fit_platt

    calibration = fit_platt(labels, raw_scores)
    scores = calibrate(raw_scores, calibration)
    metrics = threshold_metrics(labels, scores)
    band = choose_band(labels, scores, metrics["threshold"])
    return {"calibration": calibration, "threshold": metrics["threshold"], "band": band, "metrics": metrics}


def crop_geometry(measure_crop: MeasureCrop | None, paths: list[Path], seed: int) -> dict:
    """The JSON field `crop`: measured by `measure_crop` (the scanner's detector), or the former default."""
    if measure_crop is None:
        return {
            "margin": DEFAULT_CROP_MARGIN,
            "note": "not measured (trained without the scanner's detector): the scanner's former default",
        }
    return measure_crop(paths, seed)
