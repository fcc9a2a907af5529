"""Meso-4 inference in numpy: `serving.mesonet.meso4` read from its weight file with h5py, without TensorFlow.

Inference only (dropout off, batch normalisation with its moving statistics), float32 as Keras computes it.
Convolutions are im2col + one matmul per layer, one face at a time (which also bounds memory).
Both weight formats of Meso-4 are read: Keras 3 `*.weights.h5` (models trained by MesoScan; each layer's
arrays in `layers/<path>/vars/<i>`, the layer's name in the `vars` group's `name` attribute) and the authors'
Keras 2 `save_weights` files (layers matched by type and rank of their counter, as `serving.keras2_weights`).
"""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from serving.calibration import calibrate
from serving.contract import IMAGE_SIZE
from serving.errors import WeightsMismatchError

BLOCKS = ((8, 3, 2), (8, 5, 2), (16, 5, 2), (16, 5, 4))
"""(filters, kernel, pool) of the four conv/BN/pool blocks."""
BN_EPSILON = 1e-3
"""Keras' BatchNormalization default (both Keras 2 and 3), which `serving.mesonet` keeps."""
CHUNK = 1
"""Faces per pass: one at a time is fastest (a face's im2col columns, up to 13 MB, stay nearer the cache)."""

_ARRAYS = {
    "conv2d": ("kernel", "bias"),
    "batch_normalization": ("gamma", "beta", "moving_mean", "moving_variance"),
    "dense": ("kernel", "bias"),
}


def _shapes() -> dict[str, tuple[tuple[int, ...], ...]]:
    """{layer name: shapes of its arrays} of Meso-4 (names as `serving.mesonet`)."""
    shapes, channels = {}, 3
    for i, (filters, kernel, _) in enumerate(BLOCKS, start=1):
        shapes[f"conv2d_{i}"] = ((kernel, kernel, channels, filters), (filters,))
        shapes[f"batch_normalization_{i}"] = ((filters,),) * 4
        channels = filters
    shapes["dense_1"] = ((8 * 8 * 16, 16), (16,))
    shapes["dense_2"] = ((16, 1), (1,))
    return shapes


def _keras3_arrays(f: h5py.File) -> dict[str, list[np.ndarray]]:
    found = {}
    for group in f.get("layers", {}).values():
        name = group["vars"].attrs.get("name") if "vars" in group else None
        if isinstance(name, bytes):
            name = name.decode()
        if name and len(group["vars"]):  # layers with weights only
            found[name] = [np.asarray(group["vars"][str(i)]) for i in range(len(group["vars"]))]
    return found


def _keras2_arrays(f: h5py.File, where: str) -> dict[str, list[np.ndarray]]:
    """The authors' files name layers with their session's counters (`conv2d_5..8`): rank them per type."""
    counters: dict[str, list[int]] = {}
    for raw in f.attrs["layer_names"]:
        m = re.fullmatch(r"([a-z_0-9]+?)_(\d+)", raw.decode() if isinstance(raw, bytes) else str(raw))
        if not m:
            raise WeightsMismatchError(f"{where}: layer name {raw!r} is not of the form <type>_<number>")
        if m[1] in _ARRAYS:
            counters.setdefault(m[1], []).append(int(m[2]))
    found = {}
    for kind, ns in counters.items():
        for rank, n in enumerate(sorted(ns), start=1):
            group = f[f"{kind}_{n}"]
            names = [w.decode() if isinstance(w, bytes) else str(w) for w in group.attrs["weight_names"]]
            by_short = {w.split("/")[-1].split(":")[0]: np.asarray(group[w]) for w in names}
            if set(by_short) != set(_ARRAYS[kind]):
                raise WeightsMismatchError(f"{where}: layer {kind}_{n} holds {sorted(by_short)}")
            found[f"{kind}_{rank}"] = [by_short[a] for a in _ARRAYS[kind]]
    return found


