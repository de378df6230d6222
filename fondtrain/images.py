"""Arrays of image patches as one grid image (dictionaries, reconstructions)."""

from __future__ import annotations

import math

import numpy as np


def patch_side(input_dim: int) -> int:
    """Side of a square patch with input_dim pixels (16 for 256, 8 for 64, 28 for 784)."""
    side = math.isqrt(input_dim)
    if side * side != input_dim:
        raise ValueError(f"input_dim {input_dim} is not a square patch")
    return side


def tile_patches(patches: np.ndarray, n_cols: int | None = None, pad: int = 1,
                 normalise_each: bool = True) -> np.ndarray:
    """Tile N flat square patches [N, M] into one grid image [H, W] with values in [0, 1].

    normalise_each: scale every patch by its own max |value| (dictionary elements), else
    one scale for all (reconstructions beside inputs).
    """
    patches = np.asarray(patches, dtype=np.float64)
    n, m = patches.shape
    side = patch_side(m)
    n_cols = n_cols or math.ceil(math.sqrt(n))
    n_rows = math.ceil(n / n_cols)
    if normalise_each:
        scale = np.abs(patches).max(axis=1, keepdims=True)
    else:
        scale = np.full((n, 1), np.abs(patches).max())
    scaled = 0.5 + 0.5 * patches / np.where(scale > 0, scale, 1.0)
    cell = side + pad
    grid = np.full((n_rows * cell + pad, n_cols * cell + pad), 0.5)
    for i in range(n):
        r, c = divmod(i, n_cols)
        grid[pad + r * cell: pad + r * cell + side,
             pad + c * cell: pad + c * cell + side] = scaled[i].reshape(side, side)
    return grid


def dictionary_grid(weight: np.ndarray, order: np.ndarray | None = None,
                    max_elements: int = 512) -> np.ndarray:
    """The decoder dictionary W [M, K] as a grid of K patches (optionally reordered)."""
    elements = np.asarray(weight).T
    if order is not None:
        elements = elements[np.asarray(order)]
    return tile_patches(elements[:max_elements])


def paired_grid(inputs: np.ndarray, recons: np.ndarray, n_pairs_per_row: int = 8,
                pad: int = 1, gap: int = 4) -> np.ndarray:
    """Inputs [N, M] beside their reconstructions [N, M] as one grid [H, W] in [0, 1].

    Each cell is the input, `pad` px, then its reconstruction; cells are `gap` px apart.
    A pair shares one scale, the input's max |value| (so a weak reconstruction looks
    weak); reconstructions beyond it are clipped. 0.5 is zero.
    """
    inputs, recons = np.asarray(inputs, np.float64), np.asarray(recons, np.float64)
    n, m = inputs.shape
    side = patch_side(m)
    scale = np.abs(inputs).max(axis=1, keepdims=True)
    scale = np.where(scale > 0, scale, 1.0)
    a = 0.5 + 0.5 * inputs / scale
    b = 0.5 + 0.5 * np.clip(recons / scale, -1.0, 1.0)
    n_cols = max(1, min(n_pairs_per_row, n))
    n_rows = math.ceil(n / n_cols)
    cell_w, cell_h = 2 * side + pad + gap, side + gap
    grid = np.full((n_rows * cell_h + gap, n_cols * cell_w + gap), 0.5)
    for i in range(n):
        r, c = divmod(i, n_cols)
        top, left = gap + r * cell_h, gap + c * cell_w
        grid[top:top + side, left:left + side] = a[i].reshape(side, side)
        grid[top:top + side, left + side + pad:left + 2 * side + pad] = b[i].reshape(side, side)
    return grid
