"""The authors' Keras 2 weight files load by name: every array lands in the layer it names, every variable filled."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from serving import mesonet
from serving.errors import WeightsMismatchError
from serving.keras2_weights import load_keras2_weights
from serving.registry import BUILTIN
from tests.conftest import MESONET_DIR, require_shared

FILES = {spec.weights.filename: spec.arch for spec in BUILTIN}


def _file_arrays(path: Path) -> dict[tuple[str, str], np.ndarray]:
    with h5py.File(path, "r") as f:
        return {
            (layer.decode(), weight.decode()): np.asarray(f[layer.decode()][weight.decode()])
            for layer in f.attrs["layer_names"]
            for weight in f[layer.decode()].attrs["weight_names"]
        }


def _type_and_counter(name: str) -> tuple[str, int]:
    kind, n = re.fullmatch(r"(.+)_(\d+)", name).groups()
    return kind, int(n)


@pytest.mark.parametrize("filename", sorted(FILES))
def test_every_array_lands_in_the_layer_it_names(filename):
    path = require_shared(MESONET_DIR / filename)
    model = mesonet.build(FILES[filename], output="p_real")
    assignments = load_keras2_weights(model, path)
    arrays = _file_arrays(path)
    assert len(assignments) == len(arrays)

    # Independently of the loader's bookkeeping: each file array equals exactly one model variable, and that
    # variable belongs to a layer of the same type whose rank among its type matches the file layer's rank.
    variables = {v.path: np.asarray(v) for v in model.weights}
    file_layers_by_type: dict[str, list[int]] = {}
    for layer, _ in arrays:
        kind, n = _type_and_counter(layer)
        file_layers_by_type.setdefault(kind, []).append(n)
    for (layer, weight), array in arrays.items():
        matches = [p for p, value in variables.items() if value.shape == array.shape and np.array_equal(value, array)]
        assert len(matches) == 1, f"{layer}/{weight} matches {matches}"
        model_layer, variable_name = matches[0].split("/")
        kind, n = _type_and_counter(layer)
        model_kind, model_n = _type_and_counter(model_layer)
        assert model_kind == kind
        assert model_n == sorted(set(file_layers_by_type[kind])).index(n) + 1
        assert variable_name == weight.split("/")[-1].split(":")[0]

    # Every model variable was filled from the file (none kept its initial value).
    filled = {a.model_variable for a in assignments}
    assert filled == set(variables)


@pytest.mark.parametrize("filename", sorted(FILES))
def test_model_layers_match_the_file_layer_for_layer(filename):
    """Weightless layers too: the architecture has exactly the file's layers (e.g. no LeakyReLU in Meso-4)."""
    path = require_shared(MESONET_DIR / filename)
    model = mesonet.build(FILES[filename])
    with h5py.File(path, "r") as f:
        file_kinds = sorted(
            _type_and_counter(n.decode())[0] for n in f.attrs["layer_names"] if not n.decode().startswith("input")
        )
    ours = sorted(
        _type_and_counter(layer.name)[0]
        for layer in model.layers
        if layer.name not in {"images", "scale", "fake_probability"}
    )
    assert ours == file_kinds


@pytest.fixture
def meso4_copy(tmp_path):
    target = tmp_path / "Meso4_DF.h5"
    shutil.copyfile(require_shared(MESONET_DIR / "Meso4_DF.h5"), target)
    target.chmod(0o644)
    return target


def test_extra_layer_in_file_is_a_loud_error(meso4_copy):
    with h5py.File(meso4_copy, "r+") as f:
        f.copy("conv2d_8", "conv2d_9")
        names = [n.decode() for n in f.attrs["layer_names"]] + ["conv2d_9"]
        f.attrs["layer_names"] = np.array([n.encode() for n in names])
    with pytest.raises(WeightsMismatchError, match=r"Meso4_DF.h5.*'conv2d_9'.*5th conv2d.*no counterpart"):
        load_keras2_weights(mesonet.meso4(), meso4_copy)


def test_missing_layer_in_file_is_a_loud_error(meso4_copy):
    with h5py.File(meso4_copy, "r+") as f:
        names = [n for n in f.attrs["layer_names"] if n != b"dense_4"]
        f.attrs["layer_names"] = np.array(names)
    with pytest.raises(WeightsMismatchError, match=r"model layer 'dense_2' has no layer in the file"):
        load_keras2_weights(mesonet.meso4(), meso4_copy)


def test_wrong_shape_is_a_loud_error(meso4_copy):
    with h5py.File(meso4_copy, "r+") as f:
        del f["conv2d_6"]["conv2d_6"]["kernel:0"]
        f["conv2d_6"]["conv2d_6"]["kernel:0"] = np.zeros((3, 3, 8, 8), np.float32)
    with pytest.raises(WeightsMismatchError, match=r"'conv2d_6/kernel:0' has shape \(3, 3, 8, 8\).*\(5, 5, 8, 8\)"):
        load_keras2_weights(mesonet.meso4(), meso4_copy)


def test_missing_array_leaves_variable_unfilled_and_says_so(meso4_copy):
    with h5py.File(meso4_copy, "r+") as f:
        group = f["batch_normalization_7"]
        names = [n for n in group.attrs["weight_names"] if not n.decode().endswith("moving_variance:0")]
        group.attrs["weight_names"] = np.array(names)
    with pytest.raises(WeightsMismatchError, match=r"leaves \['moving_variance'\].*'batch_normalization_3'"):
        load_keras2_weights(mesonet.meso4(), meso4_copy)


def test_wrong_architecture_is_a_loud_error():
    path = require_shared(MESONET_DIR / "MesoInception_DF.h5")
    with pytest.raises(WeightsMismatchError, match="does not fit meso4"):
        load_keras2_weights(mesonet.meso4(), path)


def test_not_a_keras2_file(tmp_path):
    path = tmp_path / "empty.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(WeightsMismatchError, match="not a Keras 2 weight file"):
        load_keras2_weights(mesonet.meso4(), path)
