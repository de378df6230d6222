"""What every data source returns (`SourceData`) and the helpers all sources share."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fondtrain.errors import UserError


@dataclass
class SourceData:
    """One data set in memory.

    Attributes:
        x_train: [N, M] float32.
        x_val: [N_val, M] float32.
        y_train: [N] int64 labels, or None.
        y_val: [N_val] int64 labels, or None.
        meta: JSON-serialisable description; holds at least `sample_shape` and
            `normalization` {"mean", "std"} (stored = (raw - mean) / std).
    """

    x_train: np.ndarray
    x_val: np.ndarray
    y_train: np.ndarray | None = None
    y_val: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def input_dim(self) -> int:
        """M, the length of one flattened sample."""
        return int(self.x_train.shape[1])


def standardize_splits(train: np.ndarray, *others: np.ndarray) -> tuple[list[np.ndarray], float, float]:
    """Scale every array with the global (scalar) mean / std of `train`; float32 out."""
    mean = float(np.mean(train, dtype=np.float64))
    std = float(np.std(train, dtype=np.float64))
    if not std > 0:
        std = 1.0
    out = [((a - mean) / std).astype(np.float32) for a in (train, *others)]
    return out, mean, std


def existing_path(path: str | os.PathLike | None, dataset: str, what: str) -> Path:
    if path is None:
        raise UserError(f"dataset {dataset!r} needs --path (path=) set to {what}.")
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"{p} does not exist; set --path (path=) to {what}.")
    return p
