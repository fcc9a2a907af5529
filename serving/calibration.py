"""Calibrated verdicts: Platt scaling of a model's fake probability, and the `uncertain` band chosen on validation.

Platt scaling maps a raw score p to sigmoid(a · logit(p) + b), with a and b fitted by maximum likelihood on the
model's validation split. It is monotone (a > 0), so ROC AUC and the ranking of faces do not change; what changes is
that a calibrated 0.8 means "about 8 in 10 such faces are fake" on data like the validation set. The same mapping
runs inside the model (`CalibrationLayer`, so every backend and the exported SavedModel return calibrated scores)
and in numpy (`calibrate`), for the few places that combine scores outside a model.

The band rule: the smallest symmetric band around the threshold such that, on the validation crops outside it,
calls of `fake` and calls of `real` are each right at least `target` of the time, among the bands that still leave
at least `MIN_DECIDED` of the crops decided (a band that calls almost nothing tells a user nothing). When none of
them reaches the target, the one with the best worse-side precision is kept, and the record says the target was
not met.
"""

from __future__ import annotations

import math

import numpy as np

EPS = 1e-6
MAX_BAND = 0.45
MIN_DECIDED = 0.2
BAND_STEP = 0.0025
BAND_TARGET = 0.9
BAND_RULE = (
    "the smallest band around the threshold (calibrated scale), among those that leave at least "
    f"{MIN_DECIDED:.0%} of the validation crops decided, outside which `fake` calls and `real` calls are each "
    "right at least {target:.0%} of the time; if none reaches that, the one with the best worse-side "
    "precision"
)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def calibrate(scores: np.ndarray, calibration: dict | None) -> np.ndarray:
    """`scores` mapped by a stored calibration (`{"method": "platt", "a": .., "b": ..}`); None: unchanged."""
    scores = np.asarray(scores, np.float32)
    if not calibration:
        return scores
    z = calibration["a"] * _logit(scores) + calibration["b"]
    return (1 / (1 + np.exp(-z))).astype(np.float32)


def _nll(labels: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, EPS, 1 - EPS)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log1p(-p)))


def expected_calibration_error(labels: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Mean |observed fake rate − mean score| over equal-width score bins, weighted by their counts."""
    labels, p = np.asarray(labels, np.float64), np.asarray(p, np.float64)
    which = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.sum() * abs(labels[mask].mean() - p[mask].mean())
    return float(total / max(len(p), 1))


def fit_platt(labels: np.ndarray, scores: np.ndarray) -> dict:
    """Platt scaling fitted on (labels, raw scores), with the fit's effect on log loss and calibration error."""
    from scipy.optimize import minimize

    labels = np.asarray(labels, np.float64)
    z = _logit(scores)

    def loss(params: np.ndarray) -> tuple[float, np.ndarray]:
        a, b = params
        q = 1 / (1 + np.exp(-(a * z + b)))
        q = np.clip(q, EPS, 1 - EPS)
        value = -np.mean(labels * np.log(q) + (1 - labels) * np.log1p(-q))
        grad = np.array([np.mean((q - labels) * z), np.mean(q - labels)])
        return value, grad

    result = minimize(loss, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B", bounds=[(1e-3, 100), (-50, 50)])
    a, b = (float(v) for v in result.x)
    fitted = {"method": "platt", "a": a, "b": b}
    after = calibrate(scores, fitted)
    raw = np.asarray(scores, np.float64)
    return {
        **fitted,
        "fitted_on": "validation split",
        "n": len(labels),
        "log_loss_before": round(_nll(labels, raw), 6),
        "log_loss_after": round(_nll(labels, after), 6),
        "ece_before": round(expected_calibration_error(labels, raw), 6),
        "ece_after": round(expected_calibration_error(labels, after), 6),
    }


def label_outcomes(labels: np.ndarray, scores: np.ndarray, threshold: float, band: float) -> dict:
    """How the labels come out on (labels, calibrated scores): per label, how many crops get it and how often it is
    right, and the share left `uncertain`."""
    labels, scores = np.asarray(labels), np.asarray(scores, np.float64)
    fake = scores >= threshold + band
    real = scores < threshold - band
    n = max(len(labels), 1)

    def side(mask: np.ndarray, truth: int) -> dict:
        count = int(mask.sum())
        right = int((labels[mask] == truth).sum())
        return {"n": count, "right": right, "precision": round(right / count, 4) if count else None}

    return {
        "fake": side(fake, 1),
        "real": side(real, 0),
        "uncertain": {
            "n": int(n - fake.sum() - real.sum()),
            "share": round(float(1 - (fake.sum() + real.sum()) / n), 4),
        },
    }


def choose_band(labels: np.ndarray, scores: np.ndarray, threshold: float, target: float = BAND_TARGET) -> dict:
    """The `uncertain` band by the rule above, with the outcomes it gives on these crops."""
    best = None
    for band in np.arange(0.0, MAX_BAND + BAND_STEP / 2, BAND_STEP):
        band = round(float(band), 4)
        if threshold - band <= 0 and threshold + band >= 1:
            break
        out = label_outcomes(labels, scores, threshold, band)
        precisions = [out[k]["precision"] for k in ("fake", "real")]
        worse = min((p for p in precisions if p is not None), default=0.0)
        if 1 - out["uncertain"]["share"] < MIN_DECIDED:
            break
        if None not in precisions and worse >= target:
            return _band_choice(band, target, True, out)
        if best is None or worse > best[0] + 1e-9:
            best = (worse, band, out)
    worse, band, out = best if best is not None else (0.0, 0.0, label_outcomes(labels, scores, threshold, 0.0))
    return _band_choice(band, target, False, out)


def _band_choice(band: float, target: float, met: bool, outcomes: dict) -> dict:
    """The JSON field `band` of a model: the band, the rule that chose it and how the labels fared on validation."""
    return {
        "band": band,
        "target": target,
        "target_met": met,
        "rule": BAND_RULE.format(target=target),
        "validation": outcomes,
    }


def threshold_after(calibration: dict | None, threshold: float) -> float:
    """A raw-scale threshold on the calibrated scale (the mapping is monotone, so calls do not change)."""
    return float(calibrate(np.array([threshold]), calibration)[0]) if calibration else threshold


def layer(calibration: dict, name: str = "fake_probability"):
    """A Keras layer applying `calibration` to a [N] probability (the model's final layer)."""
    import keras

    @keras.saving.register_keras_serializable(package="mesoscan")
    class CalibrationLayer(keras.layers.Layer):
        def __init__(self, a: float, b: float, **kwargs):
            super().__init__(**kwargs)
            self.a, self.b = float(a), float(b)

        def call(self, p):
            from keras import ops

            p = ops.clip(ops.cast(p, "float32"), EPS, 1 - EPS)
            return ops.sigmoid(self.a * (ops.log(p) - ops.log1p(-p)) + self.b)

        def get_config(self):
            return {**super().get_config(), "a": self.a, "b": self.b}

    if calibration.get("method") != "platt" or not all(math.isfinite(calibration[k]) for k in ("a", "b")):
        raise ValueError(f"unsupported calibration {calibration!r}")
    return CalibrationLayer(calibration["a"], calibration["b"], name=name)
