"""Evaluation data: a data set's splits in memory, fitted to the model's patch size.

Splits come from the shard folder `shards_root/<dataset>` when it exists (the data the
run trained on, rows in stored order) and otherwise straight from the source
(`fondtrain.data.sources.load_source`, deterministic given the seed); evaluation never
writes shards, and refuses a photo data set's shards cut by an older patch rule
(`fondtrain.data.shards.check_patch_rule`).

Different patch sizes (probes and out-of-distribution evaluation). A model sees M = P^2
pixels; a data set with another square size S^2 (the 8x8 `digits` for a 16x16 model, or
28x28 MNIST) is resized to P x P with bilinear interpolation (antialiased when shrinking)
and then re-standardised with the scalar mean / std of its *train* split (the same
recipe the sources use), so the model sees zero-mean, unit-variance inputs as in
training. Data already of size M are left as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fondtrain.data.source_data import SourceData
from fondtrain.errors import UserError
from fondtrain.images import patch_side


@dataclass
class EvalData(SourceData):
    """A source's splits (x [N, M] float32, y [N] int64 or None) and the data set's name.
    Without need_train the train split may be an empty [0, M] array."""

    name: str = ""


def load_eval_data(dataset: str, path: str | None = None, shards_root: str | Path | None = "shards",
                   seed: int = 0, need_train: bool = False) -> EvalData:
    """Load `dataset` (shards if built, else the source). need_train: also the train split
    (probes); without it the train split may be an empty [0, M] array."""
    from fondtrain.data.shard_reader import MANIFEST, load_manifest, read_split
    from fondtrain.data.shards import check_patch_rule, shard_folder

    folder = shard_folder(shards_root, dataset, path) if shards_root else None
    if folder is not None and (folder / MANIFEST).is_file():
        manifest = load_manifest(folder)
        check_patch_rule(manifest, folder)
        x_val, y_val = read_split(folder, "val")
        if need_train:
            x_train, y_train = read_split(folder, "train")
        else:
            x_train, y_train = np.zeros((0, x_val.shape[1]), np.float32), None
        meta = {"from": str(folder), "normalization": manifest.get("normalization"),
                "sample_shape": manifest.get("sample_shape")}
        return EvalData(x_train, x_val, y_train, y_val, meta, name=dataset)
    from fondtrain.data.sources import load_source

    data = load_source(dataset, path=path, seed=seed)
    meta = {"from": f"source {dataset}", "normalization": data.meta.get("normalization"),
            "sample_shape": data.meta.get("sample_shape")}
    return EvalData(data.x_train, data.x_val, data.y_train, data.y_val, meta, name=dataset)


def resize_patches(x: np.ndarray, side: int) -> np.ndarray:
    """Square patches [N, S^2] -> [N, side^2], bilinear (antialiased when shrinking)."""
    n, m = x.shape
    s = patch_side(m)
    if s == side:
        return x.astype(np.float32, copy=False)
    images = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).reshape(n, 1, s, s)
    resized = F.interpolate(images, size=(side, side), mode="bilinear", align_corners=False,
                            antialias=side < s)
    return resized.reshape(n, side * side).numpy()


def fit_to_model(data: EvalData, input_dim: int) -> EvalData:
    """Resize a data set to the model's square patch size and re-standardise it (see the
    module docstring); a data set that already fits is returned unchanged."""
    if data.input_dim == input_dim:
        return data
    try:
        side, side_in = patch_side(input_dim), patch_side(data.input_dim)
    except ValueError as err:
        raise UserError(
            f"data set {data.name} has {data.input_dim} values per sample but the model "
            f"takes {input_dim}, and they are not both square patches: evaluate on data of "
            "the model's size."
        ) from err
    x_train = resize_patches(data.x_train, side)
    x_val = resize_patches(data.x_val, side)
    ref = x_train if len(x_train) else x_val
    mean = float(np.mean(ref, dtype=np.float64))
    std = float(np.std(ref, dtype=np.float64)) or 1.0
    meta = dict(data.meta, resized=f"{side_in}x{side_in} -> {side}x{side} (bilinear), "
                f"re-standardised (mean {mean:.4g}, std {std:.4g})")
    return EvalData(((x_train - mean) / std).astype(np.float32), ((x_val - mean) / std).astype(np.float32),
                    data.y_train, data.y_val, meta, name=data.name)


def limit_rows(x: np.ndarray, y: np.ndarray | None, n: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The first n rows (all when n is None or larger)."""
    if n is None or n >= len(x):
        return x, y
    return x[:n], (None if y is None else y[:n])
