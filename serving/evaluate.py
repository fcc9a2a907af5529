"""Crop-level evaluation: score a labelled crops folder with one or more models and report ROC AUC and more.

`evaluate_crops` decodes the crops once, scores them with every model (optionally averaging each score with
that of the horizontally flipped crop), and with `out_dir` writes `metrics.json` (`{"<model>": {"roc_auc",
"eer", "accuracy", "threshold", "n", ...}}`), `scores.csv` (one row per crop, one column per model), `roc.png`
(all models) and `hist_<model>.png` (score histograms of real and fake crops with the model's threshold).
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np

from serving.config import ServingSettings
from serving.dataset import IMAGE_SUFFIXES, LabelledCrop, decode_crops, labels_of, read_crops
from serving.errors import InvalidInputError
from serving.metrics import equal_error_rate, score_metrics

__all__ = [
    "IMAGE_SUFFIXES",
    "LabelledCrop",
    "equal_error_rate",
    "evaluate_crops",
    "format_table",
    "load_crops",
    "read_crops",
    "score_metrics",
]

VALIDATION_SPLIT = "val"
"""`--split val`: the validation split the trained models recorded (the other models are scored on it too)."""
CACHE_FROM = 500
"""Sets of at least this many crops are decoded into the on-disk cache (smaller ones stay in memory)."""


def load_crops(crops: list[LabelledCrop], settings: ServingSettings) -> np.ndarray:
    """[N, 256, 256, 3] uint8 faces of `crops`, from the decode cache for large sets."""
    cache = settings.models_dir / "cache" if len(crops) >= CACHE_FROM else None
    return decode_crops(crops, cache)


def select_crops(
    data_dir: Path, split: str | None, model_names: list[str], settings: ServingSettings
) -> list[LabelledCrop]:
    """The crops to evaluate: a labels.csv split, every crop, or (`val`) the trained models' validation split.

    With `val`, models that recorded no split (the authors' 2018 weights never saw these crops) are scored on the
    split the trained models in the list share, so every model is compared on the same crops.
    """
    if split != VALIDATION_SPLIT:
        return read_crops(data_dir, split)
    from serving.train import model_metadata, validation_crops

    recorded = []
    for name in model_names:
        meta = model_metadata(name, settings)
        if meta is not None and "split" in meta.get("data", {}):
            recorded.append(meta["data"]["split"])
    if not recorded:
        raise InvalidInputError(
            f"--split {VALIDATION_SPLIT}: none of {', '.join(model_names)} has a recorded "
            "validation split (only models from `mesoscan train` do): name one with them"
        )
    if any(s != recorded[0] for s in recorded[1:]):
        raise InvalidInputError(f"--split {VALIDATION_SPLIT}: the models were validated on different splits")
    return validation_crops(data_dir, recorded[0])


def score_models(
    faces: np.ndarray, model_names: list[str], settings: ServingSettings, tta: bool = False
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """({model: fake probabilities}, {model: threshold}); with `tta`, each score is averaged with the flipped crop's."""
    from serving.predictor import get_predictor

    scores, thresholds = {}, {}
    for name in model_names:
        with get_predictor(name, settings) as predictor:
            s = predictor.predict(faces)
            if tta:
                s = (s + predictor.predict(np.ascontiguousarray(faces[:, :, ::-1]))) / 2
            scores[name], thresholds[name] = s, predictor.spec.threshold
    return scores, thresholds


def evaluate_crops(
    data_dir: Path,
    model_names: list[str],
    split: str | None = None,
    *,
    settings: ServingSettings,
    tta: bool = False,
    out_dir: Path | None = None,
) -> dict[str, dict]:
    """{model name: metrics} for every model on the same crops (decoded once); files into `out_dir` if given."""
    if not model_names:
        raise InvalidInputError("name at least one model to evaluate")
    crops = select_crops(Path(data_dir), split, model_names, settings)
    labels = labels_of(crops)
    scores, thresholds = score_models(load_crops(crops, settings), model_names, settings, tta)
    results = {
        name: {**score_metrics(labels, s, thresholds[name]), "tta": tta, "split": split} for name, s in scores.items()
    }
    if out_dir is not None:
        write_report(Path(out_dir), crops, labels, scores, results)
    return results


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def write_report(
    out_dir: Path,
    crops: list[LabelledCrop],
    labels: np.ndarray,
    scores: dict[str, np.ndarray],
    metrics: dict[str, dict],
) -> list[Path]:
    """metrics.json, scores.csv, roc.png and one hist_<model>.png per model; returns the paths written."""
    from matplotlib.figure import Figure
    from sklearn.metrics import roc_curve

    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "metrics.json", out_dir / "scores.csv", out_dir / "roc.png"]
    written[0].write_text(json.dumps(metrics, indent=2) + "\n")
    with written[1].open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "cluster", *scores])
        for i, crop in enumerate(crops):
            writer.writerow(
                [
                    str(crop.path),
                    "FAKE" if crop.fake else "REAL",
                    crop.cluster,
                    *(f"{s[i]:.9g}" for s in scores.values()),
                ]
            )  # float32 exactly

    fig = Figure(figsize=(6, 6))
    ax = fig.subplots()
    for name, s in scores.items():
        if len(set(labels.tolist())) == 2:
            fpr, tpr, _ = roc_curve(labels, s)
            ax.plot(fpr, tpr, label=f"{name} (AUC {metrics[name]['roc_auc']:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(
        xlabel="false positive rate (real called fake)",
        ylabel="true positive rate (fake called fake)",
        title=f"ROC, {len(labels)} crops",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    ax.legend(loc="lower right", fontsize="small")
    fig.savefig(written[2], dpi=100, bbox_inches="tight")

    bins = np.linspace(0, 1, 41)
    for name, s in scores.items():
        fig = Figure(figsize=(7, 4))
        ax = fig.subplots()
        ax.hist(s[labels == 0], bins=bins, alpha=0.6, label=f"real ({int((labels == 0).sum())})", color="tab:blue")
        ax.hist(s[labels == 1], bins=bins, alpha=0.6, label=f"fake ({int(labels.sum())})", color="tab:red")
        ax.axvline(
            metrics[name]["threshold"],
            color="black",
            linestyle="--",
            linewidth=1,
            label=f"threshold {metrics[name]['threshold']:.3f}",
        )
        ax.set(xlabel="fake probability", ylabel="crops", title=name, xlim=(0, 1))
        ax.legend(fontsize="small")
        path = out_dir / f"hist_{_file_stem(name)}.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        written.append(path)
    return written


def format_table(metrics: dict[str, dict]) -> str:
    """A terminal table; TP/FN/TN/FP count fakes as positives, at each model's threshold."""
    lines = [
        f"{'model':<24} {'n':>6} {'ROC AUC':>8} {'EER':>7} {'accuracy':>9} {'threshold':>10} "
        f"{'TP':>6} {'FN':>6} {'TN':>6} {'FP':>6}"
    ]
    for name, m in metrics.items():
        c = m["confusion"]
        lines.append(
            f"{name:<24} {m['n']:>6} {m['roc_auc']:>8.3f} {m['eer']:>7.3f} {m['accuracy']:>9.3f} "
            f"{m['threshold']:>10.3f} {c['true_fake']:>6} {c['false_real']:>6} {c['true_real']:>6} "
            f"{c['false_fake']:>6}"
        )
    return "\n".join(lines)
