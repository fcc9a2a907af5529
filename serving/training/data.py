"""A run's crops: read (never rows of split `test`), split into training and validation by cluster, decoded once.

The split is a function of the crops folder, the validation fraction, the seed, the crop limit and the labels.csv
rows: a model records these (`split` in its JSON), so its validation crops can be derived again later and checked
(`validation_crops`) by evaluation, recalibration and ensembles.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serving.config import ServingSettings
from serving.dataset import (
    LabelledCrop,
    decode_crops,
    file_list_key,
    labels_of,
    read_crops,
    split_by_cluster,
    subsample_clusters,
)
from serving.errors import InvalidInputError

EXCLUDED_SPLITS = ("test",)


@dataclass
class TrainingData:
    crops: list[LabelledCrop]
    """Training crops first, then validation crops; `faces` rows follow the same order."""
    faces: np.ndarray
    labels: np.ndarray
    n_train: int
    split: dict
    """How the split was made (the model's JSON `data.split`)."""
    summary: dict
    """What the crops are (the rest of the model's JSON `data`)."""

    @property
    def train_index(self) -> np.ndarray:
        return np.arange(self.n_train)

    @property
    def val_index(self) -> np.ndarray:
        return np.arange(self.n_train, len(self.crops))


def split_crops(
    data_dir: Path, val_fraction: float, seed: int, limit: int | None = None, rows: tuple[int, int] | None = None
) -> tuple[list[LabelledCrop], list[LabelledCrop]]:
    """(train, validation) crops of `data_dir`, test rows left out, split by cluster."""
    crops = read_crops(data_dir, exclude=EXCLUDED_SPLITS)
    if rows:
        crops = [c for c in crops if c.row is not None and rows[0] <= c.row <= rows[1]]
        if not crops:
            raise InvalidInputError(f"{data_dir}: no training crops in rows {rows[0]}-{rows[1]}")
    if limit:
        crops = subsample_clusters(crops, limit, seed)
    return split_by_cluster(crops, val_fraction, seed)


def load_training_data(
    data_dir: Path,
    val_fraction: float,
    seed: int,
    limit: int | None,
    settings: ServingSettings,
    progress: bool = False,
    rows: tuple[int, int] | None = None,
) -> TrainingData:
    """The split crops, decoded into `<models_dir>/cache`, with what the model's JSON records of them."""
    train, val = split_crops(data_dir, val_fraction, seed, limit, rows)
    crops = train + val
    labels_csv = Path(data_dir) / "labels.csv"
    split = {
        "by": "cluster",
        "seed": seed,
        "val_fraction": val_fraction,
        "limit": limit,
        "excluded_splits": list(EXCLUDED_SPLITS),
        "val_clusters_sha256": _clusters_digest(val),
    }
    if rows:
        split["rows"] = list(rows)
    used = [c.row for c in crops if c.row is not None]
    summary = {
        "data_dir": str(Path(data_dir).resolve()),
        "labels_csv_sha256": _sha256(labels_csv) if labels_csv.is_file() else None,
        "files_sha256": file_list_key(crops),
        "train": _side(train),
        "validation": _side(val),
        "rows": row_ranges(used) if used else None,
    }
    faces = decode_crops(crops, settings.models_dir / "cache", progress=progress)
    return TrainingData(crops, faces, labels_of(crops), len(train), split, summary)


def validation_crops(data_dir: Path, split: dict, rows: tuple[int, int] | None = None) -> list[LabelledCrop]:
    """The validation crops a model recorded in its JSON (`split`), re-derived from `data_dir` and checked.
    `rows` stands in for a split recorded before rows were (crops of the first rows only)."""
    rows = tuple(split["rows"]) if split.get("rows") else rows
    _, val = split_crops(data_dir, split["val_fraction"], split["seed"], split.get("limit"), rows)
    if _clusters_digest(val) != split["val_clusters_sha256"]:
        raise InvalidInputError(
            f"{data_dir}: these crops do not give the validation split the model recorded "
            "(different data, or labels.csv changed)"
        )
    return val


def row_ranges(rows: list[int]) -> str:
    """`1-16000, 16101-30250`: the labels.csv data rows a model was trained and validated on."""
    rows = sorted(rows)
    spans, start, prev = [], rows[0], rows[0]
    for r in rows[1:]:
        if r != prev + 1:
            spans.append((start, prev))
            start = r
        prev = r
    spans.append((start, prev))
    return ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in spans)


def _clusters_digest(crops: list[LabelledCrop]) -> str:
    return hashlib.sha256("\n".join(sorted({c.cluster for c in crops})).encode()).hexdigest()


def _side(crops: list[LabelledCrop]) -> dict:
    labels = labels_of(crops)
    return {
        "crops": len(crops),
        "fake": int(labels.sum()),
        "real": int(len(labels) - labels.sum()),
        "clusters": len({c.cluster for c in crops}),
    }


def _sha256(path: Path) -> str:
    from serving.files import sha256_of

    return sha256_of(path)
