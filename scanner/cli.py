"""`mesoscan scan`: scan one video URL or local file and print a verdict (or the verdict document)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import click

from serving.cli import command_settings
from serving.cli import evaluate as crops_evaluate

SPARKS = "▁▂▃▄▅▆▇█"
URL_LIKE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def sparkline(timeline: list[dict]) -> str:
    """One character per sampled frame: the bar's height is the fake probability, a dot marks no face."""
    return "".join(
        "·" if p["fake_probability"] is None else SPARKS[min(int(p["fake_probability"] * 8), 7)] for p in timeline
    )


def summary(document: dict) -> str:
    verdict, source, t = document["verdict"], document["source"], document["timings_ms"]
    lines = []
    if verdict["fake_probability"] is None:
        lines.append(f"NO FACE: no face large enough to judge was found ({document['faces_skipped']} too small)")
    else:
        lines.append(
            f"{verdict['label'].upper()}  fake probability {verdict['fake_probability']:.2f}  "
            f"(threshold {verdict['threshold']:.2f}, confidence {verdict['confidence']:.2f})"
        )
    model = document["model"]
    lines.append(f"model: {model['name']} v{model['version']} ({model.get('backend', '')})")
    title = f"{source['title']}  " if source["title"] else ""
    shape = f"{source['width']}×{source['height']}" if source["width"] else "?"
    duration = f"{source['duration_s']:.1f} s" if source["duration_s"] is not None else "? s"
    lines.append(f"video: {title}{duration}, {shape}, {source['fps'] or '?'} fps")
    for person in document["people"]:
        lines.append(
            f"person {person['id']}: {person['fake_probability']:.2f} over {person['faces']} faces "
            f"({person['first_t']:.1f}–{person['last_t']:.1f} s)"
        )
    lines.append(
        f"timeline: {sparkline(document['timeline'])}  ({document['frames_sampled']} frames"
        f"{', key frames only' if document['keyframes_only'] else ''}, {document['faces_analyzed']} faces, "
        f"{document['faces_skipped']} too small)"
    )
    stages = ", ".join(f"{k} {v / 1000:.2f}" for k, v in t.items() if k != "total")
    lines.append(f"took {t['total'] / 1000:.2f} s ({stages})")
    return "\n".join(lines)


class _ProgressBar:
    """A progress display on stderr when it is a terminal; silent otherwise."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=100,
            file=sys.stderr,
            leave=False,
            bar_format="{desc:<10} {bar} {percentage:3.0f}%",
            disable=not sys.stderr.isatty(),
        )

    def __call__(self, stage: str, fraction: float) -> None:
        self.bar.set_description_str(stage)
        self.bar.n = round(fraction * 100)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


@click.command()
@click.argument("target")
@click.option("--model", "model_name", default=None, help="Registered model (default: MESOSCAN_MODEL).")
@click.option("--frames", type=click.IntRange(1, 1024), default=None, help="Frames to sample (default 32).")
@click.option("--keyframes", is_flag=True, default=None, help="Decode key frames only (fast mode).")
@click.option("--json", "as_json", is_flag=True, help="Print the verdict document as JSON.")
@click.option(
    "--out",
    "out_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the verdict document (JSON) to this file.",
)
def scan(
    target: str,
    model_name: str | None,
    frames: int | None,
    keyframes: bool | None,
    as_json: bool,
    out_file: Path | None,
) -> None:
    """Scan a video URL (a video page, a direct media URL, an HTML page with a video, HLS) or a local file."""
    from scanner.config import ScannerSettings
    from scanner.document import VideoSource
    from scanner.pipeline import Scanner
    from scanner.verdict import failed_document
    from serving.config import ServingSettings

    overrides = {k: v for k, v in {"frames": frames, "keyframes": keyframes}.items() if v is not None}
    scanner = Scanner(
        command_settings(ScannerSettings, **overrides),
        model=model_name,
        serving_settings=command_settings(ServingSettings),
    )
    progress = _ProgressBar()
    try:
        if URL_LIKE.match(target):
            document = scanner.scan_url(target, progress)
        elif Path(target).is_file():
            document = scanner.scan_file(target, progress)
        else:
            document = failed_document(
                source=VideoSource.unknown(target),
                model=None,
                code="invalid_url",
                message=f"{target!r} is neither an http(s) URL nor an existing file",
            )
    finally:
        progress.close()
        scanner.close()
    text = json.dumps(document, indent=2)
    if out_file:
        out_file.write_text(text + "\n")
    if as_json:
        click.echo(text)
    elif document["status"] == "done":
        click.echo(summary(document))
    if document["status"] != "done":
        error = document["error"]
        click.echo(f"error [{error['code']}]: {error['message']}", err=True)
        sys.exit(1)


@click.command("extract-faces")
@click.argument("video_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Where to write faces/ and labels.csv (a training set for `mesoscan train --data`).",
)
@click.option("--frames", type=click.IntRange(1, 1024), default=None, help="Frames sampled per video (default 32).")
@click.option("--keyframes", is_flag=True, default=None, help="Key frames only.")
@click.option(
    "--format",
    "image_format",
    type=click.Choice(["png", "jpg"]),
    default="png",
    show_default=True,
    help="png keeps the crops exactly as scans score them.",
)
@click.option(
    "--model",
    "model_name",
    default=None,
    help="Cut faces with this model's crop geometry (default: the default model's), so the crops can "
    "train together with that model's training crops.",
)
def extract_faces(
    video_dir: Path,
    out_dir: Path,
    frames: int | None,
    keyframes: bool | None,
    image_format: str,
    model_name: str | None,
) -> None:
    """Build a training set from labelled videos (labels.csv, or real/ and fake/) with the scan's own face crops."""
    from tqdm import tqdm

    from scanner.config import ScannerSettings
    from scanner.pipeline import Scanner
    from scanner.videoset import extract_faces as extract
    from scanner.videoset import read_videos
    from serving.config import ServingSettings

    overrides = {k: v for k, v in {"frames": frames, "keyframes": keyframes}.items() if v is not None}
    scanner = Scanner(
        command_settings(ScannerSettings, **overrides),
        model=model_name,
        serving_settings=command_settings(ServingSettings),
    )
    total = len(read_videos(video_dir))
    with tqdm(total=total, unit="video", file=sys.stderr, disable=not sys.stderr.isatty()) as bar:

        def done(found) -> None:
            bar.update(1)
            if found.error:
                click.echo(f"skipped {found.video.path.name}: [{found.error.code}] {found.error.message}", err=True)

        labels = extract(video_dir, out_dir, scanner, image_format, on_video=done)
    rows = labels.read_text().count("\n") - 1
    click.echo(f"{rows} faces from {total} videos: {labels}")


