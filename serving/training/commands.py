"""`mesoscan train` and `mesoscan calibrate` (the scanner registers them, handing in its crop measurement).

The train command's options are made from the training config's settings (serving/training/config.py): each
setting is one option, with the setting's default, type and help, so the command, the config and the command line
a model records cannot drift apart. Settings are built here, at the entry point, and passed down.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
import types
import typing
from pathlib import Path

import click

from serving.cli import parse_range
from serving.training.config import RecipeSetting, TrainConfig, format_range, help_text, recipe_settings

MEASURE_CROP = "mesoscan.measure_crop"
"""`click` context key: the scanner's crop-geometry measurement, set by the scanner's wrappers of these commands."""


def option(recipe: RecipeSetting) -> click.Option:
    """The `mesoscan train` option of one setting of the recipe."""
    s, kind = recipe.setting, recipe.type
    if typing.get_origin(kind) in (typing.Union, types.UnionType):  # `int | None`: None is the default
        kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
    default = None if recipe.default is dataclasses.MISSING else recipe.default
    extra: dict = {}
    if typing.get_origin(kind) is typing.Literal:
        extra["type"] = click.Choice(typing.get_args(kind))
    elif typing.get_origin(kind) is tuple:
        extra.update(callback=parse_range(typing.get_args(kind)[0]), metavar="LO-HI")
        default = None if default is None else format_range(default)
    elif kind is bool:
        extra["is_flag"] = True  # `--flip/--no-flip`, or `--mixed-precision` alone
    elif kind is Path:
        extra["type"] = click.Path(file_okay=False, exists=True, path_type=Path)
    else:
        extra["type"] = kind
    plain_flag = kind is bool and "/" not in s.flag
    return click.Option(
        [s.flag, recipe.name],
        default=default,
        required=s.required if s.required is not None else recipe.default is dataclasses.MISSING,
        help=help_text(s),
        show_default=s.show_default and default not in (None, "") and not plain_flag,
        **{**extra, **({"metavar": s.metavar} if s.metavar else {})},
    )


@click.command(
    params=[
        *map(option, recipe_settings()),
        click.Option(
            ["--ensemble", "members"],
            default=None,
            help="Instead of training: register NAME as the mean of these comma-separated trained models, its "
            "threshold chosen on their shared validation split of --data.",
        ),
        click.Option(
            ["--out", "out_dir"],
            type=click.Path(file_okay=False, path_type=Path),
            default=None,
            help="Where to register it (default: <models_dir>/trained; serving/weights to ship it).",
        ),
        click.Option(["--no-augment"], is_flag=True, help="Turn every augmentation off."),
    ]
)
def train(members: str | None, out_dir: Path | None, no_augment: bool, **options) -> None:
    """Train MesoNet on labelled face crops (validation split by cluster) and register the model as NAME.

    Writes NAME.weights.h5, NAME.json (recipe, data, validation metrics, threshold at the equal error rate) and
    NAME.md (model card). Re-running an interrupted command resumes it from its last finished epoch.
    """
    from serving.cli import command_settings
    from serving.config import ServingSettings

    if members and options["arch"]:
        raise click.UsageError("--ensemble combines trained models: leave out --arch")
    if not members and not options["arch"]:
        raise click.UsageError("--arch is required (or --ensemble MODELS)")
    settings = command_settings(ServingSettings)
    invocation = shlex.join(sys.argv)
    if members:
        from serving.training.ensemble import register_ensemble

        result = register_ensemble(
            options["name"],
            [m.strip() for m in members.split(",") if m.strip()],
            options["data_dir"],
            out_dir,
            settings,
            description=options["description"],
            progress=True,
            invocation=invocation,
            rows=options["rows"],
        )
    else:
        from serving.training.run import train as run_training

        result = run_training(
            TrainConfig.from_options(options, no_augment=no_augment),
            out_dir,
            settings,
            progress=True,
            invocation=invocation,
            measure_crop=click.get_current_context().meta.get(MEASURE_CROP),
        )
    report_registered(result)


@click.command()
@click.argument("name")
@click.option(
    "--data",
    "data_dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    required=True,
    help="The crops the model was trained on (its recorded validation split is re-derived and checked).",
)
@click.option(
    "--rows",
    default=None,
    callback=parse_range(int),
    metavar="FIRST-LAST",
    help="For a model trained before rows were recorded: the labels.csv rows it used, e.g. 1-16000.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to register it (default: <models_dir>/trained; serving/weights to ship it).",
)
def calibrate(name: str, data_dir: Path, rows: tuple[int, int] | None, out_dir: Path | None) -> None:
    """Fit NAME's calibration, threshold and `uncertain` band on its validation split (same weights) and record
    its training crops' geometry; registers the next version of NAME."""
    from serving.cli import command_settings
    from serving.config import ServingSettings
    from serving.training.recalibrate import recalibrate

    result = recalibrate(
        name,
        data_dir,
        out_dir,
        command_settings(ServingSettings),
        rows=rows,
        measure_crop=click.get_current_context().meta.get(MEASURE_CROP),
        progress=True,
        invocation=shlex.join(sys.argv),
    )
    report_registered(result)


def report_registered(result) -> None:
    meta, val = result.metadata, result.metadata["metrics"]["validation"]
    click.echo(f"registered {meta['name']} v{meta['version']}: {result.metadata_path}")
    click.echo(
        f"validation ({val['n']} crops): ROC AUC {val['roc_auc']:.4f}, EER {val['eer']:.4f}, "
        f"accuracy {val['accuracy']:.4f} at threshold {meta['threshold']:.4f}"
        + (f" (best epoch {val['best_epoch']})" if "best_epoch" in val else "")
    )
    if "band" in meta:
        click.echo(
            f"uncertain band ±{meta['band']['band']:.4f} (target met: {meta['band']['target_met']}); "
            f"crop margin {meta.get('crop', {}).get('margin')}"
        )
