"""The model registry: every model MesoScan can score with, its weights, threshold, provenance and licence.

Three kinds of entries:

* the authors' 2018 files (`meso4_df`, `meso4_f2f`, `mesoinception4_df`, `mesoinception4_f2f`), fetched from
  their upstream URL with a pinned sha256 (see `serving.fetch`);
* models trained by MesoScan: `<name>.json` metadata beside `<name>.weights.h5` in `serving/weights/`
  (committed, shipped with the package) or in `<models_dir>/trained/` (a user's own);
* ensembles (`"kind": "ensemble"` in `<name>.json`, same folders): the mean fake probability of registered
  single models (`members`, each pinned by its weights' sha256), with a threshold of their own. An ensemble
  loads as one Keras model (`load_keras_model`), so it predicts and exports like any other model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from serving.config import ServingSettings
from serving.errors import ModelFetchError, UnknownModelError, WeightsMismatchError

if TYPE_CHECKING:
    from serving.mesonet import Arch, Output

PACKAGED_WEIGHTS = Path(__file__).parent / "weights"
WeightsFormat = Literal["keras2_h5", "keras3", "ensemble"]

AUTHORS_URL = "https://github.com/DariusAf/MesoNet/raw/master/weights/{filename}"
AUTHORS_LICENCE = "Apache-2.0 (weights by the MesoNet authors; see models/mesonet/LICENSE and NOTICE)"
AUTHORS_CROP_MARGIN = 1.18
AUTHORS_CROP_NOTE = (
    "The authors' face extraction (github.com/DariusAf/MesoNet, pipeline.py: FaceFinder.find_coordinates and "
    "get_aligned_face) cuts a square of side 1.3 × 2.2 × max(eye distance, eye-to-mouth distance) from "
    "face_recognition landmarks, centred on the nose and rotated upright on the eye-mouth axis, then resizes it to "
    "256×256. On the shared clips that square is 1.18× the longer side of BlazeFace's face box at the median "
    "(106 faces; 10th percentile 1.14, 90th 1.31), so MesoScan cuts their models' faces at margin 1.18."
)
DEFAULT_CROP_MARGIN = 1.3
"""Models registered before crop geometry was recorded."""
AUTHORS_PROVENANCE = (
    "Afchar, Nozick, Yamagishi, Echizen, 'MesoNet: a Compact Facial Video Forgery Detection Network', "
    "WIFS 2018; weights from github.com/DariusAf/MesoNet (weights/{filename}), trained by the authors on "
    "their {dataset} dataset (2018)"
)


@dataclass(frozen=True)
class WeightsFile:
    """One weight file: where it is stored locally and how to get and verify it."""

    group: str
    filename: str
    sha256: str
    url: str | None = None
    packaged_path: Path | None = None
    """Set for weights shipped with MesoScan (or written by `mesoscan train`): no download needed."""

    def local_path(self, settings: ServingSettings) -> Path:
        return self.packaged_path or settings.models_dir / self.group / self.filename


@dataclass(frozen=True)
class ModelSpec:
    name: str
    arch: Arch | Literal["ensemble"]
    weights: WeightsFile
    """An ensemble's "weights file" is its own JSON; its sha256 is `ensemble_digest` of the members' pins."""
    weights_format: WeightsFormat
    output: Output
    threshold: float
    """Scores at or above it are called fake."""
    version: int
    provenance: str
    licence: str
    description: str = ""
    metrics: dict = field(default_factory=dict, compare=False)
    card: Path | None = None
    members: tuple[str, ...] = ()
    """An ensemble's member model names (empty for a single model)."""
    member_sha256: tuple[str, ...] = ()
    """The sha256 of each member's weights when the ensemble was made (its threshold is only valid for those)."""
    crop_margin: float = DEFAULT_CROP_MARGIN
    """Side of the square face crop as a multiple of the longer side of BlazeFace's face box: the geometry the model
    was trained on (an ensemble's members keep their own)."""
    crop_note: str = ""
    """How `crop_margin` was found."""
    calibration: dict | None = field(default=None, compare=False)
    """Platt scaling applied to the network's output (`serving.calibration`); `threshold` is on that scale."""
    uncertain_band: float | None = None
    """Scores within this distance of `threshold` are `uncertain` (None: the scanner's default)."""
    band_rule: dict | None = field(default=None, compare=False)

    @property
    def is_ensemble(self) -> bool:
        return bool(self.members)


