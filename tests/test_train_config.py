"""The one training config: its settings make `mesoscan train`'s options, the recorded command line, the card's
wording and the run key; the keys of runs under way do not change."""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path

import click
import pytest

from serving.augment import AugmentConfig
from serving.errors import InvalidInputError
from serving.modelcard import render_card
from serving.training.commands import train as train_command
from serving.training.config import (
    AUGMENT_SETTINGS,
    SETTING,
    TrainConfig,
    augmentation_wording,
    recipe_settings,
    schedule_wording,
)

ROOT = Path(__file__).resolve().parents[1]
COMMAND_ONLY = {"members", "out_dir", "no_augment"}
"""Options of `mesoscan train` that are not settings of a run."""

EVERY_SETTING_CHANGED = {
    "arch": "mesoinception4",
    "name": "other.name-2",
    "epochs": 9,
    "batch_size": 32,
    "learning_rate": 3e-4,
    "schedule": "cosine",
    "step_every": 500,
    "min_learning_rate": 1e-5,
    "warmup_epochs": 2,
    "val_fraction": 0.2,
    "seed": 7,
    "patience": 3,
    "class_weight": "none",
    "flip": False,
    "rotation": 5.0,
    "zoom": 0.1,
    "brightness": 0.2,
    "hue": 0.01,
    "blur_prob": 0.3,
    "blur_sigma": (0.5, 1.0),
    "downscale_prob": 0.1,
    "downscale_factor": (0.4, 0.9),
    "jpeg_prob": 0.5,
    "jpeg_quality": (40, 80),
    "mixed_precision": True,
    "steps_per_epoch": 50,
    "limit": 1000,
    "rows": (1, 16000),
    "init_from": "meso4_dfdc",
    "data_description": "my crops",
    "licence": "mine",
    "description": "a try",
}
"""A value other than the default for every setting but `data_dir`."""


def _config(data_dir: Path, values: dict) -> TrainConfig:
    return TrainConfig.from_options({"data_dir": data_dir, **values})


def _parsed(command_line: str) -> TrainConfig:
    args = shlex.split(command_line)
    assert args[:2] == ["mesoscan", "train"]
    params = train_command.make_context("train", args[2:]).params
    no_augment = params.pop("no_augment")
    return TrainConfig.from_options(params, no_augment=no_augment)


def test_the_runs_under_way_keep_their_keys(tmp_path):
    """A run's folder is `<name>-<run key>`: a key that changed would start the run again from epoch 0. The keys
    below were computed by the code that started the runs (before the config had settings metadata); the first is
    the run `make train` resumes (its recipe: the Makefile's, TRAIN_EPOCHS=16)."""
    recipe = (
        f"--data {tmp_path} --arch meso4 --name meso4_dfdc --epochs 16 --schedule cosine --lr 1e-3 "
        "--warmup-epochs 1 --patience 1000 --jpeg-prob 0.2 --blur-prob 0.1 --downscale-prob 0.2 --out serving/weights"
    )
    params = train_command.make_context("train", recipe.split()).params
    assert params["out_dir"] == Path("serving/weights") and not params["members"]
    config = TrainConfig.from_options(params, no_augment=params["no_augment"])
    crops = Path("/work/shared/data/crops")  # the key holds the resolved data folder of the machine that ran it
    assert dataclasses.replace(config, data_dir=crops).run_key() == "e909f38928de"

    base = {"data_dir": crops, "arch": "meso4", "name": "meso4_dfdc"}
    assert TrainConfig(**base).run_key() == "fff85fd6836e"
    assert TrainConfig(**base, augment=AugmentConfig.none()).run_key() == "f98a648dbb3a"
    many = {**EVERY_SETTING_CHANGED, "name": "x.y-1", "schedule": "step", "rotation": 5}  # an int: the key sees it
    del many["init_from"]  # a setting added since, at its default
    assert _config(crops, many).run_key() == "79a4c12d99f6"
    assert TrainConfig(**base, description="reworded", licence="other").run_key() == "fff85fd6836e"


