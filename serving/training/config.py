"""The training recipe: `TrainConfig`, one typed config whose settings carry their own option, help and card wording.

Everything that decides a run is a field of `TrainConfig`; the augmentation is its `augment` field, an
`AugmentConfig` (serving/augment.py). Each setting's `Setting` (a field's metadata; the augmentation's in
`AUGMENT_SETTINGS`) says how `mesoscan train` spells it, its help, and how the model card words it. From them come:

* the options of `mesoscan train` (serving/training/commands.py);
* `TrainConfig.command_line()`, the command recorded in a model's JSON and on its card;
* the card's wording of the schedule and the augmentation (`schedule_wording`, `augmentation_wording`);
* `TrainConfig.run_key()`, the name of a run's folder, by which the same command resumes a run.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import json
import shlex
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

from serving.augment import AugmentConfig
from serving.contract import ARCHS, Arch
from serving.errors import InvalidInputError

AUGMENT_IMPLEMENTATION = 2
"""Part of a run's key: a run is never resumed with batches augmented by another implementation."""

Schedule = Literal["step", "cosine", "constant"]
ClassWeight = Literal["balanced", "none"]

SCHEDULES: dict[Schedule, str] = {
    "step": "÷10 every {step_every} iterations down to {min_learning_rate} (the paper's)",
    "cosine": "cosine decay to {min_learning_rate} over the run",
    "constant": "constant",
}
"""Each schedule as the card words it (formatted with the config); `--schedule`'s help says it with option names."""

DFDC_DATA = "DFDC face crops (Deepfake Detection Challenge training set, 224×224 JPEG face crops)"
DFDC_LICENCE = (
    "Non-commercial research use only: trained on Deepfake Detection Challenge (DFDC) data, whose terms "
    "allow non-commercial research use only; these weights carry that restriction. "
    "MesoScan's code is Apache-2.0."
)

SETTING = "mesoscan.setting"
"""The key of a field's `Setting` in its dataclass metadata."""


@dataclass(frozen=True)
class Setting:
    """How one setting of the recipe is given, recorded and described."""

    flag: str
    """`--lr`; a switch `--flip/--no-flip`; a flag (a bool without `/`) `--mixed-precision`."""
    help: str
    """May name other settings, `{min_learning_rate}`: `help_text` writes them as their options."""
    card: str = ""
    """The card's wording, formatted with the settings of its group (`rotation ±{rotation}°`)."""
    record: Literal["always", "set", "changed"] = "always"
    """When the recorded command line spells it: always, when set (not None or False), when not the default."""
    keyed: bool = True
    """Part of the run key; the card's texts are not, so rewording them does not start a new run."""
    required: bool | None = None
    """Whether `mesoscan train` requires the option (default: when the setting has no default)."""
    metavar: str | None = None
    show_default: bool = True

    def spell(self, value: Any, default: Any) -> list[Any]:
        """The command-line words that give this setting `value`."""
        if (self.record == "set" and not value) or (self.record == "changed" and value == default):
            return []
        if "/" in self.flag:
            on, off = self.flag.split("/")
            return [on if value else off]
        if isinstance(value, bool):
            return [self.flag] if value else []
        if isinstance(value, tuple | list):
            return [self.flag, format_range(value)]
        return [self.flag, value]


def setting(flag: str, help: str, **kwargs) -> dict[str, Setting]:
    """A field's metadata: its `Setting`."""
    return {SETTING: Setting(flag, help, **kwargs)}


