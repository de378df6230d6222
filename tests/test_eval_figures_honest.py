"""Figures say what they show: titles fit the figure, a legend entry whose line lies
outside the axes says so, panels of an all-silent model say why they are empty; the
tuning summary counts only units above the stated spike-count threshold and their noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fondtrain.config import ModelConfig
from fondtrain.eval import figures as Fg
from fondtrain.eval.tuning import MIN_EVOKED_SPIKES, bar_of_light
from fondtrain.model.vae import IterativeVAE

LONG_TITLE = ("runs/natural16-ipvae-k512-t16-b24-s0-1a2b3c/ckpt/step-00150000 (ipvae): orientation tuning "
              "to flashed bars, 4 phases x 16 orientations; curve = max evoked response over phases")


def _inside(fig: Figure, artist) -> bool:
    renderer = fig.canvas.get_renderer()
    box = artist.get_window_extent(renderer)
    width, height = fig.canvas.get_width_height()
    return box.x0 >= -1 and box.y0 >= -1 and box.x1 <= width + 1 and box.y1 <= height + 1


@pytest.fixture(scope="module")
def silent_tuning():
    """A real untrained ipvae: its units fire a chance spike or two, no more."""
    torch.manual_seed(0)
    model = IterativeVAE(ModelConfig(preset="ipvae", input_dim=64, n_latents=16, t_train=2))
    (result,) = bar_of_light(model, "bar", n_steps=40, window=20, n_orientations=8, n_repeats=2)
    return model, result


def test_chance_spikes_are_not_responsive(silent_tuning):
    _, result = silent_tuning
    summary = result.summary()
    assert summary["n_responsive"] == 0 and summary["osi_median"] is None
    assert summary["responsive_min_spikes"] == MIN_EVOKED_SPIKES and summary["responsive_window"] == 20
    assert result.tuning.max() < MIN_EVOKED_SPIKES / 20  # below the stated threshold
    assert result.tuning.max() > 1e-3  # ... yet "responsive" under a bare 1e-3 rule


def test_silent_tuning_figure_says_why_it_is_empty(silent_tuning, tmp_path, keep_figures):
    model, result = silent_tuning
    drawn = keep_figures(Fg)
    Fg.plot_tuning(result, model.W[0].detach().numpy(), tmp_path / "tuning.png", LONG_TITLE)
    fig = drawn[-1]
    fig.canvas.draw()
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any("no responsive units" in t for t in texts)
    assert _inside(fig, fig._suptitle)


def test_convergence_title_fits_and_off_scale_r2_is_labelled(tmp_path, keep_figures):
    steps = np.array([1, 2, 5, 10, 20])
    table = {"step": steps, "mse": np.linspace(1, 0.5, 5), "r2_pooled": np.linspace(0.1, 0.5, 5),
             "r2_median": np.linspace(0.1, 0.4, 5), "r2_mean": np.full(5, -3.0),
             "loss": np.linspace(9, 8, 5)}
    drawn = keep_figures(Fg)
    Fg.plot_convergence(table, tmp_path / "conv.png", LONG_TITLE + " " + LONG_TITLE, t_train=4)
    fig = drawn[-1]
    fig.canvas.draw()
    assert _inside(fig, fig._suptitle)
    r2_axes = next(ax for ax in fig.axes if ax.get_title() == "R^2")
    labels = [t.get_text() for t in r2_axes.get_legend().get_texts()]
    assert "R^2 paper (per-sample mean)\n(all below the axis, min -3)" in labels
    for ax in fig.axes:  # no panel title crosses another element's title
        assert ax.get_title() == "" or _inside(fig, ax.title)


def test_all_silent_latent_panel_says_so(tmp_path, keep_figures):
    drawn = keep_figures(Fg)
    Fg.plot_latent_activity(np.zeros((10, 4)), np.zeros(4), tmp_path / "lat.png", "t", discrete=True)
    texts = [t.get_text() for ax in drawn[-1].axes for t in ax.texts]
    assert any("all 4 units are silent" in t for t in texts)


def test_inside_helper_sees_a_cut_title():
    fig = Figure(figsize=(3, 2))
    FigureCanvasAgg(fig)
    fig.suptitle(LONG_TITLE)
    fig.canvas.draw()
    assert not _inside(fig, fig._suptitle)
