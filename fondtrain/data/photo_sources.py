"""Patch data sets cut from photographs: the built-in `natural16` (scikit-image /
scikit-learn sample photos), the synthetic `deadleaves16`, and `images` (a folder of the
user's photos). Each image is grayscale, 1/f-whitened and cut into patches at random
positions, skipping near-flat ones (`fondtrain.data.whiten`); deterministic given the seed.
"""

from __future__ import annotations

import functools
import math
import os

import numpy as np

from fondtrain.data.source_data import SourceData, existing_path, standardize_splits
from fondtrain.data.whiten import (
    FLAT_FRACTION,
    dead_leaves,
    flat_patch_rule,
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
    if not 0 < f0_fraction <= 1:
        raise UserError(f"f0_fraction is the whitening filter's cut-off as a fraction of Nyquist and must be in "
                        f"(0, 1], got {f0_fraction} (the default is 0.4).")
    seq_train, seq_val = np.random.SeedSequence(seed).spawn(2)
    x_tr, st_tr = _patches_from_images(
        train_images, n_train, patch_size, seq_train, f0_fraction, flat_fraction
    )
    x_va, st_va = _patches_from_images(
        val_images, n_val, patch_size, seq_val, f0_fraction, flat_fraction
    )
    (x_tr, x_va), mean, std = standardize_splits(x_tr, x_va)
    meta = {
        "sample_shape": [patch_size, patch_size],
        "normalization": {"mean": mean, "std": std},
        "train_images": st_tr,
        "val_images": st_va,
        "whitening": f"|f| * exp(-(|f|/f0)^4), f0 = {f0_fraction} * Nyquist",
        "flat_patch_rule": flat_patch_rule(flat_fraction),
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
    folder = existing_path(path, "images", "a folder of PNG/JPG photos")
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