def format_range(bounds: tuple | list) -> str:
    """`(30, 90)` → `30-90`, as the options take ranges."""
    return f"{bounds[0]}-{bounds[1]}"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run (recorded in the model's JSON; `command_line` reproduces it)."""

    data_dir: Path = field(
        metadata=setting(
            "--data",
            "Crops: labels.csv (filename,label[,cluster][,split]; rows of split `test` are never used) or "
            "real/ and fake/ folders.",
        )
    )
    arch: Arch = field(
        metadata=setting("--arch", "Architecture to train (required unless --ensemble).", required=False)
    )
    name: str = field(metadata=setting("--name", "Register the result as this model name."))
    epochs: int = field(default=20, metadata=setting("--epochs", "Epochs to train at most (see {patience})."))
    batch_size: int = field(default=75, metadata=setting("--batch-size", "Crops per batch."))
    learning_rate: float = field(default=1e-3, metadata=setting("--lr", "Initial learning rate (after any warm-up)."))
    schedule: Schedule = field(
        default="step",
        metadata=setting("--schedule", "; ".join(f"{k}: {v}" if v != k else k for k, v in SCHEDULES.items()) + "."),
    )
    step_every: int = field(
        default=1000, metadata=setting("--step-every", "Iterations between the step schedule's drops.")
    )
    min_learning_rate: float = field(
        default=1e-6, metadata=setting("--min-lr", "The floor of the step and cosine schedules.")
    )
    warmup_epochs: int = field(
        default=0,
        metadata=setting(
            "--warmup-epochs",
            "Epochs of linear warm-up from {min_learning_rate} (cosine schedule).",
            card="after {warmup_epochs} warm-up epochs",
        ),
    )
    val_fraction: float = field(default=0.1, metadata=setting("--val-fraction", "Share of the clusters validated on."))
    seed: int = field(
        default=0, metadata=setting("--seed", "Seeds the split, the initial weights, the order and the augmentation.")
    )
    patience: int = field(
        default=10, metadata=setting("--patience", "Stop after this many epochs without a better validation ROC AUC.")
    )
    class_weight: ClassWeight = field(
        default="balanced",
        metadata=setting(
            "--class-weight", "balanced: REAL and FAKE crops weigh as much in all; none: each crop weighs 1."
        ),
    )
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    """Its settings are described in AUGMENT_SETTINGS."""
    mixed_precision: bool = field(
        default=False,
        metadata=setting(
            "--mixed-precision",
            "Compute in bfloat16 (variables stay float32; the registered model is float32).",
            record="set",
        ),
    )
    steps_per_epoch: int | None = field(
        default=None,
        metadata=setting(
            "--steps-per-epoch", "Batches per epoch (default: one pass over the training crops).", record="set"
        ),
    )
    limit: int | None = field(
        default=None,
        metadata=setting(
            "--limit", "Use at most this many crops (whole clusters, chosen by the seed): quick trials.", record="set"
        ),
    )
    rows: tuple[int, int] | None = field(
        default=None,
        metadata=setting(
            "--rows",
            "Only these data rows of labels.csv (1-based, inclusive), e.g. 1-16000: the crops as they once were.",
            record="set",
            metavar="FIRST-LAST",
        ),
    )
    init_from: str | None = field(
        default=None,
        metadata=setting(
            "--init-from",
            "Start from this registered model's weights (same architecture and validation split): more epochs for a "
            "model whose run has ended, as a new run.",
            record="set",
            metavar="MODEL",
        ),
    )
    data_description: str = field(
        default=DFDC_DATA,
        metadata=setting(
            "--data-description",
            "What the crops are, for the card (default: the DFDC crops MesoScan develops with).",
            record="changed",
            keyed=False,
            show_default=False,
        ),
    )
    licence: str = field(
        default=DFDC_LICENCE,
        metadata=setting(
            "--licence",
            "The trained weights' terms (default: DFDC's, non-commercial research only).",
            record="changed",
            keyed=False,
            show_default=False,
        ),
    )
    description: str = field(
        default="", metadata=setting("--description", "One line for the model card.", record="changed", keyed=False)
    )

    def __post_init__(self):
        problems = []
        if self.arch not in ARCHS:
            problems.append(f"unknown architecture {self.arch!r} (choose {', '.join(ARCHS)})")
        if self.schedule not in SCHEDULES:
            problems.append(f"unknown schedule {self.schedule!r} (choose {', '.join(SCHEDULES)})")
        if not valid_name(self.name):
            problems.append(f"model name {self.name!r} must be letters, digits, '_', '-' or '.'")
        for key in ("epochs", "batch_size", "step_every", "patience"):
            if getattr(self, key) < 1:
                problems.append(f"{key} must be at least 1")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            problems.append("steps_per_epoch must be at least 1")
        if not 0 < self.min_learning_rate <= self.learning_rate:
            problems.append("need 0 < min_learning_rate <= learning_rate")
        if self.rows is not None and not 1 <= self.rows[0] <= self.rows[1]:
            problems.append("rows must be FIRST-LAST with 1 <= FIRST <= LAST")
        if not 0 <= self.warmup_epochs < self.epochs:
            problems.append("warmup_epochs must be below epochs")
        if problems:
            raise InvalidInputError("; ".join(problems))

    @classmethod
    def from_options(cls, values: Mapping[str, Any], no_augment: bool = False) -> TrainConfig:
        """The config of `mesoscan train`'s option values (keyed by setting name; others are ignored)."""
        augment_names = {f.name for f in dataclasses.fields(AugmentConfig)}
        augment = (
            AugmentConfig.none()
            if no_augment
            else AugmentConfig(**{k: v for k, v in values.items() if k in augment_names})
        )
        names = {f.name for f in dataclasses.fields(cls)} - {"augment"}
        return cls(**{k: v for k, v in values.items() if k in names}, augment=augment)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["data_dir"] = str(self.data_dir)
        return d

    def run_key(self) -> str:
        """Identifies the run's folder: the settings that differ from their defaults, the card's wording aside (so
        a setting added later, at its default, leaves the folders of runs under way as they are)."""
        defaults = TrainConfig(data_dir=self.data_dir, arch=self.arch, name=self.name).to_dict()
        unkeyed = {f.name for f in recipe_settings() if not f.setting.keyed}
        d = {k: v for k, v in self.to_dict().items() if k not in unkeyed and v != defaults[k]}
        default_augment = AugmentConfig().to_dict()
        if "augment" in d:
            d["augment"] = {k: v for k, v in d["augment"].items() if v != default_augment[k]}
        d.update(
            arch=self.arch,
            name=self.name,
            data_dir=str(Path(self.data_dir).resolve()),
            augment_implementation=AUGMENT_IMPLEMENTATION,
        )
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]

    def command_line(self, out_dir: Path | None = None) -> str:
        """The `mesoscan train` command that gives this config, every setting that decides the run spelled out."""
        values = self.to_dict()
        values.update(values.pop("augment"))
        args: list[Any] = ["mesoscan", "train"]
        for f in recipe_settings():
            args += f.setting.spell(values[f.name], f.default)
        if out_dir is not None:
            args += ["--out", str(out_dir)]
        return shlex.join(str(x) for x in args)