def load_weights(path: str | Path) -> dict[str, list[np.ndarray]]:
    """{layer name: float32 arrays in Keras' order} from a Meso-4 weight file; `WeightsMismatchError` unless it fits."""
    path = Path(path)
    with h5py.File(path, "r") as f:
        found = _keras2_arrays(f, path.name) if "layer_names" in f.attrs else _keras3_arrays(f)
    expected = _shapes()
    if set(found) != set(expected):
        raise WeightsMismatchError(
            f"{path.name} does not fit meso4: it has layers {sorted(found)}, the network {sorted(expected)}"
        )
    for name, shapes in expected.items():
        got = tuple(tuple(a.shape) for a in found[name])
        if got != shapes:
            raise WeightsMismatchError(f"{path.name}: layer {name} has arrays of shapes {got}, meso4 needs {shapes}")
    return {name: [a.astype(np.float32) for a in arrays] for name, arrays in found.items()}


def _conv_relu(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """'same' convolution, stride 1, then ReLU: [N, H, W, C] → [N, H, W, F]."""
    k = kernel.shape[0]
    n, h, w, c = x.shape
    pad = (k - 1) // 2
    padded = np.pad(x, ((0, 0), (pad, k - 1 - pad), (pad, k - 1 - pad), (0, 0)))
    windows = sliding_window_view(padded, (k, k), axis=(1, 2)).transpose(0, 1, 2, 4, 5, 3)  # [n, h, w, ky, kx, c]
    out = windows.reshape(n * h * w, k * k * c) @ kernel.reshape(k * k * c, -1)
    out += bias
    return np.maximum(out, 0, out=out).reshape(n, h, w, -1)


def _max_pool(x: np.ndarray, pool: int) -> np.ndarray:
    """'same' max pooling with stride `pool` over sides it divides (256 / 2 / 2 / 2 / 4)."""
    out = np.maximum(x[:, ::pool, ::pool], x[:, ::pool, 1::pool])
    for dy in range(pool):
        for dx in range(pool):
            if dy or dx > 1:
                np.maximum(out, x[:, dy::pool, dx::pool], out=out)
    return out


class Meso4:
    """Meso-4 with its weights: `Meso4(path, output, calibration)(faces)` is the Keras model's `fake_probability`."""

    def __init__(self, path: str | Path, output: str = "p_fake", calibration: dict | None = None):
        self.weights = load_weights(path)
        self.from_p_real = output == "p_real"
        self.calibration = calibration
        self._bn = []
        for i in range(1, len(BLOCKS) + 1):
            gamma, beta, mean, var = self.weights[f"batch_normalization_{i}"]
            scale = gamma / np.sqrt(var + np.float32(BN_EPSILON))
            self._bn.append((scale, beta - mean * scale))

    def _raw(self, faces: np.ndarray) -> np.ndarray:
        x = faces.astype(np.float32) * np.float32(1 / 255)
        for i, (_, _, pool) in enumerate(BLOCKS, start=1):
            x = _conv_relu(x, *self.weights[f"conv2d_{i}"])
            scale, shift = self._bn[i - 1]
            x *= scale
            x += shift
            x = _max_pool(x, pool)
        x = x.reshape(len(x), -1) @ self.weights["dense_1"][0] + self.weights["dense_1"][1]
        z = (x @ self.weights["dense_2"][0] + self.weights["dense_2"][1])[:, 0]
        p = 1 / (1 + np.exp(-z))
        return 1 - p if self.from_p_real else p

    def __call__(self, faces: np.ndarray) -> np.ndarray:
        """uint8 [N, 256, 256, 3] → float32 [N] fake probabilities (calibrated when the model has a calibration)."""
        if faces.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
            raise ValueError(f"Meso-4 takes [N, {IMAGE_SIZE}, {IMAGE_SIZE}, 3] faces, got {list(faces.shape)}")
        raw = [self._raw(faces[i : i + CHUNK]) for i in range(0, len(faces), CHUNK)]
        scores = np.concatenate(raw) if raw else np.zeros(0, np.float32)
        return calibrate(scores.astype(np.float32), self.calibration)