VIDEO_HELP = {
    "data_dir": "Face crops (labels.csv or real/ and fake/ images): crop level. Labelled videos: video level, "
    "through the full pipeline.",
    "split": "Crops: only rows of labels.csv with this split (e.g. test); `val`: the cluster-disjoint validation "
    "split the trained models recorded (other models are scored on it too).",
    "tta": "Crops: average each score with that of the horizontally flipped crop.",
    "out_dir": "Write metrics.json, scores.csv, roc.png and hist_<model>.png (videos: also videos.json) here.",
}
"""Where the video level changes what serving's crop-level `evaluate` says of an option."""


def _with_videos(crops: click.Command) -> click.Command:
    """serving's crop-level `evaluate` (its options, reworded where videos differ) taking labelled videos too."""
    import copy

    def reworded(param: click.Parameter) -> click.Parameter:
        param = copy.copy(param)
        param.help = VIDEO_HELP.get(param.name, param.help)  # type: ignore[attr-defined]
        return param

    frames = click.Option(
        ["--frames"], type=click.IntRange(1, 1024), default=None, help="Videos: frames sampled per video."
    )

    def callback(frames: int | None, **options) -> None:
        from scanner.videoset import is_video_folder

        if not is_video_folder(options["data_dir"]):
            return crops.callback(**options)
        if options["rows"]:
            raise click.UsageError("--rows is for face crops; a videos folder is scanned whole")
        _evaluate_videos(
            options["data_dir"], options["model_names"], frames, options["out_dir"], options["degradation"]
        )

    return click.Command(
        "evaluate",
        params=[*map(reworded, crops.params), frames],
        callback=callback,
        help="ROC AUC, equal error rate, accuracy and confusion counts of several models side by side, on face "
        "crops (crop level) or on labelled videos (video level: the scan's verdict per video).",
    )


def _evaluate_videos(
    data_dir: Path, model_names: str | None, frames: int | None, out_dir: Path | None, degradation: tuple
) -> None:
    from scanner.config import ScannerSettings
    from scanner.videoset import evaluate_videos, format_video_table
    from serving.config import ServingSettings

    serving = command_settings(ServingSettings)
    names = [n.strip() for n in (model_names or serving.model).split(",") if n.strip()]
    settings = command_settings(ScannerSettings, **({"frames": frames} if frames else {}))
    metrics, rows = evaluate_videos(
        data_dir, names, settings, out_dir, serving_settings=serving, degradation=degradation
    )
    click.echo(format_video_table(metrics, rows))
    if out_dir:
        click.echo(f"report: {out_dir}")


evaluate = _with_videos(crops_evaluate)


def _with_crop_measurement(command: click.Command) -> click.Command:
    """`command` (serving's `train` or `calibrate`) with the scanner's crop-geometry measurement handed in."""

    def callback(**kwargs):
        from scanner.config import ScannerSettings
        from scanner.geometry import measure_crop_margin
        from serving.training.commands import MEASURE_CROP

        settings = command_settings(ScannerSettings)

        def measure(paths, seed):
            import numpy as np

            from scanner.blazeface import FaceDetector
            from serving.quiet import startup_step

            detector = FaceDetector(settings.detector, settings.min_detection_score, settings.blazeface_dir)
            with startup_step():  # LiteRT makes its interpreter (and logs its delegate) on the first detection
                detector.detect(np.zeros((detector.spec.input_size,) * 2 + (3,), np.uint8))
            return measure_crop_margin(paths, seed, detector=detector)

        click.get_current_context().meta[MEASURE_CROP] = measure
        return command.callback(**kwargs)

    return click.Command(
        command.name, params=command.params, callback=callback, help=command.help, short_help=command.short_help
    )


def _serving_command(name: str) -> click.Command:
    from serving.training import commands

    return _with_crop_measurement(getattr(commands, name))


train = _serving_command("train")
calibrate = _serving_command("calibrate")
