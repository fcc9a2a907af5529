"""Detection metrics of scores against labels: ROC AUC, equal error rate, accuracy and confusion at a threshold."""

from __future__ import annotations

import numpy as np

from serving.errors import InvalidInputError


def equal_error_rate(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(EER, the threshold where false positive and false negative rates meet)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thresholds = roc_curve(labels, scores)
    fnr = 1 - tpr
    i = int(np.nanargmin(np.abs(fnr - fpr)))
    return float((fpr[i] + fnr[i]) / 2), float(min(thresholds[i], 1.0))


def score_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    from sklearn.metrics import roc_auc_score

    both = len(set(labels.tolist())) == 2
    eer, eer_threshold = equal_error_rate(labels, scores) if both else (float("nan"), float("nan"))
    predicted = scores >= threshold
    return {
        "roc_auc": float(roc_auc_score(labels, scores)) if both else float("nan"),
        "eer": eer,
        "eer_threshold": eer_threshold,
        "accuracy": float(np.mean(predicted == labels.astype(bool))),
        "threshold": threshold,
        "n": len(labels),
        "n_fake": int(labels.sum()),
        "confusion": {
            "true_fake": int(np.sum(predicted & (labels == 1))),
            "false_fake": int(np.sum(predicted & (labels == 0))),
            "true_real": int(np.sum(~predicted & (labels == 0))),
            "false_real": int(np.sum(~predicted & (labels == 1))),
        },
    }


def threshold_metrics(labels: np.ndarray, scores: np.ndarray) -> dict:
    """Validation metrics with the threshold chosen at the equal error rate."""
    if len(set(labels.tolist())) < 2:
        raise InvalidInputError("the validation split needs both REAL and FAKE crops to choose a threshold")
    _, threshold = equal_error_rate(labels, scores)
    return score_metrics(labels, scores, threshold)
