"""Labelled face crops: reading a crops folder, the cluster-disjoint validation split, and the uint8 decode cache."""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serving.errors import InvalidInputError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
CACHE_FORMAT = 1
"""Bump when the cache layout changes, so old cache files stop matching."""


@dataclass(frozen=True)
class LabelledCrop:
    path: Path
    fake: int
    """1 for FAKE, 0 for REAL."""
    cluster: str
    """Crops of one cluster (the same face: a fake and its real source) always stay on the same side of a split."""
    split: str | None
    row: int | None = None
    """1-based data row of `labels.csv` (None for folder layouts)."""


def read_crops(data_dir: Path, split: str | None = None, exclude: Sequence[str] = ()) -> list[LabelledCrop]:
    """Crops of `data_dir`: from `labels.csv` (`filename,label[,cluster][,split]`) or `real/` and `fake/` folders.

    With `labels.csv`, a file is looked up beside it or in the folder named by its split (`train/`, `test/`);
    a row without a cluster is its own cluster. In `real/` and `fake/`, a crop inside a subfolder
    (`real/<video>/<frame>.jpg`) belongs to the cluster named by that subfolder, one directly inside is its own.
    `split` keeps only rows of that split, `exclude` drops rows of those splits.
    """
    data_dir = Path(data_dir)
    labels = data_dir / "labels.csv"
    crops: list[LabelledCrop] = []
    if labels.is_file():
        with labels.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = {"filename", "label"} - set(reader.fieldnames or ())
            if missing:
                raise InvalidInputError(f"{labels}: missing column(s) {', '.join(sorted(missing))}")
            for number, row in enumerate(reader, start=1):
                row_split = (row.get("split") or "").strip() or None
                if (split is not None and row_split != split) or (row_split is not None and row_split in exclude):
                    continue
                label = (row["label"] or "").strip().upper()
                if label not in {"REAL", "FAKE"}:
                    raise InvalidInputError(f"{labels}: label {row['label']!r} is neither REAL nor FAKE")
                path = data_dir / row["filename"]
                if not path.is_file() and row_split:
                    path = data_dir / row_split / row["filename"]
                crops.append(
                    LabelledCrop(
                        path,
                        int(label == "FAKE"),
                        (row.get("cluster") or "").strip() or row["filename"],
                        row_split,
                        number,
                    )
                )
    else:
        for label in ("real", "fake"):
            folder = data_dir / label
            for path in sorted(folder.rglob("*")) if folder.is_dir() else []:
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    parts = path.relative_to(folder).parts
                    cluster = f"{label}/{parts[0]}" if len(parts) > 1 else f"{label}/{path.stem}"
                    crops.append(LabelledCrop(path, int(label == "fake"), cluster, split))
    if not crops:
        raise InvalidInputError(
            f"{data_dir}: no labelled crops found (need labels.csv, or real/ and fake/ folders)"
            + (f" for split {split!r}" if split else "")
        )
    return crops


