"""Evaluation figures as PNG files (matplotlib, Agg; no pyplot global state).

Each function draws one figure from plain arrays and writes it to `path`.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fondtrain.images import dictionary_grid, paired_grid, patch_side, tile_patches
from fondtrain.stats import R2_SHORT

DPI = 110


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _title(fig: Figure, title: str, fontsize: float = 12.0, y: float = 0.995) -> float:
    """A figure title wrapped to the figure's width; returns its height in inches."""
    if not title:
        return 0.0
    chars = max(20, int(fig.get_figwidth() * 72 / (0.55 * fontsize)))  # ~0.55 em per character
    lines = textwrap.wrap(title, chars)
    fig.suptitle("\n".join(lines), fontsize=fontsize, y=y, va="top")
    return (len(lines) * 1.25 * fontsize + 6) / 72


def _top(fig: Figure, title_inches: float, room: float = 0.35) -> float:
    """subplots_adjust(top=...) leaving a title (and panel titles: room, inches) visible."""
    return 1 - (title_inches + room) / fig.get_figheight()


def say_in(ax, text: str) -> None:
    """Write why a panel has nothing to show into the panel itself."""
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=9,
            transform=ax.transAxes, color="0.3")
    ax.set_xticks([])
    ax.set_yticks([])


def save_figure(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # fixed margins instead of tight_layout / bbox_inches="tight": those measure every
    # tick label and cost more than drawing the figure itself
    fig.savefig(path, dpi=DPI)
    return path


def save_grid(grid: np.ndarray, path: str | Path, title: str = "", width: float = 8.0) -> Path:
    """A grid image [H, W] in [0, 1] (gray, 0.5 = zero) with a title."""
    h, w = grid.shape
    fig = new_figure(width, width * h / w)
    room = _title(fig, title, fontsize=10)
    fig.set_figheight(width * h / w + room)
    ax = fig.add_axes((0, 0, 1, 1 - room / fig.get_figheight()))
    ax.imshow(grid, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    return save_figure(fig, path)


def plot_dictionary(weight: np.ndarray, usage: np.ndarray, path: str | Path,
                    title: str = "dictionary", max_elements: int = 512) -> Path:
    """Dictionary elements (columns of W [M, K]) sorted by usage, most used first."""
    order = np.argsort(-np.asarray(usage), kind="stable")
    grid = dictionary_grid(weight, order, max_elements=max_elements)
    n_cols = int(np.ceil(np.sqrt(min(len(order), max_elements))))
    return save_grid(grid, path, f"{title}: {min(len(order), max_elements)} of {len(order)} "
                     "elements, sorted by mean activity (most used top left)",
                     width=float(np.clip(0.5 * n_cols, 6.0, 14.0)))


def plot_reconstructions(x: np.ndarray, x_hat: np.ndarray, path: str | Path, title: str = "",
                         n: int = 48) -> Path:
    """Inputs beside their reconstructions at the last inference step."""
    n = min(n, len(x))
    grid = paired_grid(x[:n], x_hat[:n], n_pairs_per_row=8)
    return save_grid(grid, path, title or "input | reconstruction")


_PANELS = (
    ("mse", "MSE", ("mse",)),
    ("r2", "R^2", ("r2_mean", "r2_pooled", "r2_median")),
    ("zeros", "fraction of zero latents", ("frac_zeros",)),
    ("sparse", "sparseness", ("lifetime_sparseness", "population_sparseness")),
    ("loss", "loss (NLL + beta KL) * 256/M", ("loss",)),
    ("kl", "KL (sum over latents)", ("kl_reference", "kl_exact", "kl")),
    ("nll", "NLL", ("nll",)),
)


# Which R^2 is which, in lines that fit the convergence figure's text panel.
R2_KEY = ("R^2 paper: mean over samples\n  of 1 - SS_res/SS_tot per sample\n"
          "R^2 pooled: 1 - sum SS_res\n  / sum SS_tot over all samples\n"
          "R^2 median: median over samples\n  of 1 - SS_res/SS_tot per sample")


def _r2_limits(values: list[np.ndarray]) -> tuple[float, float]:
    """y limits that show every R^2 down to -1; below that the axis stops (a near-flat
    sample's per-sample R^2 reaches -100s and would squash the others into a line)."""
    finite = np.concatenate([v[np.isfinite(v)] for v in values]) if values else np.zeros(1)
    low = max(-1.0, float(finite.min()) - 0.05) if finite.size else -1.0
    return low, 1.02


def _clip_label(label: str, values: np.ndarray, low: float) -> str:
    """A legend label that says when (part of) its line lies below the axis at `low`."""
    below = ~np.isfinite(values) | (values < low)
    if not below.any():
        return label
    lowest = f"min {np.nanmin(values):.3g}" if np.isfinite(values).any() else "no finite value"
    if below.all():
        return f"{label}\n(all below the axis, {lowest})"
    return f"{label}\n(clipped: {int(below.sum())} of {len(values)} steps below {low:.2f}, {lowest})"


def _spans_decades(series: list[np.ndarray]) -> bool:
    """All values positive and over two orders of magnitude apart (then plot log y)."""
    values = np.concatenate(series)
    values = values[np.isfinite(values)]
    return values.size > 0 and values.min() > 0 and values.max() / values.min() > 100


def plot_convergence(table: dict, path: str | Path, title: str = "",
                     t_train: int | None = None) -> Path:
    """Every per-step metric against the inference step (log x), one panel each."""
    steps = np.asarray(table["step"], dtype=float)
    fig = new_figure(15, 6.5)
    axes = fig.subplots(2, 4).ravel()
    for ax, (_key, label, keys) in zip(axes, _PANELS, strict=False):
        series = []
        for key in keys:
            if key in table:
                values = np.asarray(table[key], dtype=float)
                ax.plot(steps, values, marker=".", label=R2_SHORT.get(key, key))
                series.append(values)
        ax.set_xscale("log")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("inference step")
        ax.grid(alpha=0.3)
        if _key == "r2" and series:
            low, high = _r2_limits(series)
            ax.set_ylim(low, high)
            for line, values in zip(ax.get_lines(), series, strict=False):
                line.set_label(_clip_label(line.get_label(), values, low))
        if _key in ("mse", "loss", "nll", "kl") and series and _spans_decades(series):
            ax.set_yscale("log")
        else:  # an offset ("1e-6+9.6e-1") would sit on the panel title
            ax.ticklabel_format(axis="y", useOffset=False)
        if len(series) > 1:
            ax.legend(fontsize=7)
        if t_train:
            ax.axvline(t_train, color="gray", ls="--", lw=0.8)
    last = axes[-1]
    last.set_axis_off()
    r2 = [f"{R2_SHORT[k].split(' (')[0]:<10} = {table[k][-1]:.4g}" for k in R2_SHORT if k in table]
    final = {k: table[k][-1] for k in ("mse", "frac_zeros", "lifetime_sparseness",
                                        "population_sparseness", "loss") if k in table}
    text = (f"at step {int(steps[-1])}:\n" + "\n".join(r2) + "\n"
            + "\n".join(f"{k} = {v:.4g}" for k, v in final.items()) + "\n\n" + R2_KEY)
    if t_train:
        text += f"\n\ndashed line: training horizon\n(t_train x n_iters_outer = {t_train})"
    last.text(0.0, 1.0, text, va="top", family="monospace", fontsize=9)
    top = _top(fig, _title(fig, title))
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.08, top=top, wspace=0.42, hspace=0.4)
    return save_figure(fig, path)


def plot_latent_activity(activity: np.ndarray, usage: np.ndarray, path: str | Path,
                         title: str = "", discrete: bool = False) -> Path:
    """Histograms of latent activity at the last step: all values, each unit's mean
    activity (usage), and the number of active (non-zero) units per sample."""
    fig = new_figure(14, 3.8)
    ax1, ax2, ax3 = fig.subplots(1, 3)
    values = np.asarray(activity, dtype=float).ravel()
    if discrete and values.size:
        top = int(min(values.max(), 30))
        counts = np.bincount(np.clip(values, 0, top + 1).astype(int), minlength=top + 2)
        ax1.bar(np.arange(len(counts)), counts / values.size)
        ax1.set_xlabel(f"spike count (last bar: > {top})")
    else:
        ax1.hist(values, bins=80)
        ax1.set_xlabel("activity a(z)")
    ax1.set_yscale("log")
    ax1.set_title(f"activity values ({activity.shape[0]} samples x {activity.shape[1]} units)",
                  fontsize=9)
    use = np.asarray(usage, dtype=float)
    positive = use[use > 0]
    if positive.size:
        bins = np.logspace(np.log10(positive.min()), np.log10(positive.max()) + 1e-9, 40)
        ax2.hist(positive, bins=bins)
        ax2.set_xscale("log")
    else:
        say_in(ax2, f"all {len(use)} units are silent{'' if discrete else ' or negative'}")
    ax2.set_title(f"mean activity per unit ({int((use <= 0).sum())} of {len(use)} silent"
                  f"{' or negative' if not discrete else ''})", fontsize=9)
    ax2.set_xlabel("mean activity")
    active = (np.asarray(activity) != 0).sum(1)
    ax3.hist(active, bins=min(50, max(1, int(active.max()) + 1)) if active.size else 10)
    ax3.set_title("active (non-zero) units per sample", fontsize=9)
    ax3.set_xlabel("number of units")
    top = _top(fig, _title(fig, title))
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.14, top=top, wspace=0.22)
    return save_figure(fig, path)


