"""A training run's resumable state: one file, replaced atomically at the end of every epoch.

The file (`checkpoint.npz` in the run folder) holds everything the next epoch depends on: every model variable
(the random seed states of the dropout layers included), every optimizer variable (its iteration count drives the
learning-rate schedule), the weights of the best epoch so far, and the loop's own state (epochs done, best value,
epochs without progress, the history). The data order and the augmentation of epoch `e` are drawn from
`(seed, e)` alone, so a run killed at any instant and resumed from this file trains exactly as if it had not
stopped. One file, written in one `os.replace`, so no kill can leave its parts from different epochs.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from serving.files import atomic_writer

FORMAT = 1


@dataclass
class LoopState:
    epochs_done: int = 0
    best: float = -math.inf
    best_epoch: int = 0
    wait: int = 0
    """Epochs since the best one."""
    history: list[dict] = field(default_factory=list)
    """One dict of logs per epoch done (1-based `epoch`)."""


@dataclass
class Checkpoint:
    state: LoopState
    best_weights: list[np.ndarray] | None
    """The model's `weights` (not `variables`) at the best epoch."""


def _values(variables) -> list[np.ndarray]:
    return [np.asarray(v.numpy()) for v in variables]


def save(path: Path, model, state: LoopState, best_weights: list[np.ndarray] | None) -> None:
    arrays: dict[str, np.ndarray] = {"meta": np.array(json.dumps({"format": FORMAT, "state": asdict(state)}))}
    for prefix, values in (
        ("model", _values(model.variables)),
        ("optimizer", _values(model.optimizer.variables)),
        ("best", best_weights or []),
    ):
        arrays.update({f"{prefix}_{i:04d}": value for i, value in enumerate(values)})
    with atomic_writer(path) as f:
        np.savez(f, **arrays)


def discard_partial(path: Path) -> list[Path]:
    """Remove what a process killed while writing `path` left: `atomic_writer`'s temp files beside it (a kill -9 can
    clean up nothing itself). Returns what was removed."""
    partial = sorted(path.parent.glob(f".{path.name}.*.tmp"))
    for leftover in partial:
        leftover.unlink(missing_ok=True)
    return partial


def restore(path: Path, model) -> Checkpoint:
    """Load `path` into `model` (compiled, its optimizer built) and return the loop state and best weights."""
    with np.load(path) as data:
        meta = json.loads(str(data["meta"]))
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: checkpoint format {meta.get('format')!r}, expected {FORMAT}")

        def group(prefix: str) -> list[np.ndarray]:
            return [data[k] for k in sorted(k for k in data.files if k.startswith(prefix + "_"))]

        pairs = []
        for prefix, variables in (("model", model.variables), ("optimizer", model.optimizer.variables)):
            values = group(prefix)
            if len(values) != len(variables):
                raise ValueError(f"{path}: {len(values)} {prefix} arrays for {len(variables)} variables")
            for variable, value in zip(variables, values, strict=True):
                if tuple(variable.shape) != value.shape:
                    raise ValueError(f"{path}: {variable.path} has shape {tuple(variable.shape)}, file {value.shape}")
                pairs.append((variable, value))
        for variable, value in pairs:  # checked whole first: a wrong file changes nothing
            variable.assign(value)
        best = group("best") or None
    return Checkpoint(LoopState(**meta["state"]), best)
