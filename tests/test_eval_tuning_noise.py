"""A unit is tuned only if its response exceeds its noise: collapsed models (fresh, or with
a dictionary scaled to ~0) have no responsive units in any family, a model whose dictionary
holds oriented Gabors has responsive, selective units, and Gaussian latents are never
described in spikes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fondtrain.config import ModelConfig
from fondtrain.eval.report import format_summary
from fondtrain.eval.tuning import NOISE_FACTOR, bar_of_light, oriented_stimuli, tuning_from_responses
from fondtrain.model.vae import IterativeVAE

SIDE, K = 16, 16
FAST = dict(n_steps=100, window=50, n_orientations=8, n_repeats=4)


pytestmark = pytest.mark.usefixtures("one_thread")


def gabors(side: int = SIDE, k: int = K) -> torch.Tensor:
    """k unit-norm even Gabors at k orientations evenly over 180 degrees, [side * side, k]."""
    c = (side - 1) / 2.0
    rows, cols = np.mgrid[0:side, 0:side].astype(np.float64)
    x, y = cols - c, c - rows
    out = []
    for i in range(k):
        t = math.pi * i / k
        across = x * math.cos(t) + y * math.sin(t)
        along = -x * math.sin(t) + y * math.cos(t)
        g = np.exp(-(across**2 / 8.0 + along**2 / 18.0)) * np.cos(2 * math.pi * 0.15 * across)
        out.append(g.ravel() / np.linalg.norm(g))
    return torch.tensor(np.stack(out, 1), dtype=torch.float32)


# Gabor amplitude at which each hand-built model codes a contrast-1 bar with moderate
# activity (at 1 the ipvae's rates run away on the preferred bars)
GABOR_SCALE = {"ipvae": 3.0, "igvae": 1.0, "igrelu": 1.0}


def model(preset: str, dictionary: str) -> IterativeVAE:
    """A fresh model of `preset` (dictionary "fresh"), with its dictionary scaled to ~0
    ("zero", the collapsed member's pixel-noise receptive fields), or holding Gabors."""
    torch.manual_seed(0)
    m = IterativeVAE(ModelConfig(preset=preset, input_dim=SIDE * SIDE, n_latents=K, t_train=4))
    with torch.no_grad():
        if dictionary == "zero":
            m.W.mul_(1e-3)
        elif dictionary == "gabor":
            m.W.copy_(GABOR_SCALE[preset] * gabors()[None])
    return m.eval()


@pytest.mark.parametrize("preset", ["ipvae", "igvae", "igrelu"])
@pytest.mark.parametrize("dictionary", ["fresh", "zero"])
@pytest.mark.parametrize("kind", ["bar", "grating"])
def test_a_collapsed_model_has_no_responsive_or_tuned_units(preset, dictionary, kind):
    (result,) = bar_of_light(model(preset, dictionary), kind, **FAST)
    summary = result.summary()
    assert summary["n_responsive"] == 0
    assert summary["frac_selective"] is None and summary["osi_median"] is None
    # its noise still draws "tuning curves"; they are what the criterion rejects
    assert result.tuning.max() > 0


@pytest.mark.parametrize("preset, least", [("ipvae", 14), ("igrelu", 12)])
def test_a_gabor_dictionary_gives_responsive_selective_units(preset, least):
    (result,) = bar_of_light(model(preset, "gabor"), "bar", **FAST)
    summary = result.summary()
    assert summary["n_responsive"] >= least
    assert summary["frac_selective"] >= 0.9 and summary["osi_median"] > 0.5
    r = result.responsive
    assert np.all(result.tuning.max(1)[r] >= NOISE_FACTOR * result.noise[r])


def _responses(means: np.ndarray, spread: np.ndarray, n_repeats: int, seed: int = 0) -> torch.Tensor:
    """Responses [(n_stimuli + 1) n_repeats, K]: stimulus s, repeat r of unit k is
    means[s, k] + spread[k] * N(0, 1)."""
    rng = np.random.default_rng(seed)
    noisy = means[:, None, :] + spread[None, None, :] * rng.standard_normal((len(means), n_repeats, len(spread)))
    return torch.from_numpy(noisy.reshape(-1, len(spread)))


def test_responsive_means_above_five_times_the_noise_of_an_evoked_response():
    stimuli, theta = oriented_stimuli(8, "bar", n_orientations=8, n_positions=3)
    n_stim = stimuli.shape[0] * stimuli.shape[1]
    means = np.zeros((n_stim + 1, 3))  # the blank last, at 0
    tuned = np.zeros((8, stimuli.shape[1]))
    tuned[2] = 1.0  # unit 0 and 1: one orientation answers 1.0 above the blank
    means[:-1, 0] = means[:-1, 1] = tuned.ravel()
    spread = np.array([0.05, 1.0, 0.5])  # unit 1 is as tuned, but its noise swamps it; 2 is noise
    resp = _responses(means, spread, n_repeats=8)
    result = tuning_from_responses(resp, "bar", stimuli, theta, 8, 100, 50, spikes=False)
    expected = spread * math.sqrt(2 / 8)  # standard error of (stimulus mean - blank mean)
    np.testing.assert_allclose(result.noise, expected, rtol=0.15)
    assert result.responsive.tolist() == [True, False, False]
    assert result.preferred[0] == pytest.approx(theta[2], abs=2.0)  # the vector average
    assert "5 x its noise" in result.rule() and "spikes" not in result.rule()


def test_gaussian_tuning_is_not_told_in_spikes():
    (gauss,) = bar_of_light(model("igrelu", "gabor"), "bar", **FAST)
    (poisson,) = bar_of_light(model("ipvae", "gabor"), "bar", **FAST)
    g, p = gauss.summary(), poisson.summary()
    assert "spikes" not in g["activity_unit"] and g["responsive_min_spikes"] is None
    assert p["activity_unit"] == "spikes" and "evoked spikes per 50-step window" in p["responsive_rule"]
    metrics = {"n_steps": 100, "n_samples": 10, "dataset": "natural16", "final": {},
               "tuning": {"bar": g}}
    line = format_summary(metrics).splitlines()[-1]
    assert "spikes" not in line and "activity a(z)" in line and f"{g['n_responsive']}/{K} responsive" in line


def test_one_repeat_cannot_measure_the_noise():
    with pytest.raises(ValueError, match="n_repeats must be at least 2"):
        bar_of_light(model("ipvae", "fresh"), "bar", n_steps=4, window=2, n_orientations=2, n_repeats=1)
