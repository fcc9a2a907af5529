"""The `mesoscan` command: a root group whose subcommands each package contributes through entry points.

Subcommands are registered under the `mesoscan.commands` entry-point group (see pyproject.toml) and
imported only when run, so `mesoscan --help` stays fast and `serving` never imports `scanner` or `server`.
This module also holds the model side's own subcommands: `models`, `export`, `predict`, `evaluate`.

Settings: a command builds the settings it needs once, with `command_settings`, and passes them down. Every
`MESOSCAN_*` variable is checked first, against the names of all packages: an unknown one or a bad value ends the
command with one line naming it, status 2.
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import click

from serving.errors import ServingError

if TYPE_CHECKING:
    from pydantic_settings import BaseSettings

S = TypeVar("S", bound="BaseSettings")


class BadSettings(click.ClickException):
    """An unknown `MESOSCAN_*` variable or a bad value: one line, exit status 2 (as for a bad option)."""

    exit_code = 2


def command_settings(cls: type[S], **values) -> S:
    """Settings `cls` for the running command, from the environment (`values`, e.g. from options, win); an unknown
    or bad `MESOSCAN_*` variable raises BadSettings."""
    from serving.config import SettingsError, load

    try:
        return load(cls, **values)
    except SettingsError as exc:
        raise BadSettings(str(exc)) from None


SUMMARIES = {
    "batch": "Scan every video URL of INPUT (a text list, a CSV with a `url` column, JSONL; `-` for standard input).",
    "calibrate": "Fit NAME's calibration, threshold and `uncertain` band on its validation split (same weights) and "
    "record its training crops' geometry; registers the next version of NAME.",
    "db": "The scan database's schema (Alembic migrations).",
    "evaluate": "ROC AUC, equal error rate, accuracy and confusion counts of several models side by side, on face "
    "crops (crop level) or on labelled videos (video level: the scan's verdict per video).",
    "extract-faces": "Build a training set from labelled videos (labels.csv, or real/ and fake/) with the scan's own "
    "face crops.",
    "keys": "Create, list and revoke API keys (stored hashed; a key is shown once).",
    "scan": "Scan a video URL (a video page, a direct media URL, an HTML page with a video, HLS) or a local file.",
    "serve": "Run the REST gateway (gunicorn), or everything in one process with --dev.",
    "train": "Train MesoNet on labelled face crops (validation split by cluster) and register the model as NAME.",
    "worker": "Run a scan worker (Celery): takes scans from the queue, one per process at a time.",
}
"""The first sentence of the help of the commands other packages contribute: `mesoscan --help` lists them without
importing those packages (tests/test_cli_startup.py checks each against the command's own help)."""

LONG_RUNNING = {"serve", "worker"}
"""Commands whose stderr is a log that their child processes share: TensorFlow's start-up lines are left in it."""


class EntryPointGroup(click.Group):
    """A click group that lists and lazily loads subcommands from the `mesoscan.commands` entry points."""

    def _entry_points(self) -> dict:
        return {ep.name: ep for ep in entry_points(group="mesoscan.commands")}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._entry_points()))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in self._entry_points():
            command = self._entry_points()[cmd_name].load()
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """click's listing, with SUMMARIES standing in for the commands of packages not imported yet."""
        points = self._entry_points()
        rows = []  # (name, short help of a width)
        for name in self.list_commands(ctx):
            point = points.get(name)
            if name in SUMMARIES and point is not None and point.module not in sys.modules:
                rows.append((name, click.Command(name, help=SUMMARIES[name]).get_short_help_str))
            elif (command := self.get_command(ctx, name)) is not None and not command.hidden:
                rows.append((name, command.get_short_help_str))
        if rows:
            limit = formatter.width - 6 - max(len(name) for name, _ in rows)  # as click.Group's
            with formatter.section("Commands"):
                formatter.write_dl([(name, short_help(limit)) for name, short_help in rows])


