"""Figures of a dictionary's Gabor fits: parameter distributions, the tiling, element | fit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.patches import Ellipse

from fondtrain.eval.figures import new_figure, save_figure, save_grid, say_in
from fondtrain.eval.gabor import GOOD_R2, GaborFits, gabor
from fondtrain.images import paired_grid


def plot_gabor_summary(fits: GaborFits, path: str | Path, title: str = "") -> Path:
    """Six panels: variance explained, orientation, frequency, size and aspect ratio of the
    good fits, and the tiling (each good fit as its 1-sigma envelope ellipse with a bar
    along its stripes, at its position in the patch, y down as the dictionary is shown)."""
    tab, good = fits.table(), fits.good
    fig = new_figure(13.0, 7.6)
    grid = fig.add_gridspec(2, 3, left=0.06, right=0.98, bottom=0.08, top=0.88,
                            wspace=0.28, hspace=0.38)
    ax = fig.add_subplot(grid[0, 0])
    ax.set_title(f"{int(good.sum())} of {len(good)} used units >= {GOOD_R2}")
    if len(good):
        ax.hist(fits.r2, bins=np.linspace(min(0.0, float(fits.r2.min(initial=0.0))), 1.0, 26),
                color="0.4")
        ax.axvline(GOOD_R2, color="C3", lw=1)
        ax.set(xlabel="variance explained by the Gabor fit", ylabel="units")
    else:
        say_in(ax, f"no used units: all {fits.n_units} are silent, nothing to fit")
    # the parameter panels and the tiling show good fits only: without any, they say so
    # instead of drawing empty histograms on arbitrary axes
    none = f"no good fits (variance explained >= {GOOD_R2})"
    panels = (
        (grid[0, 1], "orientation_deg", np.linspace(0, 180, 13), "stripe orientation (deg)"),
        (grid[0, 2], "frequency", np.linspace(0, 0.5, 21), "spatial frequency (cycles/px)"),
        (grid[1, 0], "size", np.linspace(0, fits.side / 2, 21), "envelope size sqrt(sx sy) (px)"),
        (grid[1, 1], "aspect", np.linspace(0, 4, 21), "aspect ratio sy / sx (along / across)"),
    )
    for cell, key, bins, label in panels:
        ax = fig.add_subplot(cell)
        if good.any():
            ax.hist(np.clip(tab[key][good], bins[0], bins[-1]), bins=bins, color="C0")
            ax.set(xlabel=label, ylabel="good fits")
        else:
            say_in(ax, none)
            ax.set_title(label, fontsize=9)
    ax = fig.add_subplot(grid[1, 2])
    if good.any():
        _tiling(ax, fits)
    else:
        say_in(ax, none)
        ax.set_title("tiling")
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def _tiling(ax, fits: GaborFits) -> None:
    """Each good fit as its 1-sigma envelope ellipse with a bar along its stripes."""
    side = fits.side
    for i in np.flatnonzero(fits.good):
        x0, y0, theta, _, _, sx, sy, _ = fits.params[i]
        # half-lengths capped at a quarter patch: edge-like elements span the whole patch
        # and would otherwise cover the figure with full-length lines
        across, along = min(sx, side / 4), min(sy, side / 4)
        ax.add_patch(Ellipse((x0, y0), 2 * across, 2 * along, angle=np.degrees(theta),
                             fill=False, lw=0.5, color="C0", alpha=0.5))
        d = np.array([-np.sin(theta), np.cos(theta)]) * along  # along the stripes
        ax.plot([x0 - d[0], x0 + d[0]], [y0 - d[1], y0 + d[1]], color="C3", lw=1.2)
    ax.set(xlim=(-0.5, side - 0.5), ylim=(side - 0.5, -0.5), aspect="equal",
           title="tiling (1 sigma, capped at P/4)")


def plot_gabor_fits(fits: GaborFits, weight: np.ndarray, order: np.ndarray, path: str | Path,
                    title: str = "", n: int = 64) -> Path:
    """Elements beside their fitted Gabors, for the first `n` fitted units in `order`
    (unit indices, e.g. by usage)."""
    row_of = {int(u): i for i, u in enumerate(fits.units)}
    rows = [row_of[int(u)] for u in order if int(u) in row_of][:n]
    elements = np.asarray(weight, np.float64).T[fits.units[rows]]
    fitted = np.stack([gabor(fits.params[r], fits.side) for r in rows]) if rows else elements
    return save_grid(paired_grid(elements, fitted, n_pairs_per_row=8), path,
                     title or "element | fitted Gabor (variance explained in metrics.json)")
