"""Gabor fits of dictionary elements: known Gabors are recovered, noise fits badly."""

from __future__ import annotations

import numpy as np
import pytest

from fondtrain.eval.gabor import GOOD_R2, fit_dictionary, fit_gabor, gabor


def _random_gabor(rng: np.random.Generator) -> np.ndarray:
    """(x0, y0, theta, f, phi, sx, sy, A) well inside a 16 x 16 patch."""
    return np.array([rng.uniform(5, 10), rng.uniform(5, 10), rng.uniform(0, np.pi),
                     rng.uniform(0.08, 0.3), rng.uniform(0, 2 * np.pi), rng.uniform(1.5, 3.0),
                     rng.uniform(1.5, 4.0), rng.uniform(0.5, 2.0)])


def _angle_diff_deg(a: float, b: float) -> float:
    """Difference of two orientations (mod 180 degrees)."""
    d = (a - b) % 180.0
    return min(d, 180.0 - d)


def test_known_gabors_are_recovered():
    rng = np.random.default_rng(0)
    truths = np.stack([_random_gabor(rng) for _ in range(12)])
    weight = np.stack([gabor(p, 16) for p in truths], axis=1)  # [256, 12]
    weight += 0.03 * np.abs(weight).max() * rng.standard_normal(weight.shape)
    fits = fit_dictionary(weight)
    tab = fits.table()
    assert fits.good.all() and fits.summary()["frac_good"] == 1.0
    for i, p in enumerate(truths):
        want_orientation = np.mod(np.degrees(p[2]) + 90.0, 180.0)  # stripes run across theta
        assert _angle_diff_deg(tab["orientation_deg"][i], want_orientation) < 3.0, i
        assert abs(tab["frequency"][i] - p[3]) < 0.1 * p[3], i
        assert np.hypot(tab["x0"][i] - p[0], tab["y0"][i] - p[1]) < 0.5, i
        assert abs(tab["size"][i] - np.sqrt(p[5] * p[6])) < 0.15 * np.sqrt(p[5] * p[6]), i


def test_noiseless_fit_is_exact_and_canonical():
    truth = np.array([7.3, 8.1, 2.5, 0.2, 1.0, 2.0, 3.0, 1.5])
    params, r2 = fit_gabor(gabor(truth, 16))
    assert r2 > 0.999
    assert 0 <= params[2] < np.pi and params[7] > 0 and 0 <= params[4] < 2 * np.pi
    np.testing.assert_allclose(gabor(params, 16), gabor(truth, 16), atol=1e-3)


def test_white_noise_fits_badly():
    rng = np.random.default_rng(1)
    fits = fit_dictionary(rng.standard_normal((256, 20)))
    assert fits.r2.max() < 0.4
    assert fits.summary()["frac_good"] == 0.0 and fits.summary()["frequency_median"] is None


def test_only_used_units_are_fitted_and_constant_elements_are_safe():
    """Used = mean activity not 0 (a Gaussian unit's mean may be negative)."""
    rng = np.random.default_rng(2)
    weight = np.stack([gabor(_random_gabor(rng), 16) for _ in range(4)], axis=1)
    weight[:, 2] = 0.0
    fits = fit_dictionary(weight, usage=np.array([0.5, 0.0, -0.1, 2.0]))
    np.testing.assert_array_equal(fits.units, [0, 2, 3])
    assert fits.r2[1] == 0.0 and fits.good.tolist() == [True, False, True]
    s = fits.summary()
    assert (s["n_units"], s["n_used"], s["n_good"]) == (4, 3, 2) and s["good_r2"] == GOOD_R2


def test_non_square_input_is_refused():
    with pytest.raises(ValueError, match="not a square patch"):
        fit_dictionary(np.zeros((60, 3)))


def test_figures_are_written(tmp_path):
    from fondtrain.eval.gabor_figure import plot_gabor_fits, plot_gabor_summary

    rng = np.random.default_rng(3)
    weight = np.stack([gabor(_random_gabor(rng), 16) for _ in range(6)], axis=1)
    weight = np.concatenate([weight, rng.standard_normal((256, 2))], axis=1)
    fits = fit_dictionary(weight)
    a = plot_gabor_summary(fits, tmp_path / "gabor.png", "test")
    b = plot_gabor_fits(fits, weight, np.arange(8), tmp_path / "fits.png")
    assert a.stat().st_size > 10_000 and b.stat().st_size > 1_000
