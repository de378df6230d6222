"""Which R^2 is which: the paper's per-sample mean is reported beside pooled and median,
each named, wherever results are compared with the paper (eval's summary, compare, the
convergence figure, the sweep summary); the sweep summary's columns say they are means
over seeds; its rate-distortion plane suits the model family; clipped R^2 curves and
empty Gabor panels say so."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fondtrain.config import RunConfig
from fondtrain.config.sweep import members_from_sweep
from fondtrain.eval import figures as Fg
from fondtrain.eval import gabor_figure
from fondtrain.eval.compare import compare
from fondtrain.eval.gabor import GaborFits
from fondtrain.eval.report import format_summary
from fondtrain.eval.sweep_summary import eval_rows, format_sweep_table, group_members, write_eval_summary
from fondtrain.stats import R2_LABELS

FINAL = {"mse": 0.2, "r2_pooled": 0.8, "r2_median": 0.7071, "r2_mean": 0.1523, "frac_zeros": 0.75}


def _texts(fig) -> list[str]:
    return [t.get_text() for t in [*fig.texts, *(t for ax in fig.axes for t in ax.texts)]]


def test_the_printed_summary_names_each_r2_beside_its_value():
    lines = format_summary({"n_steps": 1000, "n_samples": 10, "dataset": "natural16", "final": FINAL})
    for key, label in R2_LABELS.items():
        (line,) = [line for line in lines.splitlines() if label in line]
        assert f"{FINAL[key]:.4f}" in line and f"[{key}]" in line
    assert "R^2 paper (mean over samples of 1 - SS_res/SS_tot per sample" in lines


def _metrics(preset: str, r2_mean: float, steps=(1, 10, 100)) -> dict:
    n = len(steps)
    table = {"step": list(steps), "mse": [0.5] * n, "r2_pooled": [0.8] * n, "r2_median": [0.7] * n,
             "r2_mean": [r2_mean] * n, "frac_zeros": [0.7] * n, "population_sparseness": [0.5] * n,
             "loss": [1.0] * n}
    return {"model": {"preset": preset, "n_latents": 8, "poisson_kl": "reference"}, "dataset": "natural16",
            "n_steps": steps[-1], "final": {k: v[-1] for k, v in table.items() if k != "step"},
            "convergence": table}


def test_compare_puts_the_papers_r2_beside_pooled_and_median_and_says_which_is_which(tmp_path, keep_figures):
    for name, r2 in (("a", 0.85), ("b", -3.0)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(_metrics("ipvae", r2)))
    drawn = keep_figures(Fg)
    markdown = compare([tmp_path / "a", tmp_path / "b"], tmp_path / "cmp.md", verbose=False)
    header = markdown.splitlines()[0].split(" | ")
    assert header.index("R2 paper") + 1 == header.index("R2 pooled") == header.index("R2 median") - 1
    assert "| 0.85 | 0.8 | 0.7 |" in markdown
    for label in R2_LABELS.values():
        assert label in markdown and label in (tmp_path / "cmp.md").read_text()
    (fig,) = drawn
    titles = [ax.get_title() for ax in fig.axes]
    assert "R^2 paper (per-sample mean)" in titles and "R^2 pooled" in titles
    paper = fig.axes[titles.index("R^2 paper (per-sample mean)")]
    labels = paper.get_legend_handles_labels()[1]
    assert "b\n(all below the axis, min -3)" in labels  # b's line lies below: the legend says so


def test_convergence_figure_says_when_it_clips_part_of_a_curve(tmp_path, keep_figures):
    steps = [1, 2, 3, 5, 10]
    table = {"step": steps, "mse": np.linspace(1, 0.5, 5), "r2_pooled": np.linspace(0.1, 0.8, 5),
             "r2_median": np.linspace(0.1, 0.7, 5), "r2_mean": np.array([-40.0, -6.0, -0.5, 0.3, 0.6])}
    drawn = keep_figures(Fg)
    Fg.plot_convergence(table, tmp_path / "c.png", "t")
    fig = drawn[-1]
    r2_axes = next(ax for ax in fig.axes if ax.get_title() == "R^2")
    low = r2_axes.get_ylim()[0]
    labels = r2_axes.get_legend_handles_labels()[1]
    assert f"R^2 paper (per-sample mean)\n(clipped: 2 of 5 steps below {low:.2f}, min -40)" in labels
    assert "R^2 pooled" in labels and "R^2 median" in labels  # inside the axes: plain labels
    (text,) = [t for t in _texts(fig) if t.startswith("at step 10")]
    assert "R^2 paper  = 0.6" in text and "R^2 paper: mean over samples\n" in text


def test_gabor_summary_says_no_good_fits_instead_of_empty_histograms(tmp_path, keep_figures):
    fits = GaborFits(units=np.arange(3), params=np.ones((3, 8)), r2=np.array([0.1, 0.3, 0.2]),
                     side=16, n_units=8)
    drawn = keep_figures(gabor_figure)
    gabor_figure.plot_gabor_summary(fits, tmp_path / "g.png", "no Gabors")
    fig = drawn[-1]
    assert sum("no good fits (variance explained >= 0.8)" in t for t in _texts(fig)) == 5
    assert len(fig.axes[0].patches) > 0  # the variance-explained histogram of the 3 fits stays
    assert all(len(ax.patches) == 0 for ax in fig.axes[1:])  # no empty histograms drawn
    silent = GaborFits(units=np.arange(0), params=np.zeros((0, 8)), r2=np.zeros(0), side=16, n_units=8)
    gabor_figure.plot_gabor_summary(silent, tmp_path / "s.png", "silent")
    assert any("no used units: all 8 are silent" in t for t in _texts(drawn[-1]))


def _sweep(preset: str, tmp_path, keep_figures):
    members = members_from_sweep(RunConfig(), "beta_outer=2,8 seed=0,1")
    rng = np.random.default_rng(0)
    metrics = {}
    for m in members:
        beta = m.settings["beta_outer"]
        final = {"r2_pooled": 0.9 - beta / 100 + 0.01 * rng.standard_normal(),
                 "r2_mean": 0.8 - beta / 100 + 0.01 * rng.standard_normal(),
                 "frac_zeros": 0.0 if preset == "igvae" else 0.5 + beta / 100}
        final.update({"kl": 40.0 / beta} if preset == "igvae" else {"kl_reference": 30.0 / beta,
                                                                     "kl_exact": 1.0})
        metrics[m.name] = {"final": final, "model": {"preset": preset, "poisson_kl": "reference"}}
    drawn = keep_figures(Fg)
    table, figure = write_eval_summary(members, metrics, tmp_path, "sweep")
    return members, metrics, table.read_text().splitlines(), drawn[-1]


def test_sweep_summary_columns_are_means_over_seeds_of_each_named_r2(tmp_path, keep_figures):
    members, metrics, lines, _ = _sweep("ipvae", tmp_path, keep_figures)
    header = lines[0].split("\t")
    assert header == ["group", "beta_outer", "seeds", "r2_pooled_seed_mean", "r2_pooled_seed_sd",
                      "r2_paper_seed_mean", "r2_paper_seed_sd", "zeros_pct_seed_mean", "zeros_pct_seed_sd",
                      "kl_seed_mean", "kl_seed_sd"]
    row = dict(zip(header, lines[1].split("\t"), strict=True))
    b2 = [metrics[f"b2-s{s}"]["final"] for s in (0, 1)]
    assert float(row["r2_pooled_seed_mean"]) == pytest.approx(np.mean([f["r2_pooled"] for f in b2]))
    assert float(row["r2_paper_seed_mean"]) == pytest.approx(np.mean([f["r2_mean"] for f in b2]))
    assert float(row["kl_seed_mean"]) == pytest.approx(15.0)  # the configured (reference) form
    text = format_sweep_table(group_members(eval_rows(members, metrics)))
    assert text.splitlines()[0].split()[:6] == ["group", "seeds", "R2", "pooled", "R2", "paper"]
    assert R2_LABELS["r2_pooled"] in text and R2_LABELS["r2_mean"] in text


def test_rate_distortion_puts_zeros_on_x_for_sparse_codes(tmp_path, keep_figures):
    *_, fig = _sweep("ipvae", tmp_path, keep_figures)
    (ax,) = fig.axes
    assert ax.get_xlabel() == "zero latents (%)"
    assert ax.get_xlim()[1] - ax.get_xlim()[0] > 1  # the members' 52-58 %
    assert ax.get_legend_handles_labels()[1] == ["R^2 pooled", "R^2 paper (per-sample mean)"]


def test_rate_distortion_puts_the_kl_on_x_for_gaussian_latents(tmp_path, keep_figures):
    *_, fig = _sweep("igvae", tmp_path, keep_figures)
    (ax,) = fig.axes
    assert ax.get_xlabel() == "rate: KL per sample (nats, sum over latents)"
    low, high = ax.get_xlim()
    assert low < 5.0 and high > 20.0  # the members' KL, 5 and 20 nats, not a -0.04..0.04 axis of zeros
    assert "Gaussian latents" in ax.get_title()
