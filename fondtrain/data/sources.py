"""Data sources: turn raw data into float32 train / val matrices.

Every source returns a `SourceData`: `x_train` [N, M] and `x_val` [N_val, M] float32,
optional int64 labels `y_train` [N] / `y_val` [N_val], and a `meta` dict that always holds
`sample_shape` (e.g. [16, 16]) and `normalization` {"mean", "std"} with the meaning
`stored = (raw - mean) / std`.

| name        | input                        | M    | split                                  |
|-------------|------------------------------|------|----------------------------------------|
| `natural16` | scikit-image / sklearn photos| 256  | held-out photos (VAL_IMAGES)           |
| `deadleaves16` | synthetic dead-leaves images | 256 | held-out images (n_images / 4)     |
| `digits`    | sklearn load_digits          | 64   | stratified 80/20 by seed               |
| `vh16`      | processed.npy [N,(1,)16,16]/[N,256] | 256 | 10 contiguous blocks, last 20% of each |
| `mnist`     | IDX files (.gz or raw)       | 784  | train files / t10k files               |
| `npy`/`npz` | square patches [N,S*S]/[N,(1,)S,S] | S*S | seeded permutation, last val_fraction  |
| `images`    | folder of PNG/JPG photos     | P*P  | held-out photos (val_fraction of them) |

Without a path, `vh16` and `mnist` read where the reference code keeps them
(REFERENCE_PATHS). Bad input raises `UserError` with one sentence naming the file.
"""

from __future__ import annotations

import gzip
import inspect
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fondtrain.data.photo_sources import deadleaves16, image_folder, natural16
from fondtrain.data.source_data import SourceData, existing_path, standardize_splits
from fondtrain.errors import UserError

# Where the reference code keeps its data sets: used when --path is not given.
REFERENCE_PATHS = {"vh16": "~/Datasets/DOVES/vH16/processed.npy", "mnist": "~/Datasets/MNIST/processed"}


def square_side(sample_shape: list[int] | tuple[int, ...]) -> int | None:
    """S for square patches (an S x S or a flat S*S sample), else None."""
    if len(sample_shape) == 2:
        return int(sample_shape[0]) if sample_shape[0] == sample_shape[1] else None
    if len(sample_shape) == 1:
        side = math.isqrt(int(sample_shape[0]))
        return side if side * side == sample_shape[0] else None
    return None