AUGMENT_SETTINGS: dict[str, Setting] = {
    "flip": Setting("--flip/--no-flip", "Random horizontal flips (half of the crops).", card="horizontal flip"),
    "rotation": Setting("--rotation", "Max rotation either way, degrees.", card="rotation ±{rotation}°"),
    "zoom": Setting("--zoom", "Max zoom in or out, a fraction (0.2: 0.8× to 1.2×).", card="zoom ±{zoom}"),
    "brightness": Setting(
        "--brightness", "Max brightness shift either way, a fraction of 255.", card="brightness ±{brightness}"
    ),
    "hue": Setting("--hue", "Max hue rotation either way, a fraction of the hue circle.", card="hue ±{hue}"),
    "blur_prob": Setting(
        "--blur-prob",
        "Share of crops blurred (Gaussian, sigma drawn from {blur_sigma}).",
        card="Gaussian blur p={blur_prob} σ {blur_sigma[0]}–{blur_sigma[1]} px",
    ),
    "blur_sigma": Setting("--blur-sigma", "Blur sigma range, pixels.", metavar="LO-HI"),
    "downscale_prob": Setting(
        "--downscale-prob",
        "Share of crops shrunk and scaled back up (the detail a lower-resolution video lost).",
        card="downscale then upscale p={downscale_prob} to {downscale_factor[0]}–{downscale_factor[1]} of the side",
    ),
    "downscale_factor": Setting(
        "--downscale-factor", "Range of the shrunk side, a fraction of the crop's.", metavar="LO-HI"
    ),
    "jpeg_prob": Setting(
        "--jpeg-prob",
        "Share of crops JPEG re-compressed (quality drawn from {jpeg_quality}).",
        card="JPEG re-compression p={jpeg_prob} quality {jpeg_quality[0]}–{jpeg_quality[1]}",
    ),
    "jpeg_quality": Setting("--jpeg-quality", "JPEG re-compression quality range.", metavar="LO-HI"),
}
"""The settings of `TrainConfig.augment` (an AugmentConfig), by field name: every field of AugmentConfig has one."""


class RecipeSetting(NamedTuple):
    name: str
    """The field's name: the key of its value in `TrainConfig.to_dict()` (an augmentation's: in its `augment`)."""
    setting: Setting
    default: Any
    """`dataclasses.MISSING` for a setting without a default."""
    type: Any
    """The field's type (`int`, `tuple[int, int] | None`, a `Literal`...)."""


@functools.cache
def recipe_settings() -> tuple[RecipeSetting, ...]:
    """Every setting of the recipe, in command-line order: TrainConfig's, the augmentation's in place of `augment`."""

    def of(cls: type, setting_of) -> list[RecipeSetting]:
        hints = typing.get_type_hints(cls)
        return [RecipeSetting(f.name, setting_of(f), f.default, hints[f.name]) for f in dataclasses.fields(cls)]

    augment = of(AugmentConfig, lambda f: AUGMENT_SETTINGS[f.name])
    out: list[RecipeSetting] = []
    for s in of(TrainConfig, lambda f: f.metadata.get(SETTING)):
        out += augment if s.name == "augment" else [s]
    return tuple(out)


def help_text(s: Setting) -> str:
    """`s.help` with the settings it names (`{min_learning_rate}`) written as their options (`--min-lr`)."""
    return s.help.format_map({f.name: f.setting.flag.split("/")[0] for f in recipe_settings()})


def valid_name(name: str) -> bool:
    """A model name is a file name: letters, digits, `_`, `-` and `.`, not starting with `.` or `-`."""
    return bool(name) and name[0] not in ".-" and all(ch.isalnum() or ch in "_-." for ch in name)


# --- the card's wording (serving/modelcard.py) ---------------------------------------------------------------------


def _missing_as_none(values: Mapping) -> Mapping:
    return collections.defaultdict(lambda: None, values)


def schedule_wording(config: Mapping) -> str:
    """The learning-rate schedule of a recorded config (`TrainConfig.to_dict()`), as the card says it."""
    schedule = config.get("schedule")
    if schedule not in SCHEDULES:
        return str(schedule)
    text = SCHEDULES[schedule].format_map(_missing_as_none(config))
    if schedule == "cosine" and config.get("warmup_epochs"):
        warmup = TrainConfig.__dataclass_fields__["warmup_epochs"].metadata[SETTING]
        text += " " + warmup.card.format_map(config)
    return text


def augmentation_wording(augment: Mapping) -> list[str]:
    """The augmentations a recorded config's `augment` turns on, as the card lists them (none: empty)."""
    values = _missing_as_none(augment)
    return [s.card.format_map(values) for name, s in AUGMENT_SETTINGS.items() if s.card and augment.get(name)]
