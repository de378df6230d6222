"""Evaluation metrics against numpy hand computations (SPEC 7)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fondtrain import stats as Mx
from fondtrain.config import ModelConfig
from fondtrain.eval.convergence import latent_responses, rank_seed, run_convergence
from fondtrain.eval.data import EvalData, fit_to_model, resize_patches
from fondtrain.eval.tuning import oriented_stimuli
from fondtrain.images import paired_grid
from fondtrain.model import inference
from fondtrain.model.vae import IterativeVAE

EPS32 = np.finfo(np.float32).eps


def _np_r2(x: np.ndarray, x_hat: np.ndarray) -> tuple[float, float, float]:
    ss_res = ((x - x_hat) ** 2).sum(1)
    ss_tot = ((x - x.mean(1, keepdims=True)) ** 2).sum(1)
    per = 1 - ss_res / (ss_tot + EPS32)
    return per.mean(), 1 - ss_res.sum() / ss_tot.sum(), np.median(per)


def _np_sparseness(z: np.ndarray, axis: int) -> np.ndarray:
    m = z.shape[axis]
    s1, s2 = z.sum(axis), (z**2).sum(axis)
    out = np.ones_like(s1, dtype=np.float64)
    fire = s2 > 0
    out[fire] = (1 - s1[fire] ** 2 / (m * s2[fire])) / (1 - 1 / m)
    return out


def test_r2_three_ways_match_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 16))
    x_hat = x + 0.3 * rng.normal(size=x.shape)
    x[3] = 0.01 * rng.normal(size=16)  # a near-flat sample drags the mean R^2 down
    got = Mx.r2_three_ways(torch.from_numpy(x), torch.from_numpy(x_hat))
    mean, pooled, med = _np_r2(x, x_hat)
    assert got["r2_mean"] == pytest.approx(mean, rel=1e-10)
    assert got["r2_pooled"] == pytest.approx(pooled, rel=1e-10)
    assert got["r2_median"] == pytest.approx(med, rel=1e-10)
    assert got["r2_mean"] < got["r2_median"] - 1  # the flat patch's R^2 is in the -100s
    per = Mx.r2_per_sample(torch.from_numpy(x), torch.from_numpy(x_hat)).numpy()
    np.testing.assert_allclose(per.mean(), mean, rtol=1e-10)
    assert Mx.median(torch.tensor([1.0, 2.0, 3.0, 10.0])) == 2.5  # numpy's even-length median


def test_r2_of_perfect_and_mean_reconstruction():
    x = torch.randn(8, 9, dtype=torch.float64)
    assert Mx.r2_three_ways(x, x)["r2_pooled"] == 1.0
    flat = x.mean(1, keepdim=True).expand_as(x)
    assert Mx.r2_three_ways(x, flat)["r2_pooled"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("axis", [0, 1])
def test_sparseness_matches_numpy(axis):
    rng = np.random.default_rng(1)
    z = rng.poisson(0.3, size=(40, 12)).astype(np.float64)
    z[:, 5] = 0  # a silent unit
    z[7] = 0  # a sample where nothing fires
    fn = Mx.lifetime_sparseness if axis == 0 else Mx.population_sparseness
    np.testing.assert_allclose(fn(torch.from_numpy(z)).numpy(), _np_sparseness(z, axis), rtol=1e-12)


def test_sparseness_closed_forms():
    one_hot = torch.zeros(3, 10)
    one_hot[:, 4] = 2.0
    assert torch.allclose(Mx.population_sparseness(one_hot), torch.ones(3, dtype=torch.float64))
    uniform = torch.full((3, 10), 0.7)
    assert torch.allclose(Mx.population_sparseness(uniform), torch.zeros(3, dtype=torch.float64),
                          atol=1e-12)
    silent = torch.zeros(4, 6)
    assert torch.equal(Mx.population_sparseness(silent), torch.ones(4, dtype=torch.float64))
    assert torch.equal(Mx.lifetime_sparseness(silent), torch.ones(6, dtype=torch.float64))
    # half of the m entries equal, the rest 0: (1 - (m/2)^2 / (m * m/2)) / (1 - 1/m) = m / (2 (m - 1))
    half = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0, 0.0]])
    assert float(Mx.population_sparseness(half)) == pytest.approx(6 / 10)
    assert torch.isnan(Mx.sparseness_from_sums(torch.ones(1), torch.ones(1), 1)).all()


def test_fraction_zeros_and_log_grid():
    z = torch.tensor([[0.0, 1.0, 0.0, 3.0], [0.0, 0.0, 0.0, 2.0]])
    assert Mx.fraction_zeros(z) == 5 / 8
    assert Mx.log_grid(1000) == [1, 2, 3, 5, 7, 10, 20, 30, 50, 70, 100, 200, 300, 500, 700, 1000]
    assert Mx.log_grid(40, [16]) == [1, 2, 3, 5, 7, 10, 16, 20, 30, 40]


def test_orientation_selectivity():
    theta = torch.arange(8) * 22.5
    single = torch.zeros(2, 8)
    single[0, 2] = 3.0
    single[1] = 1.0
    osi, pref = Mx.circular_selectivity(single, theta)
    assert osi[0] == pytest.approx(1.0) and pref[0] == pytest.approx(45.0)
    assert osi[1] == pytest.approx(0.0, abs=1e-12)
    po = Mx.pref_orth_index(torch.tensor([[4.0, 3, 1, 0, 0, 0, 1, 3]]), theta)
    assert float(po) == pytest.approx(1.0)  # R_orth (90 deg away, index 4) is 0
    assert torch.isnan(Mx.circular_selectivity(torch.zeros(1, 8), theta)[0]).all()


def test_stimuli_orientation_and_contrast():
    stim, theta = oriented_stimuli(16, "bar", n_orientations=4)
    assert stim.shape == (4, 14, 256) and list(theta) == [0, 45, 90, 135]
    np.testing.assert_allclose(np.sqrt((stim**2).mean(-1)), 1.0, rtol=1e-5)
    horizontal = stim[0, 3].reshape(16, 16)  # centred bright bar at 0 deg: a horizontal line
    assert horizontal[7:9, 2:14].mean() > 1.0 > abs(horizontal[2:5, 6:10].mean())
    vertical = stim[2, 3].reshape(16, 16)
    np.testing.assert_allclose(vertical, horizontal.T, atol=1e-5)
    gratings, _ = oriented_stimuli(8, "grating", n_orientations=6, frequencies=(0.2,), n_phases=4)
    assert gratings.shape == (6, 4, 64)


def test_resize_to_model_and_paired_grid():
    x = np.random.default_rng(2).normal(size=(20, 64)).astype(np.float32)
    assert resize_patches(x, 16).shape == (20, 256)
    data = fit_to_model(EvalData(x, x[:5], None, None, {}, name="d"), 256)
    assert data.x_train.shape == (20, 256)
    assert abs(data.x_train.mean()) < 1e-5 and data.x_train.std() == pytest.approx(1.0, rel=1e-4)
    grid = paired_grid(x[:4], 0.5 * x[:4], n_pairs_per_row=2)
    assert grid.shape == (2 * 12 + 4, 2 * 21 + 4) and grid.min() >= 0 and grid.max() <= 1


def test_convergence_table_matches_direct_computation():
    """Reporting every step with the same seed reproduces `inference.run`'s trajectory, so
    the accumulated table must equal metrics computed directly on the stored traces."""
    torch.manual_seed(0)
    model = IterativeVAE(ModelConfig(preset="ipvae", input_dim=16, n_latents=12, t_train=4,
                                     init_scale=0.3, u_init_low=-1.0, u_init_high=0.5))
    x = torch.randn(30, 16)
    n_steps = 6
    (res,) = run_convergence(model, x, n_steps, temp=0.0, beta=2.0, batch_size=30,
                             steps=list(range(1, n_steps + 1)), seed=0)
    gen = torch.Generator().manual_seed(rank_seed(0, 0))  # run_convergence's generator on rank 0
    traces = inference.run(model, x, n_steps, 0.0, beta=2.0, generators=[gen])
    table = res.table
    assert res.n_samples == 30
    for t in range(n_steps):
        z, x_hat = traces["z"][t, 0].double(), traces["x_hat"][t, 0].double()
        mean, pooled, med = _np_r2(x.double().numpy(), x_hat.numpy())
        assert table["r2_mean"][t] == pytest.approx(mean, rel=1e-6)
        assert table["r2_pooled"][t] == pytest.approx(pooled, rel=1e-6)
        assert table["r2_median"][t] == pytest.approx(med, rel=1e-6)
        assert table["mse"][t] == pytest.approx(float(((x - x_hat) ** 2).mean()), rel=1e-6)
        assert table["frac_zeros"][t] == pytest.approx(float((z == 0).double().mean()))
        assert table["lifetime_sparseness"][t] == pytest.approx(_np_sparseness(z.numpy(), 0).mean())
        assert table["population_sparseness"][t] == pytest.approx(_np_sparseness(z.numpy(), 1).mean())
        assert table["loss"][t] == pytest.approx(float(traces["loss"][t, 0]), rel=1e-5)
        assert table["kl_reference"][t] == pytest.approx(float(traces["kl"][t, 0].sum(-1).mean()), rel=1e-5)
    assert table["kl_exact"][0] != table["kl_reference"][0]


def test_latent_responses_window_average():
    model = IterativeVAE(ModelConfig(preset="igvae", input_dim=16, n_latents=5))
    x = torch.randn(7, 16)
    resp = latent_responses(model, x, n_steps=10, window=4, batch_size=3)
    assert resp.shape == (1, 7, 5) and torch.isfinite(resp).all()
