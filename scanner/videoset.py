"""Labelled video folders: reading them, extracting training faces with the scan's own cropping, video-level evaluation.

A folder of labelled videos is either `labels.csv` (`filename,label[,cluster][,pair_original][,split]`, label REAL or
FAKE) or `real/` and `fake/` subfolders. A fake made from a real video belongs to that video's cluster
(`pair_original`), so a cluster-split training set never puts the two on different sides.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable
from contextlib import ExitStack, closing
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from scanner.config import ScannerSettings
from scanner.errors import ScanError
from serving.config import ServingSettings
from serving.dataset import LabelledCrop
from serving.degrade import Step, chain_text
from serving.errors import InvalidInputError

VIDEO_SUFFIXES = {".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v", ".ts"}


def _cluster_of(name: str) -> str:
    """`ffpp_004.mp4` → `ffpp_004`; `wdpsifpppf.mp4 (absent)` → `wdpsifpppf`."""
    return Path(re.split(r"\s", name.strip())[0]).stem


def is_video_folder(data_dir: Path) -> bool:
    """Whether `data_dir` holds labelled videos (rather than face crops)."""
    data_dir = Path(data_dir)
    labels = data_dir / "labels.csv"
    if labels.is_file():
        with labels.open(newline="") as f:
            first = next(csv.DictReader(f), None)
        return first is not None and Path(first.get("filename") or "").suffix.lower() in VIDEO_SUFFIXES
    return any(
        p.suffix.lower() in VIDEO_SUFFIXES
        for label in ("real", "fake")
        if (data_dir / label).is_dir()
        for p in (data_dir / label).rglob("*")
    )


def read_videos(video_dir: Path) -> list[LabelledCrop]:
    """The labelled videos of `video_dir` (labels.csv, or real/ and fake/ folders)."""
    video_dir = Path(video_dir)
    labels = video_dir / "labels.csv"
    videos: list[LabelledCrop] = []
    if labels.is_file():
        with labels.open(newline="") as f:
            for row in csv.DictReader(f):
                label = (row.get("label") or "").strip().upper()
                if label not in {"REAL", "FAKE"}:
                    raise InvalidInputError(f"{labels}: label {row.get('label')!r} is neither REAL nor FAKE")
                path = video_dir / row["filename"]
                if not path.is_file():
                    raise InvalidInputError(f"{labels}: {row['filename']} is listed but not in {video_dir}")
                cluster = row.get("cluster") or (label == "FAKE" and row.get("pair_original")) or row["filename"]
                videos.append(LabelledCrop(path, int(label == "FAKE"), _cluster_of(cluster), row.get("split") or None))
    else:
        for label in ("real", "fake"):
            folder = video_dir / label
            for path in sorted(folder.rglob("*")) if folder.is_dir() else []:
                if path.suffix.lower() in VIDEO_SUFFIXES:
                    videos.append(LabelledCrop(path, int(label == "fake"), path.stem, None))
    if not videos:
        raise InvalidInputError(f"{video_dir}: no labelled videos (need labels.csv, or real/ and fake/ folders)")
    return videos


@dataclass
class VideoFaces:
    """Everything a scan learns from a video before scoring: its faces (with crops), frame times, skips."""

    video: LabelledCrop
    faces: list = field(default_factory=list)
    """(ScoredFace without a score, 256×256 crop) pairs."""
    frame_times: list[float] = field(default_factory=list)
    skipped: int = 0
    source: dict = field(default_factory=dict)
    error: ScanError | None = None


def collect_faces(scanner, video: LabelledCrop, margins: tuple[float, ...] | None = None) -> VideoFaces:
    """Run the scan's decoding, detection, tracking and cropping on a local video (no model involved): each face
    with one crop per margin (default: the scanner's model's)."""
    from scanner.download import open_local_video

    result = VideoFaces(video)
    try:
        with open_local_video(video.path, scanner.settings) as opened:
            result.source = opened.source
            with scanner.faces(Path(opened.path), opened.info.index, margins=margins) as stream:
                for found in stream:
                    result.faces += found
            result.frame_times, result.skipped = stream.frame_times, stream.skipped
    except ScanError as exc:
        result.error = exc
    return result


# --- extract-faces ---------------------------------------------------------------------------------------------


def extract_faces(
    video_dir: Path,
    out_dir: Path,
    scanner,
    image_format: str = "png",
    on_video: Callable[[VideoFaces], None] | None = None,
) -> Path:
    """Write every face a scan would score, as a training set: `out_dir/faces/*.<format>` + `out_dir/labels.csv`.

    The crops are the model's input exactly (256×256 RGB, the crop geometry of the scanner's model, rotation and
    resize); PNG keeps them lossless. `labels.csv` has `filename,label,cluster,source_video,t,person[,split]`;
    `geometry.json` records the model and margin the crops were cut with.
    """
    import json

    from PIL import Image

    videos = read_videos(video_dir)
    faces_dir = Path(out_dir) / "faces"
    faces_dir.mkdir(parents=True, exist_ok=True)
    with_split = any(v.split for v in videos)
    rows = []
    for video in videos:
        found = collect_faces(scanner, video)
        if on_video:
            on_video(found)
        for face, (crop, *_) in found.faces:
            name = f"{video.path.stem}_t{face.t:08.3f}_p{face.person}.{image_format}"
            Image.fromarray(crop).save(faces_dir / name, **({"quality": 95} if image_format == "jpg" else {}))
            row = {
                "filename": f"faces/{name}",
                "label": "FAKE" if video.fake else "REAL",
                "cluster": video.cluster,
                "source_video": video.path.name,
                "t": f"{face.t:.3f}",
                "person": face.person,
            }
            rows.append(row | ({"split": video.split or ""} if with_split else {}))
    spec = scanner.predictor.spec
    (Path(out_dir) / "geometry.json").write_text(
        json.dumps(
            {
                "model": spec.name,
                "version": spec.version,
                "crop_margin": scanner.margins[0],
                "note": "crop side = crop_margin × the longer side of BlazeFace's face box, upright on the eyes",
            },
            indent=2,
        )
        + "\n"
    )
    labels = Path(out_dir) / "labels.csv"
    fields = ["filename", "label", "cluster", "source_video", "t", "person"] + (["split"] if with_split else [])
    with labels.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return labels


# --- video-level evaluation ------------------------------------------------------------------------------------


def evaluate_videos(
    video_dir: Path,
    model_names: list[str],
    settings: ScannerSettings,
    out_dir: Path | None = None,
    on_video: Callable[[VideoFaces], None] | None = None,
    *,
    serving_settings: ServingSettings,
    degradation: tuple[Step, ...] = (),
) -> tuple[dict[str, dict], list[dict]]:
    """Each model's video-level metrics on a labelled video folder, through the full pipeline.

    Each video's frames are decoded and its faces found once; every model (all loaded up front) scores the same
    crops, which are dropped before the next video. A model's verdict follows the scan's rules (per-person mean,
    most suspicious person, the model's threshold). Videos without a face have no score: they are counted
    (`no_face`) and left out of ROC AUC. With `degradation`, each video is first re-encoded through it
    (scanner/reencode.py) in a temporary folder, removed as soon as the video is scored; one it fails on counts as
    `failed`. Returns ({model: metrics}, per-video rows).
    """
    from scanner.pipeline import Scanner
    from scanner.reencode import passes
    from scanner.verdict import build_document
    from serving.evaluate import score_metrics, write_report

    passes(degradation)  # a step no video takes is refused before any model loads
    videos, rows = read_videos(video_dir), []
    with ExitStack() as stack:
        scanners = {
            name: stack.enter_context(closing(Scanner(settings, model=name, serving_settings=serving_settings)))
            for name in model_names
        }
        margins = tuple(dict.fromkeys(m for sc in scanners.values() for m in sc.margins))
        first = next(iter(scanners.values()))
        for video in videos:
            if degradation:
                found = _collect_degraded(first, video, margins, degradation)
            else:
                found = collect_faces(first, video, margins)
            if on_video:
                on_video(found)
            row = {
                "video": video.path.name,
                "label": "FAKE" if video.fake else "REAL",
                "faces": len(found.faces),
                "error": found.error.code if found.error else None,
            }
            faces = [face for face, _ in found.faces]
            for name, sc in scanners.items():
                if not faces:
                    row[name] = {"fake_probability": None, "label": "failed" if found.error else "no_face"}
                    continue
                batches = [np.stack([crops[margins.index(m)] for _, crops in found.faces]) for m in sc.margins]
                for face, score in zip(faces, sc.score(batches), strict=True):
                    face.fake_probability = float(score)
                spec = sc.predictor.spec
                verdict = build_document(
                    source=found.source,
                    model={"name": name, "version": spec.version},
                    threshold=spec.threshold,
                    band=sc.band(),
                    faces=faces,
                    frame_times=found.frame_times,
                    faces_skipped=found.skipped,
                    keyframes=settings.keyframes,
                    top=0,
                    timings_ms={},
                )["verdict"]
                row[name] = {"fake_probability": verdict["fake_probability"], "label": verdict["label"]}
            rows.append(row)
        thresholds = {name: sc.predictor.spec.threshold for name, sc in scanners.items()}

    judged = [i for i, r in enumerate(rows) if r["faces"]]
    labels = np.array([videos[i].fake for i in judged])
    metrics: dict[str, dict] = {}
    scores: dict[str, np.ndarray] = {}
    for name in model_names:
        scores[name] = np.array([rows[i][name]["fake_probability"] for i in judged], dtype=np.float64)
        verdicts = [r[name]["label"] for r in rows]
        fake = [v.fake for v in videos]
        metrics[name] = (score_metrics(labels, scores[name], thresholds[name]) if judged else {"n": 0}) | {
            "videos": len(rows),
            "no_face": verdicts.count("no_face"),
            "failed": verdicts.count("failed"),
            "uncertain": verdicts.count("uncertain"),
            "fake_called_real": sum(1 for f, v in zip(fake, verdicts, strict=True) if f and v == "real"),
            "real_called_fake": sum(1 for f, v in zip(fake, verdicts, strict=True) if not f and v == "fake"),
            "degrade": chain_text(degradation) or None,
        }
    if out_dir is not None and judged:
        write_report(Path(out_dir), [videos[i] for i in judged], labels, scores, metrics)
        (Path(out_dir) / "videos.json").write_text(json.dumps(rows, indent=2) + "\n")
    return metrics, rows


def _collect_degraded(scanner, video: LabelledCrop, margins: tuple[float, ...], chain: tuple[Step, ...]) -> VideoFaces:
    """`collect_faces` on `video` re-encoded through `chain` (the row still names the original)."""
    from scanner.reencode import reencode
    from serving.files import private_temp_dir

    with private_temp_dir(scanner.settings.temp_dir, "mesoscan-degrade-") as workdir:
        try:
            degraded = reencode(video.path, workdir, chain, scanner.settings.max_frames)
        except ScanError as exc:
            return VideoFaces(video, error=exc)
        found = collect_faces(scanner, replace(video, path=degraded), margins)
    found.video = video
    return found


def format_video_table(metrics: dict[str, dict], rows: list[dict]) -> str:
    names = list(metrics)
    width = max(len(r["video"]) for r in rows)
    lines = [f"{'video':<{width}}  label  " + "  ".join(f"{n[:18]:>18}" for n in names)]
    for r in rows:
        cells = []
        for n in names:
            v = r[n]
            cells.append(
                f"{v['label']:>18}"
                if v["fake_probability"] is None
                else f"{v['fake_probability']:.3f} {v['label']:>12}"
            )
        lines.append(f"{r['video']:<{width}}  {r['label']:<5}  " + "  ".join(cells))
    lines.append("")
    lines.append(
        f"{'model':<24} {'videos':>6} {'ROC AUC':>8} {'accuracy':>9} {'fake→real':>10} {'uncertain':>10} {'no face':>8}"
    )
    for n, m in metrics.items():
        auc = m.get("roc_auc", float("nan"))
        acc = m.get("accuracy", float("nan"))
        lines.append(
            f"{n:<24} {m['videos']:>6} {auc:>8.3f} {acc:>9.3f} {m['fake_called_real']:>10} "
            f"{m['uncertain']:>10} {m['no_face']:>8}"
        )
    return "\n".join(lines)
