"""Load the authors' Keras 2 `save_weights` HDF5 files by name, never by position.

A Keras 2 weight file lists its layers in `attrs["layer_names"]` (topological order, which for MesoInception
is not creation order) and each layer's arrays in `attrs["weight_names"]` (`conv2d_5/kernel:0`). Layer
names carry Keras 2's per-type counter, offset by whatever the authors' session had built before
(Meso4_DF holds `conv2d_5..8`). So a file layer `<type>_<n>` is the k-th layer of that type by counter,
and lands in the model layer `<type>_<k>`; each array lands in the variable of the same name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import h5py
import keras
import numpy as np

from serving.errors import WeightsMismatchError

_NAME = re.compile(r"^(?P<type>[a-z_0-9]+?)_(?P<n>\d+)$")
# Layers MesoScan adds around the authors' network; they hold no weights and are absent from their files.
_OURS = {"images", "scale", "fake_probability"}


@dataclass(frozen=True)
class Assignment:
    file_layer: str
    file_weight: str
    model_variable: str
    shape: tuple[int, ...]


def _split(name: str, where: str) -> tuple[str, int]:
    m = _NAME.match(name)
    if not m:
        raise WeightsMismatchError(f"{where}: layer name {name!r} is not of the form <type>_<number>")
    return m["type"], int(m["n"])


def _by_type_rank(names: list[str], where: str) -> dict[tuple[str, int], str]:
    """{(type, k): name} where k ranks the name's counter among names of the same type (from 1)."""
    counters: dict[str, list[int]] = {}
    for name in names:
        kind, n = _split(name, where)
        counters.setdefault(kind, []).append(n)
    return {(kind, rank): f"{kind}_{n}" for kind, ns in counters.items() for rank, n in enumerate(sorted(ns), start=1)}


def _decode(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def load_keras2_weights(model: keras.Model, path: str | Path) -> list[Assignment]:
    """Fill every variable of `model` from `path`; raise `WeightsMismatchError` on any disagreement.

    Returns one `Assignment` per array, so callers and tests can see where each array went.
    """
    path = Path(path)
    where = path.name
    model_layers = {layer.name: layer for layer in model.layers if layer.name not in _OURS}
    model_index = _by_type_rank(list(model_layers), f"model {model.name}")
    assignments: list[Assignment] = []
    with h5py.File(path, "r") as f:
        if "layer_names" not in f.attrs:
            raise WeightsMismatchError(f"{where}: not a Keras 2 weight file (no 'layer_names' attribute)")
        file_names = [n for n in _decode(f.attrs["layer_names"]) if not n.startswith("input_")]
        file_index = _by_type_rank(file_names, where)
        missing = sorted(set(model_index) - set(file_index))
        extra = sorted(set(file_index) - set(model_index))
        if missing or extra:
            raise WeightsMismatchError(
                f"{where} does not fit {model.name}: "
                + "; ".join(
                    [f"file layer {file_index[k]!r} (the {k[1]}th {k[0]}) has no counterpart" for k in extra]
                    + [f"model layer {model_index[k]!r} has no layer in the file" for k in missing]
                )
            )
        for key, file_layer in sorted(file_index.items()):
            layer = model_layers[model_index[key]]
            group = f[file_layer]
            weight_names = _decode(group.attrs.get("weight_names", []))
            variables = {v.name: v for v in layer.weights}
            filled: set[str] = set()
            for weight_name in weight_names:
                short = weight_name.split("/")[-1].split(":")[0]
                if short not in variables:
                    raise WeightsMismatchError(
                        f"{where}: array {weight_name!r} has no variable {short!r} in model layer {layer.name!r} "
                        f"(it has {sorted(variables)})"
                    )
                if short in filled:
                    raise WeightsMismatchError(f"{where}: layer {file_layer!r} stores {short!r} twice")
                array = np.asarray(group[weight_name])
                variable = variables[short]
                if tuple(array.shape) != tuple(variable.shape):
                    raise WeightsMismatchError(
                        f"{where}: {weight_name!r} has shape {array.shape}, "
                        f"model variable {variable.path!r} has shape {tuple(variable.shape)}"
                    )
                variable.assign(array)
                filled.add(short)
                assignments.append(Assignment(file_layer, weight_name, variable.path, tuple(array.shape)))
            unfilled = sorted(set(variables) - filled)
            if unfilled:
                raise WeightsMismatchError(
                    f"{where}: layer {file_layer!r} leaves {unfilled} of model layer {layer.name!r} unfilled"
                )
    return assignments
