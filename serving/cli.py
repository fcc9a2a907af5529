"""The `mesoscan` command: a root group whose subcommands each package contributes through entry points.

Subcommands are registered under the `mesoscan.commands` entry-point group (see pyproject.toml) and
imported only when run, so `mesoscan --help` stays fast and `serving` never imports `scanner` or `server`.
This module also holds the model side's own subcommands: `models`, `export`, `predict`, `evaluate`.
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import entry_points
from pathlib import Path

import click

from serving.errors import ServingError


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


@click.group(cls=EntryPointGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mesoscan")
def cli() -> None:
    """MesoScan: find deepfaked faces in videos with MesoNet."""


def main() -> None:
    from serving.quiet import filter_stderr

    filter_stderr()
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


# --- models -----------------------------------------------------------------------------------------------


@click.group()
def models() -> None:
    """List and fetch the registered models."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def models_list(as_json: bool) -> None:
    """Every registered model, installed or not, with its provenance and licence."""
    from serving.config import get_settings
    from serving.registry import is_installed, list_models

    settings = get_settings()
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
        click.echo(f"{row['name']:<22} {row['arch']:<15} v{row['version']}  threshold {row['threshold']:.3f}  "
                   f"{mark}{default}")
        click.echo(f"    {row['provenance']}")
        click.echo(f"    licence: {row['licence']}")


@models.command("fetch")
@click.argument("names", nargs=-1)
def models_fetch(names: tuple[str, ...]) -> None:
    """Download the authors' weight files (all, or NAMES), verifying their pinned sha256."""
    from serving.config import get_settings
    from serving.registry import ensure_weights, get_model, list_models

    settings = get_settings()
    specs = [get_model(name, settings) for name in names] if names else list_models(settings)
    for spec in specs:
        path = ensure_weights(spec, settings)
        click.echo(f"{spec.name}: {path}")


# --- export -----------------------------------------------------------------------------------------------


@click.command()
@click.argument("names", nargs=-1, required=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Model base directory; each model goes to OUT/<name>/<version>/.")
def export(names: tuple[str, ...], out_dir: Path) -> None:
    """Export models as SavedModels in TF Serving's layout (signatures `serving_default` and `jpeg`)."""
    from serving.export import export_model

    for name in names:
        path = export_model(name, out_dir)
        click.echo(f"{name}: {path}")


# --- predict ----------------------------------------------------------------------------------------------


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--model", "model_name", default=None, help="Registered model (default: MESOSCAN_MODEL).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def predict(images: tuple[Path, ...], model_name: str | None, as_json: bool) -> None:
    """Score face crop images (any size; centre-cropped and resized to 256×256) with the configured backend."""
    import numpy as np

    from serving.config import get_settings
    from serving.images import load_face
    from serving.predictor import get_predictor

    settings = get_settings()
    faces = np.stack([load_face(path) for path in images])
    with get_predictor(model_name, settings) as predictor:
        scores = predictor.predict(faces)
        spec = predictor.spec
    results = [
        {"image": str(path), "fake_probability": round(float(score), 6),
         "label": "fake" if score >= spec.threshold else "real"}
        for path, score in zip(images, scores, strict=True)
    ]
    if as_json:
        click.echo(json.dumps({"model": {"name": spec.name, "version": spec.version,
                                         "threshold": spec.threshold, "backend": settings.model_backend},
                               "results": results}, indent=2))
        return
    for r in results:
        click.echo(f"{r['fake_probability']:.4f}  {r['label']:<4}  {r['image']}")


# --- evaluate ---------------------------------------------------------------------------------------------


@click.command()
@click.option("--data", "data_dir", type=click.Path(file_okay=False, exists=True, path_type=Path), required=True,
              help="A crops folder with labels.csv, or real/ and fake/ folders.")
@click.option("--split", default=None, help="Only rows of labels.csv with this split (e.g. test).")
@click.option("--model", "model_names", default=None, help="Comma-separated model names.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the metrics as JSON here.")
def evaluate(data_dir: Path, split: str | None, model_names: str | None, out_file: Path | None) -> None:
    """Crop-level accuracy and ROC AUC of one or more models on a labelled crops folder."""
    from serving.config import get_settings
    from serving.evaluate import evaluate_crops, format_table

    settings = get_settings()
    names = [n.strip() for n in (model_names or settings.model).split(",") if n.strip()]
    metrics = evaluate_crops(data_dir, names, split=split, settings=settings)
    click.echo(format_table(metrics))
    if out_file:
        out_file.parent.mkdir(parents=True, exist_ok=True)
        out_file.write_text(json.dumps(metrics, indent=2) + "\n")