def _authors(name: str, arch: Arch, filename: str, sha256: str, dataset: str) -> ModelSpec:
    return ModelSpec(
        name=name,
        arch=arch,
        weights=WeightsFile("mesonet", filename, sha256, AUTHORS_URL.format(filename=filename)),
        weights_format="keras2_h5",
        output="p_real",
        threshold=0.5,
        version=1,
        provenance=AUTHORS_PROVENANCE.format(filename=filename, dataset=dataset),
        licence=AUTHORS_LICENCE,
        description=f"{arch} with the authors' 2018 {dataset} weights",
        crop_margin=AUTHORS_CROP_MARGIN,
        crop_note=AUTHORS_CROP_NOTE,
    )


BUILTIN: tuple[ModelSpec, ...] = (
    _authors(
        "meso4_df",
        "meso4",
        "Meso4_DF.h5",
        "036ed30d04ffd9c7506f825b97c86aa64915f5818931da96817b169aad790af5",
        "Deepfake",
    ),
    _authors(
        "meso4_f2f",
        "meso4",
        "Meso4_F2F.h5",
        "bcfda015d217b9f8d6557693edbdf9f4e79cfd22672541968dd0e2954462b5d7",
        "Face2Face",
    ),
    _authors(
        "mesoinception4_df",
        "mesoinception4",
        "MesoInception_DF.h5",
        "234586d40058e76ef8b6f27ca4b63c06e31c2a5a69c0d8ba6f30b1468ab7bafa",
        "Deepfake",
    ),
    _authors(
        "mesoinception4_f2f",
        "mesoinception4",
        "MesoInception_F2F.h5",
        "d4533ac8a3197dc35c47405d23d99e888c1d0135e267e03540c7451feaccff3f",
        "Face2Face",
    ),
)


def ensemble_digest(members: tuple[str, ...], member_sha256: tuple[str, ...]) -> str:
    """The identity of an ensemble's weights: sha256 over its members' names and weight pins, in order."""
    text = "".join(f"{name}\0{sha}\n" for name, sha in zip(members, member_sha256, strict=True))
    return hashlib.sha256(text.encode()).hexdigest()


def trained_spec(metadata_path: Path) -> ModelSpec:
    """A registry entry from a trained model's `<name>.json` (written by `mesoscan train`)."""
    meta = json.loads(metadata_path.read_text())
    card = metadata_path.with_suffix(".md")
    common = {
        "name": meta["name"],
        "threshold": float(meta["threshold"]),
        "version": int(meta["version"]),
        "provenance": meta["provenance"],
        "licence": meta["licence"],
        "description": meta.get("description", ""),
        "metrics": meta.get("metrics", {}),
        "card": card if card.exists() else None,
        "calibration": meta.get("calibration"),
        "uncertain_band": (meta.get("band") or {}).get("band"),
        "band_rule": meta.get("band"),
    }
    crop = meta.get("crop") or {}
    if meta.get("kind") == "ensemble":
        members = tuple(m["name"] for m in meta["members"])
        pins = tuple(m["sha256"] for m in meta["members"])
        return ModelSpec(
            arch="ensemble",
            weights=WeightsFile(
                "trained", metadata_path.name, ensemble_digest(members, pins), packaged_path=metadata_path
            ),
            weights_format="ensemble",
            output="p_fake",
            members=members,
            member_sha256=pins,
            crop_margin=float(crop.get("margin", DEFAULT_CROP_MARGIN)),
            crop_note=crop.get("note", ""),
            **common,
        )
    weights = metadata_path.with_name(meta["weights"])
    return ModelSpec(
        arch=meta["arch"],
        weights=WeightsFile("trained", weights.name, meta["sha256"], packaged_path=weights),
        weights_format="keras3",
        output=meta.get("output", "p_fake"),
        crop_margin=float(crop.get("margin", DEFAULT_CROP_MARGIN)),
        crop_note=crop.get("note", "recorded before crop geometry was measured: the scanner's former default"),
        **common,
    )


def _trained_dirs(settings: ServingSettings) -> list[Path]:
    return [PACKAGED_WEIGHTS, settings.models_dir / "trained"]


def list_models(settings: ServingSettings) -> list[ModelSpec]:
    """Every registered model: the authors' files first, then trained ones (packaged before the user's)."""
    specs = {spec.name: spec for spec in BUILTIN}
    for directory in _trained_dirs(settings):
        for meta in sorted(directory.glob("*.json")) if directory.is_dir() else []:
            spec = trained_spec(meta)
            specs.setdefault(spec.name, spec)
    return list(specs.values())


