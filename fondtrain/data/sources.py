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

import functools
import gzip
import inspect
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fondtrain.data.whiten import (
    FLAT_FRACTION,
    dead_leaves,
    sample_patches,
    to_gray,
    whiten_image,
)
from fondtrain.errors import UserError

# Photographs that ship inside scikit-image / scikit-learn and load without a download
# (checked with scikit-image 0.26; brain, eagle, kidney, lily, ... need pooch and are left
# out). `chelsea` and `cat` are the same picture, so only `chelsea` is used.
# Only photographs of scenes and objects: text, page, coins, brick, clock, retina and
# hubble_deep_field have statistics unlike natural images (print, repeated textures,
# star fields on black) and are left out.
TRAIN_IMAGES = ("astronaut", "camera", "chelsea", "china", "grass", "moon", "motorcycle", "rocket")
# Validation patches come from photos never used for training.
VAL_IMAGES = ("coffee", "flower", "gravel")


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


# ----------------------------------------------------------------------------- helpers


def _standardize(train: np.ndarray, *others: np.ndarray) -> tuple[list[np.ndarray], float, float]:
    """Scale every array with the global (scalar) mean / std of `train`; float32 out."""
    mean = float(np.mean(train, dtype=np.float64))
    std = float(np.std(train, dtype=np.float64))
    if not std > 0:
        std = 1.0
    out = [((a - mean) / std).astype(np.float32) for a in (train, *others)]
    return out, mean, std


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


def _existing(path: str | os.PathLike | None, dataset: str, what: str) -> Path:
    if path is None:
        raise UserError(f"dataset {dataset!r} needs --path (path=) set to {what}.")
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"{p} does not exist; set --path (path=) to {what}.")
    return p


# ------------------------------------------------------------------- natural photos