@click.group(cls=EntryPointGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mesoscan")
def cli() -> None:
    """MesoScan: find deepfaked faces in videos with MesoNet."""
    from serving.config import SettingsError, check_environment

    try:  # before any subcommand runs (also the ones whose settings are read later, e.g. in a worker process)
        check_environment()
    except SettingsError as exc:
        raise BadSettings(str(exc)) from None


def main() -> None:
    from serving.quiet import quiet_native_startup

    # The root group takes no option with a value: its first non-option argument names the command.
    if next((arg for arg in sys.argv[1:] if not arg.startswith("-")), None) not in LONG_RUNNING:
        quiet_native_startup()
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ServingError as exc:
        click.echo(f"error [{exc.code}]: {exc}", err=True)
        sys.exit(1)
    except ValueError as exc:
        from serving.config import SettingsError

        if not isinstance(exc, SettingsError):  # settings read below a command, not by `command_settings`
            raise
        BadSettings(str(exc)).show()
        sys.exit(BadSettings.exit_code)


# --- models -----------------------------------------------------------------------------------------------


@click.group()
def models() -> None:
    """List and fetch the registered models."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def models_list(as_json: bool) -> None:
    """Every registered model, installed or not, with its provenance and licence."""
    from serving.config import ServingSettings
    from serving.registry import is_installed, list_models

    settings = command_settings(ServingSettings)
    rows = [
        {
            "name": spec.name,
            "arch": spec.arch,
            "version": spec.version,
            "threshold": spec.threshold,
            "installed": is_installed(spec, settings),
            "default": spec.name == settings.model,
            "weights": str(spec.weights.local_path(settings)),
            "provenance": spec.provenance,
            "licence": spec.licence,
        }
        for spec in list_models(settings)
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        mark = "installed" if row["installed"] else "not installed"
        default = "  (default)" if row["default"] else ""
        click.echo(
            f"{row['name']:<22} {row['arch']:<15} v{row['version']}  threshold {row['threshold']:.3f}  {mark}{default}"
        )
        click.echo(f"    {row['provenance']}")
        click.echo(f"    licence: {row['licence']}")


@models.command("fetch")
@click.argument("names", nargs=-1)
def models_fetch(names: tuple[str, ...]) -> None:
    """Download the authors' weight files (all, or NAMES), verifying their pinned sha256."""
    from serving.config import ServingSettings
    from serving.registry import ensure_weights, get_model, list_models

    settings = command_settings(ServingSettings)
    specs = [get_model(name, settings) for name in names] if names else list_models(settings)
    for spec in specs:
        path = ensure_weights(spec, settings)
        click.echo(f"{spec.name}: {path}")


# --- export -----------------------------------------------------------------------------------------------


@click.command()
@click.argument("names", nargs=-1)
@click.option("--all", "all_models", is_flag=True, help="Export every registered model.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Model base directory; each model goes to OUT/<name>/<version>/.",
)
@click.option(
    "--write-config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write TF Serving's models.config for these models (every registered one when none is named), "
    "e.g. serving/models.config.",
)
@click.option(
    "--base-path",
    default="/models",
    show_default=True,
    help="The model base directory as TF Serving sees it (base_path prefix in the models config).",
)
def export(
    names: tuple[str, ...], all_models: bool, out_dir: Path | None, config_file: Path | None, base_path: str
) -> None:
    """Export models as SavedModels in TF Serving's layout (signatures `serving_default` and `jpeg`).

    Export NAMES (or --all) to --out; and/or write TF Serving's models config with --write-config.
    """
    from serving.config import ServingSettings
    from serving.registry import get_model, list_models

    if names and all_models:
        raise click.UsageError("give model NAMES or --all, not both")
    if not (names or all_models or config_file):
        raise click.UsageError("name the models to export (or --all), or give --write-config FILE")
    if (names or all_models) and out_dir is None:
        raise click.UsageError("--out DIR is required to export models")
    settings = command_settings(ServingSettings)
    specs = [get_model(name, settings) for name in names] if names else list_models(settings)
    if names or all_models:
        from serving.export import export_model

        for spec in specs:
            path = export_model(spec.name, out_dir, settings)
            click.echo(f"{spec.name}: {path}")
    if config_file:
        from serving.files import atomic_write_text
        from serving.tfserving_config import render_models_config

        config_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(config_file, render_models_config(specs, base_path))
        click.echo(f"models config ({len(specs)} models): {config_file}")


# --- predict ----------------------------------------------------------------------------------------------


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--model", "model_name", default=None, help="Registered model (default: MESOSCAN_MODEL).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def predict(images: tuple[Path, ...], model_name: str | None, as_json: bool) -> None:
    """Score face crop images (any size; centre-cropped and resized to 256×256) with the configured backend."""
    import numpy as np

    from serving.config import ServingSettings
    from serving.images import load_face
    from serving.predictor import get_predictor

    settings = command_settings(ServingSettings)
    faces = np.stack([load_face(path) for path in images])
    with get_predictor(model_name, settings) as predictor:
        scores = predictor.predict(faces)
        spec = predictor.spec
    results = [
        {
            "image": str(path),
            "fake_probability": round(float(score), 6),
            "label": "fake" if score >= spec.threshold else "real",
        }
        for path, score in zip(images, scores, strict=True)
    ]
    if as_json:
        click.echo(
            json.dumps(
                {
                    "model": {
                        "name": spec.name,
                        "version": spec.version,
                        "threshold": spec.threshold,
                        "backend": settings.model_backend,
                    },
                    "results": results,
                },
                indent=2,
            )
        )
        return
    for r in results:
        click.echo(f"{r['fake_probability']:.4f}  {r['label']:<4}  {r['image']}")


# --- evaluate ---------------------------------------------------------------------------------------------


def parse_range(kind: type):
    """A click callback parsing `LO-HI` (or one number) into a (lo, hi) tuple of `kind`."""

    def parse(ctx: click.Context, param: click.Parameter, value: str | None):
        if value is None:
            return None
        lo, _, hi = value.partition("-")
        try:
            bounds = (kind(lo), kind(hi or lo))
        except ValueError:
            raise click.BadParameter(f"expected LO-HI, e.g. 30-90, got {value!r}") from None
        if bounds[0] > bounds[1]:
            raise click.BadParameter(f"{value!r}: LO is above HI")
        return bounds

    return parse


def _parse_degradation(ctx: click.Context, param: click.Parameter, value: str | None):
    from serving.degrade import parse_chain
    from serving.errors import InvalidInputError

    try:
        return parse_chain(value) if value else ()
    except InvalidInputError as e:
        raise click.BadParameter(str(e).removeprefix(f"--degrade {value!r}: ")) from None


rows_option = click.option(
    "--rows",
    default=None,
    callback=parse_range(int),
    metavar="FIRST-LAST",
    help="Crops: only these data rows of labels.csv (1-based, inclusive), e.g. 16101-30250 for the crops added "
    "after a model was trained.",
)
degrade_option = click.option(
    "--degrade",
    "degradation",
    default=None,
    callback=_parse_degradation,
    metavar="STEPS",
    help="Put every crop, or every video, through these steps first, in order, as the web does: blur:SIGMA, "
    "downscale:FRACTION (crops: and back up), jpeg:QUALITY (crops), h264:CRF (videos: an x264 re-encode); "
    "e.g. downscale:0.5,jpeg:40 or downscale:0.5,h264:28.",
)


@click.command()
@click.option(
    "--data",
    "data_dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    required=True,
    help="A crops folder with labels.csv, or real/ and fake/ folders.",
)
@click.option(
    "--split",
    default=None,
    help="Only rows of labels.csv with this split (e.g. test); `val`: the cluster-disjoint validation split "
    "the first trained model recorded (other models are scored on it too, if they never trained on its crops).",
)
@click.option("--model", "model_names", default=None, help="Comma-separated model names (default: MESOSCAN_MODEL).")
@click.option("--tta", is_flag=True, help="Average each crop's score with that of the horizontally flipped crop.")
@rows_option
@degrade_option
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write metrics.json, scores.csv, roc.png and hist_<model>.png into this directory.",
)
def evaluate(
    data_dir: Path,
    split: str | None,
    model_names: str | None,
    tta: bool,
    out_dir: Path | None,
    rows: tuple[int, int] | None = None,
    degradation: tuple = (),
) -> None:
    """Crop-level ROC AUC, equal error rate, accuracy and confusion counts of one or more models, side by side."""
    from serving.config import ServingSettings
    from serving.evaluate import evaluate_crops, format_table

    settings = command_settings(ServingSettings)
    names = [n.strip() for n in (model_names or settings.model).split(",") if n.strip()]
    metrics = evaluate_crops(
        data_dir,
        names,
        split=split,
        settings=settings,
        tta=tta,
        out_dir=out_dir,
        rows=rows,
        degradation=degradation,
    )
    click.echo(format_table(metrics))
    if out_dir:
        click.echo(f"report: {out_dir}")