def get_model(name: str, settings: ServingSettings) -> ModelSpec:
    for spec in list_models(settings):
        if spec.name == name:
            return spec
    known = ", ".join(spec.name for spec in list_models(settings))
    raise UnknownModelError(f"unknown model {name!r}; registered models: {known} (see `mesoscan models list`)")


def is_installed(spec: ModelSpec, settings: ServingSettings) -> bool:
    if spec.is_ensemble:
        try:
            return all(is_installed(member, settings) for member in ensemble_members(spec, settings))
        except (UnknownModelError, WeightsMismatchError):
            return False
    return spec.weights.local_path(settings).is_file()


def ensemble_members(spec: ModelSpec, settings: ServingSettings) -> list[ModelSpec]:
    """The member specs of ensemble `spec`, each checked against the weights pinned when the ensemble was made."""
    members = []
    for name, pinned in zip(spec.members, spec.member_sha256, strict=True):
        try:
            member = get_model(name, settings)
        except UnknownModelError:
            raise UnknownModelError(f"ensemble {spec.name!r}: member model {name!r} is not registered") from None
        if member.is_ensemble:
            raise WeightsMismatchError(
                f"ensemble {spec.name!r}: member {name!r} is an ensemble itself; members must be single models"
            )
        if member.weights.sha256 != pinned:
            raise WeightsMismatchError(
                f"ensemble {spec.name!r}: member {name!r} (v{member.version}) has other weights than when the "
                f"ensemble was made (sha256 {member.weights.sha256[:12]}…, pinned {pinned[:12]}…); register the "
                "ensemble again (`mesoscan train --ensemble ...`) so its threshold fits"
            )
        members.append(member)
    return members


def ensure_weights(spec: ModelSpec, settings: ServingSettings) -> Path:
    """The local weight file of `spec`, fetched (and verified) first when it is not installed."""
    from serving.fetch import fetch_weights

    path = spec.weights.local_path(settings)
    if spec.is_ensemble:
        for member in ensemble_members(spec, settings):
            ensure_weights(member, settings)
        return path
    if spec.weights.packaged_path is not None:
        if not path.is_file():
            raise ModelFetchError(f"{spec.name}: weight file {path} is missing from the installation")
        return path
    return path if path.is_file() else fetch_weights(spec.weights, settings)


def load_keras_model(spec: ModelSpec, settings: ServingSettings):
    """Build `spec`'s architecture and fill it with its weights (fetching them when needed).

    An ensemble becomes one model: its members side by side on the same input, their outputs averaged
    (output layer `fake_probability`, [N]).
    """
    from serving import mesonet
    from serving.keras2_weights import load_keras2_weights

    if spec.is_ensemble:
        return _calibrated(_ensemble_model(spec, settings), spec)
    path = ensure_weights(spec, settings)
    model = mesonet.build(spec.arch, spec.output)
    if spec.weights_format == "keras2_h5":
        load_keras2_weights(model, path)
    else:
        model.load_weights(path)
    return _calibrated(model, spec)


def load_raw_model(spec: ModelSpec, settings: ServingSettings):
    """`spec`'s network without its calibration (for fitting a new one)."""
    from dataclasses import replace

    return load_keras_model(replace(spec, calibration=None), settings)


def _calibrated(model, spec: ModelSpec):
    """`model` with `spec`'s calibration as its last layer (named `fake_probability`, as the raw output was)."""
    if not spec.calibration:
        return model
    import keras

    from serving.calibration import layer

    raw = keras.Model(model.input, model.output, name=f"{model.name}_raw")
    images = keras.Input(model.input.shape[1:], dtype=model.input.dtype, name="images")
    return keras.Model(images, layer(spec.calibration)(raw(images)), name=model.name)


def _ensemble_model(spec: ModelSpec, settings: ServingSettings):
    import keras

    from serving.mesonet import IMAGE_SIZE

    images = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), dtype="uint8", name="images")
    scores = []
    for i, member in enumerate(ensemble_members(spec, settings)):
        model = load_keras_model(member, settings)
        scores.append(keras.Model(model.input, model.output, name=f"member_{i}_{member.name}")(images))
    name = "mean" if spec.calibration else "fake_probability"  # the calibration layer takes the name otherwise
    mean = keras.layers.Average(name=name)(scores) if len(scores) > 1 else scores[0]
    return keras.Model(images, mean, name=f"ensemble_{spec.name}")