def digits(seed: int = 0, val_fraction: float = 0.2) -> SourceData:
    """scikit-learn's 1797 labelled 8x8 digits, M = 64.

    Stratified split (sklearn train_test_split, random_state=seed): 1437 train / 360 val
    for the default val_fraction. Standardised with the scalar train mean / std.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = bunch.data.astype(np.float64)  # [1797, 64], values 0..16
    y = bunch.target.astype(np.int64)
    x_tr, x_va, y_tr, y_va = train_test_split(
        x, y, test_size=val_fraction, random_state=seed, stratify=y
    )
    (x_tr, x_va), mean, std = standardize_splits(x_tr, x_va)
    meta = {
        "source": "sklearn.datasets.load_digits",
        "sample_shape": [8, 8],
        "normalization": {"mean": mean, "std": std},
        "n_classes": 10,
    }
    return SourceData(x_tr, x_va, y_tr, y_va, meta)


# ---------------------------------------------------------------------------- vh16


def vh16_split(n_samples: int, n_blocks: int = 10, val_fraction: float = 0.2):
    """Reference split of vH16: `n_blocks` contiguous blocks, the last part of each is val.

    Block b spans [b * n // n_blocks, (b + 1) * n // n_blocks) except that the last block
    runs to the end; its val part has round(len(block) * val_fraction) samples (numpy
    rounding, as the reference code).

    Returns:
        (train indices [N_train] int64, val indices [N_val] int64), both increasing.
    """
    size = n_samples // n_blocks
    train, val = [], []
    for b in range(n_blocks):
        start = b * size
        end = n_samples if b == n_blocks - 1 else start + size
        n_val = int(np.round((end - start) * val_fraction))
        train.append(np.arange(start, end - n_val))
        val.append(np.arange(end - n_val, end))
    return np.concatenate(train).astype(np.int64), np.concatenate(val).astype(np.int64)


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:
        raise UserError(
            f"cannot read {path} as a numpy .npy file ({type(exc).__name__}); "
            "check that it is a complete, uncorrupted array file."
        ) from exc


def _drop_channel_axis(arr: np.ndarray) -> np.ndarray:
    """[N, 1, H, W] (one channel, as the reference's feeders take it) -> [N, H, W]."""
    return arr[:, 0] if arr.ndim == 4 and arr.shape[1] == 1 else arr


def vh16(path: str | os.PathLike, n_blocks: int = 10, val_fraction: float = 0.2) -> SourceData:
    """Reference van Hateren patches (`processed.npy`, [N, 16, 16], [N, 1, 16, 16] or [N, 256]).

    Standardised with the scalar mean / std of the WHOLE array (as the reference), then
    split with `vh16_split`. x: [N_train, 256], [N_val, 256] float32; no labels.
    """
    p = existing_path(path, "vh16", "the reference processed.npy")
    if p.is_dir():
        p = p / "processed.npy"
        if not p.exists():
            raise UserError(f"{p} does not exist; set --path (path=) to processed.npy.")
    arr = _drop_channel_axis(_load_npy(p))
    if not (arr.ndim == 3 and arr.shape[1:] == (16, 16)) and not (
        arr.ndim == 2 and arr.shape[1] == 256
    ):
        raise UserError(
            f"{p} holds an array of shape {tuple(arr.shape)}; vh16 needs N x 16 x 16, "
            "N x 1 x 16 x 16 or N x 256 patches."
        )
    if not np.issubdtype(arr.dtype, np.number) or len(arr) < n_blocks:
        raise UserError(f"{p} must hold at least {n_blocks} numeric patches.")
    x = arr.reshape(len(arr), 256).astype(np.float64)
    if not np.isfinite(x).all():
        raise UserError(f"{p} contains NaN or infinite values; clean the array first.")
    mean, std = float(x.mean()), float(x.std())
    x = ((x - mean) / (std if std > 0 else 1.0)).astype(np.float32)
    tr, va = vh16_split(len(x), n_blocks, val_fraction)
    meta = {
        "source": f"van Hateren processed.npy {p.resolve()}",
        "sample_shape": [16, 16],
        "normalization": {"mean": mean, "std": std},
        "split": f"{n_blocks} contiguous blocks, last {val_fraction:.0%} of each is val",
    }
    return SourceData(x[tr], x[va], None, None, meta)


# --------------------------------------------------------------------------- mnist

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse one IDX file (LeCun's MNIST format), gzip-compressed or not.

    Layout: 2 zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), the number of dimensions, then each dimension as a
    big-endian uint32, then the data, row-major and big-endian.

    Returns:
        ndarray of the file's shape (e.g. [60000, 28, 28] uint8 images, [60000] labels).
    """
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            raw = fh.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as exc:
        raise UserError(f"cannot read IDX file {p} ({exc}); replace it with a good copy.") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise UserError(f"{p} is not an IDX file (bad magic number); use the original MNIST files.")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise UserError(f"{p} has a truncated IDX header; replace it with a good copy.")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + math.prod(dims) * dtype.itemsize
    if len(raw) != expected:
        raise UserError(
            f"{p} has {len(raw)} bytes but its header {dims} needs {expected}; "
            "the file is truncated or corrupt, replace it."
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _find_idx(folder: Path, stem: str) -> Path:
    """`stem` like 'train-images-idx3-ubyte'; also accepts '.gz' and 'train-images.idx3-ubyte',
    in `folder` or, for torchvision's MNIST/processed, in the `raw` folder beside it."""
    alt = stem.replace("-idx", ".idx")
    for place in (folder, folder.parent / "raw"):
        for name in (stem, stem + ".gz", alt, alt + ".gz"):
            if (place / name).is_file():
                return place / name
    raise UserError(f"{folder / stem} (or .gz) is missing; put the four MNIST IDX files there.")


def mnist(path: str | os.PathLike) -> SourceData:
    """MNIST from the four standard IDX files in folder `path` (.gz or not).

    Train = the 60000 `train-*` images, val = the 10000 `t10k-*` images. Pixels are scaled
    to [0, 1] by dividing by 255 (no standardisation: the pixel scale is meaningful for
    digits). x: [N, 784] float32, y: [N] int64.
    """
    folder = existing_path(path, "mnist", "a folder with the MNIST IDX files")
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder; set --path (path=) to the MNIST folder.")
    out = {}
    for split, prefix in (("train", "train"), ("val", "t10k")):
        f_img = _find_idx(folder, f"{prefix}-images-idx3-ubyte")
        f_lab = _find_idx(folder, f"{prefix}-labels-idx1-ubyte")
        img, lab = read_idx(f_img), read_idx(f_lab)
        if img.ndim != 3 or img.dtype != np.uint8:
            raise UserError(f"{f_img} must hold N x H x W uint8 images, got {img.shape}.")
        if lab.ndim != 1 or len(lab) != len(img):
            raise UserError(f"{f_lab} must hold one label per image of {f_img.name}.")
        out[split] = (img.reshape(len(img), -1).astype(np.float32) / 255.0, lab.astype(np.int64))
        shape = list(img.shape[1:])
    meta = {
        "source": f"MNIST IDX files in {folder.resolve()}",
        "sample_shape": shape,
        "normalization": {"mean": 0.0, "std": 255.0},
        "n_classes": 10,
    }
    return SourceData(out["train"][0], out["val"][0], out["train"][1], out["val"][1], meta)


# -------------------------------------------------------------------------- arrays


def array_file(
    path: str | os.PathLike,
    key: str | None = None,
    labels_key: str | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    standardize: bool = True,
) -> SourceData:
    """A user array from .npy or .npz: square patches [N, S*S], [N, S, S] or [N, 1, S, S]
    (flattened to M = S * S).

    For .npz, `key` picks the array (optional if the file holds exactly one) and
    `labels_key` an optional [N] integer label array. Rows are permuted with `seed`; the
    last round(val_fraction * N) go to validation. With `standardize` both splits are
    scaled by the scalar train mean / std.
    """
    p = existing_path(path, "npy/npz", "a .npy or .npz file")
    labels = None
    if p.suffix == ".npz":
        try:
            archive = np.load(p, allow_pickle=False)
            names = list(archive.files)
        except Exception as exc:
            raise UserError(f"cannot read {p} as a numpy .npz archive; check the file.") from exc
        if key is None:
            data_keys = [k for k in names if k != labels_key]
            if len(data_keys) != 1:
                raise UserError(f"{p} holds arrays {names}; choose one with key=NAME.")
            key = data_keys[0]
        for k in (key, labels_key):
            if k is not None and k not in names:
                raise UserError(f"{p} has no array {k!r}; it holds {names}.")
        arr = archive[key]
        if labels_key is not None:
            labels = archive[labels_key]
    else:
        if key is not None or labels_key is not None:
            raise UserError(f"{p} is a .npy file; key= and labels_key= only apply to .npz.")
        arr = _load_npy(p)
    arr = _drop_channel_axis(arr)
    if arr.ndim not in (2, 3) or len(arr) < 2 or not np.issubdtype(arr.dtype, np.number):
        raise UserError(
            f"{p} holds an array of shape {tuple(arr.shape)} ({arr.dtype}); "
            "it needs numeric square image patches (N x S*S, N x S x S or N x 1 x S x S) with N >= 2."
        )
    sample_shape = list(arr.shape[1:])
    if square_side(sample_shape) is None:
        raise UserError(
            f"{p} holds samples of shape {tuple(sample_shape)}; fondtrain models square image patches "
            "(N x S x S or N x S*S, e.g. N x 16 x 16 or N x 256): crop or reshape the array."
        )
    x = arr.reshape(len(arr), -1).astype(np.float64)
    if not np.isfinite(x).all():
        raise UserError(f"{p} contains NaN or infinite values; clean the array first.")
    if labels is not None and (
        labels.shape != (len(x),) or not np.issubdtype(labels.dtype, np.integer)
    ):
        raise UserError(f"labels {labels_key!r} in {p} must be N integers, one per sample.")
    if not 0 <= val_fraction < 1:
        raise UserError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = int(round(val_fraction * len(x)))
    tr, va = order[: len(x) - n_val], order[len(x) - n_val :]
    if standardize:
        (x_tr, x_va), mean, std = standardize_splits(x[tr], x[va])
    else:
        x_tr, x_va, mean, std = x[tr].astype(np.float32), x[va].astype(np.float32), 0.0, 1.0
    y_tr = y_va = None
    if labels is not None:
        y_tr, y_va = labels[tr].astype(np.int64), labels[va].astype(np.int64)
    meta = {
        "source": f"array {key or 'x'} from {p.resolve()}",
        "sample_shape": sample_shape,
        "normalization": {"mean": mean, "std": std},
    }
    return SourceData(x_tr, x_va, y_tr, y_va, meta)


# ------------------------------------------------------------------------ registry

SOURCES: dict[str, Callable[..., SourceData]] = {
    "natural16": natural16,
    "deadleaves16": deadleaves16,
    "digits": digits,
    "vh16": vh16,
    "mnist": mnist,
    "npy": array_file,
    "npz": array_file,
    "images": image_folder,
}


def resolve_source_kwargs(
    name: str, path: str | os.PathLike | None = None, seed: int = 0, **kwargs: Any
) -> dict[str, Any]:
    """Check `name` and its options and return the full option dict (defaults filled in).

    `seed` is dropped for sources that are not random (vh16, mnist); `path` is made
    absolute. The result is what a shard manifest records as `source_kwargs`.
    """
    if name not in SOURCES:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(SOURCES)}.")
    fn = SOURCES[name]
    params = inspect.signature(fn).parameters
    kw = dict(kwargs)
    if "seed" in params:
        kw["seed"] = seed
    if "path" in params:
        kw["path"] = path
    elif path is not None:
        raise UserError(f"dataset {name!r} is built in and takes no path; drop --path.")
    unknown = sorted(set(kw) - set(params))
    if unknown:
        raise UserError(
            f"dataset {name!r} has no option {', '.join(unknown)}; "
            f"its options are {', '.join(params)}."
        )
    bound = inspect.signature(fn).bind_partial(**kw)
    bound.apply_defaults()
    out = dict(bound.arguments)
    if "path" in out:
        if out["path"] is None and name in REFERENCE_PATHS:
            default = Path(REFERENCE_PATHS[name]).expanduser()
            if not default.exists():
                raise UserError(
                    f"dataset {name!r} needs --path: no --path was given and {default} (where the "
                    "reference code keeps it) does not exist."
                )
            out["path"] = default
        if out["path"] is None:
            raise UserError(f"dataset {name!r} needs --path (path=): a file or folder to read.")
        out["path"] = str(Path(out["path"]).expanduser().resolve())
    return out


def load_source(
    name: str, path: str | os.PathLike | None = None, seed: int = 0, **kwargs: Any
) -> SourceData:
    """Load data set `name` (see SOURCES) into memory; kwargs are the source's options.

    Returns a SourceData whose meta also records `dataset`, `seed` and `source_kwargs`.
    """
    resolved = resolve_source_kwargs(name, path, seed, **kwargs)
    data = SOURCES[name](**resolved)
    data.meta.update(dataset=name, seed=seed, source_kwargs=resolved)
    return data
