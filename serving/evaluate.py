"""Crop-level evaluation: score a labelled crops folder with one or more models and report ROC AUC and more."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serving.config import ServingSettings, get_settings
from serving.errors import InvalidInputError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


@dataclass(frozen=True)
class LabelledCrop:
    path: Path
    fake: int
    """1 for FAKE, 0 for REAL."""
    cluster: str
    split: str | None


def read_crops(data_dir: Path, split: str | None = None) -> list[LabelledCrop]:
    """Crops of `data_dir`: from `labels.csv` (`filename,label[,cluster][,split]`) or `real/` and `fake/` folders.

    With `labels.csv`, a file is looked up beside it or in the folder named by its split (`train/`, `test/`).
    """
    data_dir = Path(data_dir)
    labels = data_dir / "labels.csv"
    crops: list[LabelledCrop] = []
    if labels.is_file():
        with labels.open(newline="") as f:
            for row in csv.DictReader(f):
                row_split = row.get("split") or None
                if split is not None and row_split != split:
                    continue
                label = row["label"].strip().upper()
                if label not in {"REAL", "FAKE"}:
                    raise InvalidInputError(f"{labels}: label {row['label']!r} is neither REAL nor FAKE")
                path = data_dir / row["filename"]
                if not path.is_file() and row_split:
                    path = data_dir / row_split / row["filename"]
                crops.append(LabelledCrop(path, int(label == "FAKE"), row.get("cluster") or row["filename"],
                                          row_split))
    else:
        for label in ("real", "fake"):
            folder = data_dir / label
            for path in sorted(folder.rglob("*")) if folder.is_dir() else []:
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    crops.append(LabelledCrop(path, int(label == "fake"), path.stem, split))
    if not crops:
        raise InvalidInputError(f"{data_dir}: no labelled crops found (need labels.csv, or real/ and fake/ folders)"
                                + (f" for split {split!r}" if split else ""))
    return crops


def load_crops(crops: list[LabelledCrop]) -> np.ndarray:
    from serving.images import load_face

    return np.stack([load_face(c.path) for c in crops])


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


def evaluate_crops(data_dir: Path, model_names: list[str], split: str | None = None,
                   settings: ServingSettings | None = None) -> dict[str, dict]:
    """{model name: metrics} for every model on the same crops (decoded once)."""
    from serving.predictor import get_predictor

    settings = settings or get_settings()
    crops = read_crops(data_dir, split)
    faces = load_crops(crops)
    labels = np.array([c.fake for c in crops])
    results = {}
    for name in model_names:
        with get_predictor(name, settings) as predictor:
            scores = predictor.predict(faces)
            results[name] = score_metrics(labels, scores, predictor.spec.threshold)
    return results


def format_table(metrics: dict[str, dict]) -> str:
    lines = [f"{'model':<24} {'n':>6} {'ROC AUC':>8} {'EER':>7} {'accuracy':>9} {'threshold':>10}"]
    for name, m in metrics.items():
        lines.append(f"{name:<24} {m['n']:>6} {m['roc_auc']:>8.3f} {m['eer']:>7.3f} {m['accuracy']:>9.3f} "
                     f"{m['threshold']:>10.3f}")
    return "\n".join(lines)