def plot_tuning(result, weight: np.ndarray, path: str | Path, title: str = "",
                n_units: int = 12) -> Path:
    """Tuning curves of the most selective units (with their dictionary elements), the
    OSI histogram and the preferred-orientation histogram of responsive units."""
    units = result.most_selective(n_units)
    n_cols = 6
    n_rows = max(1, int(np.ceil(len(units) / n_cols)))
    fig = new_figure(16, 2.6 * n_rows + 3.2)
    grid = fig.add_gridspec(n_rows + 1, n_cols, height_ratios=[1] * n_rows + [1.2])
    r = result.responsive
    if len(units) == 0:
        say_in(fig.add_subplot(grid[0, :]), f"no responsive units: none of the {len(r)} units answers "
                f"a {result.kind} above its noise ({result.rule()}), so there are no tuning "
                "curves to show")
    side = patch_side(weight.shape[0])
    theta = result.orientations
    for i, k in enumerate(units):
        ax = fig.add_subplot(grid[i // n_cols, i % n_cols])
        curve = result.tuning[k]
        ax.plot(np.append(theta, 180.0), np.append(curve, curve[0]), marker="o", ms=3)
        ax.axhline(result.noise_level[k], color="0.5", ls=":", lw=0.8)
        ax.set_xticks([0, 45, 90, 135, 180])
        ax.set_ylim(0, 1.7 * max(float(curve.max()), 1e-6))  # room for the inset above
        ax.set_title(f"unit {k}: OSI {result.osi[k]:.2f}, pref (vec. avg.) {result.preferred[k]:.0f} deg",
                     fontsize=8)
        ax.tick_params(labelsize=7)
        if i % n_cols == 0:
            ax.set_ylabel(f"evoked {'spikes / step' if result.spikes else 'activity a(z)'}", fontsize=8)
        inset = ax.inset_axes((0.72, 0.62, 0.28, 0.38))
        element = weight[:, k].reshape(side, side)
        lim = np.abs(element).max() or 1.0
        inset.imshow(element, cmap="gray", vmin=-lim, vmax=lim, interpolation="nearest")
        inset.set_axis_off()
    ax_osi = fig.add_subplot(grid[n_rows, 0:2])
    ax_osi.set_title(f"OSI (1 - circ. var.) of {int(r.sum())} responsive units", fontsize=9)
    ax_pref = fig.add_subplot(grid[n_rows, 2:4])
    ax_pref.set_title("preferred orientation (vector average, deg)", fontsize=9)
    if r.any():
        ax_osi.hist(result.osi[r], bins=np.linspace(0, 1, 21))
        ax_osi.set_xlabel("OSI")
        ax_pref.hist(result.preferred[r], bins=np.linspace(0, 180, len(theta) + 1))
    else:
        say_in(ax_osi, "no responsive units")
        say_in(ax_pref, "no responsive units")
    ax_stim = fig.add_subplot(grid[n_rows, 4:6])
    picks = result.stimuli[:: max(1, len(theta) // 8), :: max(1, result.stimuli.shape[1] // 4)]
    picks = picks.transpose(1, 0, 2)  # rows: phases, columns: orientations
    ax_stim.imshow(tile_patches(picks.reshape(-1, picks.shape[-1]), n_cols=picks.shape[1],
                                normalise_each=False),
                   cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax_stim.set_axis_off()
    ax_stim.set_title(f"{result.kind} stimuli (columns: orientations)", fontsize=9)
    top = _top(fig, _title(fig, title or f"orientation tuning ({result.kind}): most selective units; "
                           "curve = max evoked response over phases; dotted: the noise level a responsive unit "
                           "exceeds", fontsize=11))
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.06, top=top, wspace=0.3, hspace=0.55)
    return save_figure(fig, path)


def plot_compare(tables: dict[str, dict], path: str | Path, title: str = "") -> Path:
    """Convergence curves of several runs in one figure (MSE, pooled R^2, zeros, loss)."""
    panels = (("mse", "MSE"), ("r2_mean", R2_SHORT["r2_mean"]), ("r2_pooled", R2_SHORT["r2_pooled"]),
              ("frac_zeros", "fraction of zeros"), ("population_sparseness", "population sparseness"),
              ("loss", "loss"))
    fig = new_figure(21, 3.8)
    axes = fig.subplots(1, len(panels))
    for ax, (key, label) in zip(axes, panels, strict=True):
        for name, table in tables.items():
            if key in table:
                ax.plot(table["step"], table[key], marker=".", label=name)
        ax.set_xscale("log")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("inference step")
        ax.grid(alpha=0.3)
        if key in R2_SHORT:
            values = [np.asarray(t[key], float) for t in tables.values() if key in t]
            low, high = _r2_limits(values)
            ax.set_ylim(low, high)
            for line, v in zip(ax.get_lines(), values, strict=True):
                line.set_label(_clip_label(line.get_label(), v, low))
    for i, ax in enumerate(axes):  # run names once; again where a label says it is clipped
        if i == 0 or any("below" in label for label in ax.get_legend_handles_labels()[1]):
            ax.legend(fontsize=7)
    top = _top(fig, _title(fig, title))
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.14, top=top, wspace=0.25)
    return save_figure(fig, path)


def png_as_array(path: str | Path) -> np.ndarray:
    """A PNG file as an [H, W, 3] uint8 array (for TensorBoard)."""
    from matplotlib.image import imread

    image = imread(str(path))
    if image.dtype != np.uint8:
        image = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return image[..., :3]