@functools.cache
def _builtin_image(name: str) -> np.ndarray:
    """[H, W] float64 grayscale of a built-in photo (skimage.data or sklearn); read-only, cached."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        img = to_gray(load_sample_image(f"{name}.jpg"))
    else:
        import skimage.data

        if name == "motorcycle":  # the left view of the stereo pair
            img = to_gray(skimage.data.stereo_motorcycle()[0])
        else:
            img = to_gray(getattr(skimage.data, name)())
    img.setflags(write=False)
    return img


@functools.cache
def _whitened_builtin(name: str, f0_fraction: float) -> np.ndarray:
    """Whitened built-in photo (cached: tests and repeated builds reuse it); read-only."""
    img = whiten_image(_builtin_image(name), f0_fraction=f0_fraction)
    img.setflags(write=False)
    return img


def _patches_from_images(
    images: list[tuple[str, np.ndarray | None]],
    n_patches: int,
    patch_size: int,
    seed_seq: np.random.SeedSequence,
    f0_fraction: float,
    flat_fraction: float,
) -> tuple[np.ndarray, dict[str, dict[str, float]]]:
    """Whiten each image and cut an equal share of the patches from it.

    `images` holds (name, [H, W] grayscale) pairs, or (name, None) for a built-in photo
    whose whitened version is cached.

    Returns ([n_patches, P * P] float64 in a seeded random order, per-image stats).
    Each image gets its own child seed, so adding patches to one image does not change
    the positions drawn in another.
    """
    k = len(images)
    counts = [n_patches // k + (1 if i < n_patches % k else 0) for i in range(k)]
    children = seed_seq.spawn(k + 1)
    chunks, stats = [], {}
    for (name, img), count, child in zip(images, counts, children[:k], strict=True):
        if img is None:
            white = _whitened_builtin(name, f0_fraction)
        else:
            white = whiten_image(img, f0_fraction=f0_fraction)
        try:
            patches, flat_rate = sample_patches(
                white, count, patch_size, np.random.default_rng(child), flat_fraction
            )
        except ValueError as exc:
            raise UserError(f"cannot cut {patch_size}-px patches from {name}: {exc}.") from exc
        chunks.append(patches)
        stats[name] = {"n_patches": count, "flat_rate": round(flat_rate, 4)}
    x = np.concatenate(chunks, axis=0) if chunks else np.zeros((0, patch_size**2))
    order = np.random.default_rng(children[k]).permutation(len(x))
    return x[order], stats


def _photo_patch_source(
    train_images: list[tuple[str, np.ndarray | None]],
    val_images: list[tuple[str, np.ndarray | None]],
    n_train: int,
    n_val: int,
    seed: int,
    patch_size: int,
    f0_fraction: float,
    flat_fraction: float,
) -> SourceData:
    if n_train < 1 or n_val < 0:
        raise UserError(f"n_train must be >= 1 and n_val >= 0, got {n_train} and {n_val}.")
    seq_train, seq_val = np.random.SeedSequence(seed).spawn(2)
    x_tr, st_tr = _patches_from_images(
        train_images, n_train, patch_size, seq_train, f0_fraction, flat_fraction
    )
    x_va, st_va = _patches_from_images(
        val_images, n_val, patch_size, seq_val, f0_fraction, flat_fraction
    )
    (x_tr, x_va), mean, std = _standardize(x_tr, x_va)
    meta = {
        "sample_shape": [patch_size, patch_size],
        "normalization": {"mean": mean, "std": std},
        "train_images": st_tr,
        "val_images": st_va,
        "whitening": f"|f| * exp(-(|f|/f0)^4), f0 = {f0_fraction} * Nyquist",
        "flat_patch_rule": f"skip if var < {flat_fraction} * median patch var of its image",
    }
    return SourceData(x_tr, x_va, None, None, meta)


def natural16(
    n_train: int = 100_000,
    n_val: int = 10_000,
    seed: int = 0,
    patch_size: int = 16,
    f0_fraction: float = 0.4,
    flat_fraction: float = FLAT_FRACTION,
) -> SourceData:
    """Whitened 16x16 patches from the photos that ship with scikit-image / scikit-learn.

    Photos are converted to grayscale, whitened (see `whiten.whiten_image`), and each
    contributes an equal share of patches at random positions, skipping near-flat ones.
    Train patches come from TRAIN_IMAGES, validation patches from VAL_IMAGES. Both splits
    are standardised with the scalar mean / std of the train split. Deterministic given
    `seed`. x: [n_train, 256], [n_val, 256] float32; no labels.
    """
    train = [(n, None) for n in TRAIN_IMAGES]
    val = [(n, None) for n in VAL_IMAGES]
    data = _photo_patch_source(
        train, val, n_train, n_val, seed, patch_size, f0_fraction, flat_fraction
    )
    data.meta["source"] = "scikit-image / scikit-learn sample photos"
    return data


def deadleaves16(
    n_train: int = 100_000,
    n_val: int = 10_000,
    seed: int = 0,
    patch_size: int = 16,
    n_images: int = 32,
    image_size: int = 256,
    f0_fraction: float = 0.4,
    flat_fraction: float = FLAT_FRACTION,
) -> SourceData:
    """Whitened patches of synthetic dead-leaves images (see `whiten.dead_leaves`).

    A stand-in for natural images with their second-order statistics (a ~1/|f| amplitude
    spectrum from scale-invariant occluding disks) and sharp occlusion edges, generated
    from `seed` alone. `n_images` pictures of `image_size` px feed the train split and a
    quarter as many others (at least one) the validation split; then the `natural16`
    recipe: whitening, near-flat patch rejection, one scalar standardisation. Deterministic
    given `seed`. x: [n_train, P * P], [n_val, P * P] float32; no labels.
    """
    if n_images < 1 or image_size < 2 * patch_size:
        raise UserError(
            f"deadleaves16 needs n_images >= 1 and image_size >= {2 * patch_size}, "
            f"got {n_images} and {image_size}."
        )
    n_val_images = max(1, n_images // 4)
    streams = np.random.SeedSequence([seed, 0xDEAD]).spawn(n_images + n_val_images)
    pictures = [
        (f"leaves-{i}", dead_leaves(image_size, np.random.default_rng(s)))
        for i, s in enumerate(streams)
    ]
    data = _photo_patch_source(
        pictures[:n_images], pictures[n_images:], n_train, n_val, seed, patch_size,
        f0_fraction, flat_fraction,
    )
    data.meta["source"] = (
        f"dead leaves: {n_images} + {n_val_images} images of {image_size} px, "
        "disk radii ~ r^-3 on [1, 64] px"
    )
    return data


def image_folder(
    path: str | os.PathLike,
    n_train: int = 100_000,
    n_val: int = 10_000,
    seed: int = 0,
    patch_size: int = 16,
    f0_fraction: float = 0.4,
    flat_fraction: float = FLAT_FRACTION,
    val_fraction: float = 0.2,
) -> SourceData:
    """Whitened patches from a folder of photos (.png, .jpg, .jpeg, .tif, .tiff, .bmp).

    Same recipe as `natural16`. Files are sorted by name, shuffled with `seed`, and the last
    ceil(val_fraction * n_files) of them (at least one) are held out for validation, so at
    least two readable images are needed. x: [n_train, P * P], [n_val, P * P] float32.
    """
    folder = _existing(path, "images", "a folder of PNG/JPG photos")
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder; set --path (path=) to a folder of photos.")
    exts = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in exts and p.is_file())
    if len(files) < 2:
        raise UserError(
            f"{folder} holds {len(files)} PNG/JPG images; put at least two there "
            "(validation patches come from held-out images)."
        )
    if not 0 < val_fraction < 1:
        raise UserError(f"val_fraction must be between 0 and 1, got {val_fraction}.")
    from PIL import Image

    images = []
    for f in files:
        try:
            with Image.open(f) as im:
                images.append((f.name, to_gray(np.asarray(im))))
        except Exception as exc:
            raise UserError(f"cannot read image {f} ({exc}); remove or replace it.") from exc
    order = np.random.default_rng(seed).permutation(len(images))
    n_hold = min(len(images) - 1, max(1, math.ceil(val_fraction * len(images))))
    train = [images[i] for i in sorted(order[: len(images) - n_hold])]
    val = [images[i] for i in sorted(order[len(images) - n_hold :])]
    data = _photo_patch_source(
        train, val, n_train, n_val, seed, patch_size, f0_fraction, flat_fraction
    )
    data.meta["source"] = f"image folder {folder.resolve()}"
    return data


# -------------------------------------------------------------------------- digits


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
    (x_tr, x_va), mean, std = _standardize(x_tr, x_va)
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
    p = _existing(path, "vh16", "the reference processed.npy")
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
    folder = _existing(path, "mnist", "a folder with the MNIST IDX files")
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
    p = _existing(path, "npy/npz", "a .npy or .npz file")
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
        (x_tr, x_va), mean, std = _standardize(x[tr], x[va])
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
