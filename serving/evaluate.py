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
from serving.degrade import CROP_STEPS, Step, chain_text, degrade, require_steps
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
    data_dir: Path,
    split: str | None,
    model_names: list[str],
    settings: ServingSettings,
    rows: tuple[int, int] | None = None,
) -> list[LabelledCrop]:
    """The crops to evaluate: a labels.csv split, every crop, or (`val`) the trained models' validation split; with
    `rows`, only crops of those labels.csv data rows (1-based, inclusive).

    With `val`, the split is the first trained model's. Models that recorded no split (the authors' 2018 weights
    never saw these crops) are scored on it too; so are trained models validated on another split, but only if they
    never trained on one of the crops (`rows` can leave such crops out: models of earlier data on the newer rows).
    """
    if split != VALIDATION_SPLIT:
        crops = read_crops(data_dir, split)
    else:
        from serving.train import model_metadata, validation_crops

        recorded = {}
        for name in model_names:
            meta = model_metadata(name, settings)
            if meta is not None and "split" in meta.get("data", {}):
                recorded[name] = meta["data"]["split"]
        if not recorded:
            raise InvalidInputError(
                f"--split {VALIDATION_SPLIT}: none of {', '.join(model_names)} has a recorded "
                "validation split (only models from `mesoscan train` do): name one with them"
            )
        first = next(iter(recorded.values()))
        crops = validation_crops(data_dir, first)
    if rows:
        crops = [c for c in crops if c.row is not None and rows[0] <= c.row <= rows[1]]
        if not crops:
            raise InvalidInputError(f"{data_dir}: no crops to evaluate in rows {rows[0]}-{rows[1]}")
    if split == VALIDATION_SPLIT:
        for name, other in recorded.items():
            if other != first:
                _check_never_trained_on(crops, name, other, data_dir)
    return crops


def _check_never_trained_on(crops: list[LabelledCrop], name: str, split: dict, data_dir: Path) -> None:
    from serving.training.data import split_crops

    trained = {
        c.path
        for c in split_crops(
            data_dir,
            split["val_fraction"],
            split["seed"],
            split.get("limit"),
            tuple(split["rows"]) if split.get("rows") else None,
        )[0]
    }
    seen = sum(c.path in trained for c in crops)
    if seen:
        raise InvalidInputError(
            f"--split {VALIDATION_SPLIT}: {name} was validated on another split and trained on {seen} of these "
            f"{len(crops)} crops; --rows FIRST-LAST can leave them out"
        )


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
    rows: tuple[int, int] | None = None,
    degradation: tuple[Step, ...] = (),
) -> dict[str, dict]:
    """{model name: metrics} for every model on the same crops (decoded once, then put through `degradation`);
    files into `out_dir` if given."""
    if not model_names:
        raise InvalidInputError("name at least one model to evaluate")
    require_steps(degradation, CROP_STEPS, "a crop")
    crops = select_crops(Path(data_dir), split, model_names, settings, rows)
    labels = labels_of(crops)
    faces = load_crops(crops, settings)
    if degradation:
        faces = degrade(faces, degradation)
    scores, thresholds = score_models(faces, model_names, settings, tta)
    extra = {"rows": list(rows) if rows else None, "degrade": chain_text(degradation) or None}
    results = {
        name: {**score_metrics(labels, s, thresholds[name]), "tta": tta, "split": split, **extra}
        for name, s in scores.items()
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