def _cluster_rank(cluster: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{cluster}".encode()).hexdigest()


def split_by_cluster(
    crops: Sequence[LabelledCrop], val_fraction: float, seed: int
) -> tuple[list[LabelledCrop], list[LabelledCrop]]:
    """(train, validation): whole clusters go to validation, never single images.

    Clusters are ordered by a hash of (seed, cluster name), so the split depends only on the seed and the cluster
    names, not on the order of the rows; the first `round(val_fraction × clusters)` clusters (at least one) validate.
    """
    if not 0 < val_fraction < 1:
        raise InvalidInputError(f"validation fraction must be between 0 and 1, got {val_fraction}")
    clusters = sorted({c.cluster for c in crops}, key=lambda name: _cluster_rank(name, seed))
    if len(clusters) < 2:
        raise InvalidInputError(f"need at least 2 clusters to split off a validation set, got {len(clusters)}")
    n_val = min(max(1, round(val_fraction * len(clusters))), len(clusters) - 1)
    val_clusters = set(clusters[:n_val])
    return ([c for c in crops if c.cluster not in val_clusters], [c for c in crops if c.cluster in val_clusters])


def subsample_clusters(crops: Sequence[LabelledCrop], max_crops: int, seed: int) -> list[LabelledCrop]:
    """At most about `max_crops` crops, taken as whole clusters in the seed's hash order (row order kept)."""
    by_cluster: dict[str, int] = {}
    for c in crops:
        by_cluster[c.cluster] = by_cluster.get(c.cluster, 0) + 1
    keep, total = set(), 0
    for name in sorted(by_cluster, key=lambda name: _cluster_rank(name, seed + 1)):
        if total + by_cluster[name] > max_crops and keep:
            break
        keep.add(name)
        total += by_cluster[name]
    return [c for c in crops if c.cluster in keep]


def labels_of(crops: Sequence[LabelledCrop]) -> np.ndarray:
    return np.array([c.fake for c in crops], dtype=np.int32)


def file_list_key(crops: Sequence[LabelledCrop]) -> str:
    """sha256 over the resize method and every crop's path, size and modification time (in order)."""
    from serving.images import RESIZE_METHOD
    from serving.mesonet import IMAGE_SIZE

    digest = hashlib.sha256(f"mesoscan-crops/{CACHE_FORMAT}/{IMAGE_SIZE}/{RESIZE_METHOD}\n".encode())
    missing = []
    for crop in crops:
        try:
            stat = crop.path.stat()
        except OSError:
            missing.append(str(crop.path))
            continue
        digest.update(f"{crop.path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    if missing:
        raise InvalidInputError(f"{len(missing)} crop file(s) missing, e.g. {', '.join(missing[:3])}")
    return digest.hexdigest()


def decode_crops(crops: Sequence[LabelledCrop], cache_dir: Path | None = None, progress: bool = False) -> np.ndarray:
    """All crops as one [N, 256, 256, 3] uint8 array, decoded once with MesoScan's resize method.

    With `cache_dir`, the array is a read-only `.npy` memory map there, named by `file_list_key`; a later call
    with the same files reuses it instead of decoding again (16,000 crops take 3.1 GB, which stay on disk).
    """
    from serving.mesonet import IMAGE_SIZE

    shape = (len(crops), IMAGE_SIZE, IMAGE_SIZE, 3)
    if cache_dir is None:
        out = np.empty(shape, np.uint8)
        _decode_into(crops, out, progress)
        return out
    cache_dir = Path(cache_dir)
    path = cache_dir / f"crops-{file_list_key(crops)[:24]}.npy"
    if path.is_file():
        cached = np.load(path, mmap_mode="r")
        if cached.shape == shape and cached.dtype == np.uint8:
            return cached
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.stem}.partial-{os.getpid()}.npy")
    try:
        out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=shape)
        _decode_into(crops, out, progress)
        out.flush()
        del out
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return np.load(path, mmap_mode="r")


def _decode_into(crops: Sequence[LabelledCrop], out: np.ndarray, progress: bool, batch: int = 64) -> None:
    """Fill `out` with the decoded crops: a parallel tf.data decode on TensorFlow, `load_face` one by one elsewhere."""
    import keras
    from tqdm import tqdm

    from serving.images import load_face

    bar = tqdm(total=len(crops), desc="decoding crops", unit="crop", disable=not progress, mininterval=2)
    done = 0
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        from serving.images import resize_faces

        @tf.autograph.experimental.do_not_convert
        def decode(path):
            image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
            return resize_faces(image[None])[0]

        paths = tf.data.Dataset.from_tensor_slices([str(c.path) for c in crops])
        faces = paths.map(decode, num_parallel_calls=tf.data.AUTOTUNE).batch(batch).prefetch(2)
        try:
            for chunk in faces.as_numpy_iterator():
                out[done : done + len(chunk)] = chunk
                done += len(chunk)
                bar.update(len(chunk))
        except tf.errors.OpError:
            for crop in crops[done : done + batch]:
                load_face(crop.path)  # raises InvalidInputError naming the bad file
            raise
    for i in range(done, len(crops)):
        out[i] = load_face(crops[i].path)
        bar.update(1)
    bar.close()