def test_every_setting_is_declared_once():
    settings = recipe_settings()
    names = [s.name for s in settings]
    assert len(names) == len(set(names))
    assert set(AUGMENT_SETTINGS) == {f.name for f in dataclasses.fields(AugmentConfig)}
    assert all(SETTING in f.metadata for f in dataclasses.fields(TrainConfig) if f.name != "augment")
    assert set(names) == {f.name for f in dataclasses.fields(TrainConfig)} - {"augment"} | set(AUGMENT_SETTINGS)
    assert set(EVERY_SETTING_CHANGED) == set(names) - {"data_dir"}, "the tests here cover every setting"


def test_the_train_options_are_the_settings_with_their_defaults():
    options = {p.name: p for p in train_command.params}
    assert set(options) == {s.name for s in recipe_settings()} | COMMAND_ONLY
    context = click.Context(train_command)
    for s in recipe_settings():
        option = options[s.name]
        assert s.setting.flag.split("/")[0] in option.opts, s.name
        if s.default is dataclasses.MISSING:
            continue
        assert option.process_value(context, option.default) == s.default, s.name
        assert option.help and "{" not in option.help, s.name


def test_the_recorded_command_line_gives_back_the_same_config(tmp_path):
    for values in ({"arch": "meso4", "name": "x"}, EVERY_SETTING_CHANGED):
        config = _config(tmp_path, values)
        assert _parsed(config.command_line()) == config
    none = TrainConfig(tmp_path, "meso4", "x", augment=AugmentConfig.none())
    assert _parsed(none.command_line()) == none
    spelled = _config(tmp_path, EVERY_SETTING_CHANGED).command_line(Path("serving/weights"))
    assert spelled.endswith("--out serving/weights") and "--no-flip" in spelled and "--rows 1-16000" in spelled
    quiet = TrainConfig(tmp_path, "meso4", "x").command_line()
    for left_out in ("--mixed-precision", "--limit", "--rows", "--description", "--licence", "--data-description"):
        assert left_out not in quiet, "unset, or the card's defaults: not spelled out"


def test_no_augment_turns_every_augmentation_off(tmp_path):
    args = ["--data", str(tmp_path), "--arch", "meso4", "--name", "x", "--no-augment", "--jpeg-prob", "0.5"]
    params = train_command.make_context("train", args).params
    assert TrainConfig.from_options(params, no_augment=params["no_augment"]).augment == AugmentConfig.none()


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(InvalidInputError, match="unknown architecture"):
        TrainConfig(tmp_path, "resnet", "x")
    with pytest.raises(InvalidInputError, match="model name"):
        TrainConfig(tmp_path, "meso4", "../evil")
    with pytest.raises(click.BadParameter, match="LO is above HI"):
        train_command.make_context("train", ["--data", str(tmp_path), "--name", "x", "--jpeg-quality", "90-30"])


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "serving" / "weights").glob("*.json")))
def test_the_shipped_cards_are_their_json_rendered(name):
    """The card's Training section is worded by the config's settings: the shipped cards come out as they are."""
    meta = json.loads((ROOT / "serving" / "weights" / f"{name}.json").read_text())
    assert render_card(meta) == (ROOT / "serving" / "weights" / f"{name}.md").read_text()


def test_the_card_words_each_augmentation_and_the_schedule(tmp_path):
    plain = TrainConfig(tmp_path, "meso4", "x", augment=AugmentConfig.none()).to_dict()
    assert augmentation_wording(plain["augment"]) == []
    for name, s in AUGMENT_SETTINGS.items():
        if not s.card:
            continue
        one = dataclasses.replace(AugmentConfig.none(), **{name: EVERY_SETTING_CHANGED[name] or True})
        (wording,) = augmentation_wording(one.to_dict())
        assert wording == s.card.format_map(one.to_dict()) and "None" not in wording
    cosine = _config(tmp_path, EVERY_SETTING_CHANGED).to_dict()
    assert schedule_wording(cosine) == "cosine decay to 1e-05 over the run after 2 warm-up epochs"
    step = TrainConfig(tmp_path, "meso4", "x").to_dict()
    assert schedule_wording(step) == "÷10 every 1000 iterations down to 1e-06 (the paper's)"
    meta = {"name": "x", "arch": "meso4", "training": {"config": cosine, "epochs_run": 9, "steps_per_epoch": 50}}
    card = render_card(meta)
    assert "after 2 warm-up epochs" in card and "JPEG re-compression p=0.5 quality 40–80" in card
