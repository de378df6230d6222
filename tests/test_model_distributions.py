"""Samplers, KLs, likelihood and soft clamps (SPEC 3-5) against independent computations.

Every expected value here is computed without fondtrain: direct sums over the Poisson
pmf, torch.distributions, scipy, or the formula written out in float64. The samplers take
the model's layout: log-rates [P, B, K] (P = 1 here unless said otherwise), one sampler
length and one generator per member.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import poisson as sp_poisson

from fondtrain.model import clamps
from fondtrain.model import gaussian as G
from fondtrain.model import poisson as P
from fondtrain.model import random_streams as streams
from fondtrain.model.n_exp import n_exp_for_rate
from fondtrain.model.relaxed_poisson import relaxed_poisson
from tests import oracles

RATES = [0.05, 0.5, 2.0, 8.0, 20.0]


# ----------------------------------------------------------------------------- Poisson KL
def _poisson_kl_by_sum(r: float, r0: float) -> float:
    """KL(Pois(r) || Pois(r0)) = sum_k p(k) log(p(k) / q(k)), summed far into the tail."""
    k_max = int(max(r, r0) + 40.0 * math.sqrt(max(r, r0)) + 60)
    k = np.arange(k_max + 1, dtype=np.float64)
    log_p = sp_poisson.logpmf(k, r)
    log_q = sp_poisson.logpmf(k, r0)
    p = np.exp(log_p)
    assert sp_poisson.sf(k_max, r) < 1e-30  # the truncated tail is negligible
    return float(np.sum(p * (log_p - log_q)))


def test_poisson_kl_exact_and_reference_against_pmf_sums():
    log_rates = np.log(np.array([0.01, 0.05, 0.3, 1.0, 2.5, 8.0, 20.0]))
    u, u0 = np.meshgrid(log_rates, log_rates, indexing="ij")
    u_t, u0_t = torch.from_numpy(u), torch.from_numpy(u0)
    exact = P.poisson_kl(u_t, u0_t, reference=False).numpy()
    reference = P.poisson_kl(u_t, u0_t, reference=True).numpy()
    expected = np.vectorize(_poisson_kl_by_sum)(np.exp(u), np.exp(u0))
    np.testing.assert_allclose(exact, expected, rtol=1e-9, atol=1e-13)
    # The reference form is the posterior rate times f(delta): exp(delta) * exact.
    np.testing.assert_allclose(reference, np.exp(u - u0) * expected, rtol=1e-9, atol=1e-13)
    # ... which is not the KL wherever the rates differ.
    off_diag = ~np.eye(len(log_rates), dtype=bool)
    assert np.all(np.abs(reference - exact)[off_diag] > 1e-6)
    np.testing.assert_allclose(np.diag(exact), 0.0, atol=1e-15)
    # one form per member ([P] flags, u [P, B, K]): member i takes its own form
    flags = torch.tensor([False, True])
    both = P.poisson_kl(torch.stack([u_t, u_t]), torch.stack([u0_t, u0_t]), flags).numpy()
    np.testing.assert_array_equal(both[0], exact)
    np.testing.assert_array_equal(both[1], reference)


def test_poisson_kl_unknown_form_raises():
    """The form is a flag (or one per member); a form's name (the old spelling) is
    refused rather than read as a true flag."""
    for name in ("textbook", "exact", "reference"):
        with pytest.raises(ValueError):
            P.poisson_kl(torch.zeros(2), torch.zeros(2), name)


# ----------------------------------------------------------------------------- Gaussian
@pytest.mark.parametrize("temp", [1.0, 0.5, 0.01])
def test_gaussian_kl_matches_torch_distributions(temp: float):
    gen = torch.Generator().manual_seed(1)
    mu, mu0 = torch.randn(2, 6, 9, generator=gen, dtype=torch.float64)
    xi, xi0 = 0.7 * torch.randn(2, 6, 9, generator=gen, dtype=torch.float64)
    q = torch.distributions.Normal(mu, temp * torch.exp(xi))
    p = torch.distributions.Normal(mu0, temp * torch.exp(xi0))
    expected = torch.distributions.kl_divergence(q, p)
    torch.testing.assert_close(G.gaussian_kl(mu, xi, mu0, xi0, temp), expected,
                               rtol=1e-12, atol=1e-12)


def test_gaussian_nll_matches_normal_log_prob():
    gen = torch.Generator().manual_seed(2)
    x, loc = torch.randn(2, 5, 16, generator=gen, dtype=torch.float64)
    log_sigma = 0.8 * torch.randn(16, generator=gen, dtype=torch.float64)
    expected = -torch.distributions.Normal(loc, torch.exp(log_sigma)).log_prob(x).sum(-1)
    actual = G.gaussian_nll(x, loc, log_sigma)
    assert actual.shape == (5,)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


def test_gaussian_sample_is_reparameterised():
    gen = torch.Generator().manual_seed(3)
    mu, xi, noise = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64)
    for temp in (1.0, 0.3):
        z = G.gaussian_sample(mu, xi, temp, noise)
        expected = mu.numpy() + temp * np.exp(xi.numpy()) * noise.numpy()
        np.testing.assert_allclose(z.numpy(), expected, rtol=1e-14)


# ----------------------------------------------------------------------------- soft clamps
def _softplus64(v: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, v)


@pytest.mark.parametrize("c", [2.0, 3.0, 10.0])
def test_softclamp_upper(c: float):
    x = torch.linspace(-60.0, 200.0, 5001, dtype=torch.float64)
    y = clamps.softclamp_upper(x, c)
    # torch's softplus is linear beyond 20 (as in the reference): error <= e^-20 there.
    np.testing.assert_allclose(y.numpy(), c - _softplus64(c - x.numpy()), rtol=0, atol=3e-9)
    assert torch.all(y <= c)
    assert torch.all(y[x < c + 20] < c)
    assert torch.all(y <= x + 1e-12)  # c - softplus(c - x) <= x (up to rounding)
    far_below = x < c - 30
    torch.testing.assert_close(y[far_below], x[far_below], rtol=0, atol=1e-12)
    torch.testing.assert_close(y[x > c + 60], torch.full_like(y[x > c + 60], c))
    assert torch.all(torch.diff(y) >= 0)
    assert torch.all(torch.diff(y[x < c + 20]) > 0)
    # value at the ceiling is c - log 2
    assert float(clamps.softclamp_upper(torch.tensor(c, dtype=torch.float64), c)) == pytest.approx(
        c - math.log(2.0), abs=1e-14)


@pytest.mark.parametrize("c", [1.0, 2.0, 7.0])
def test_softclamp_sym(c: float):
    x = torch.cat([torch.linspace(-100.0, 100.0, 4001, dtype=torch.float64),
                   torch.zeros(1, dtype=torch.float64)]).sort().values.requires_grad_(True)
    y = clamps.softclamp_sym(x, c)
    (slope,) = torch.autograd.grad(y.sum(), x)
    x, y = x.detach(), y.detach()
    np.testing.assert_allclose(y.numpy(), c * np.tanh(x.numpy() / c), rtol=1e-14, atol=1e-14)
    assert torch.all(y.abs() <= c)
    assert torch.all(y.abs() <= x.abs())
    torch.testing.assert_close(y, -clamps.softclamp_sym(-x, c))  # odd
    assert torch.all(torch.diff(y) >= 0) and torch.all(slope[x.abs() < 10 * c] > 0)
    zero = x == 0
    assert zero.sum() >= 1 and float(y[zero]) == 0.0 and float(slope[zero]) == 1.0
    near = x.abs() < 0.01 * c  # identity near 0 (error ~ x^3 / (3 c^2))
    torch.testing.assert_close(y[near], x[near], rtol=0, atol=1e-6 * c)
    torch.testing.assert_close(y[x > 20 * c], torch.full_like(y[x > 20 * c], c))
    torch.testing.assert_close(y[x < -20 * c], torch.full_like(y[x < -20 * c], -c))


@pytest.mark.parametrize("c", [2.0, 10.0])
def test_poisson_clamp_floor_and_ceiling(c: float):
    x = torch.linspace(-50.0, 50.0, 2001, dtype=torch.float64, requires_grad=True)
    y = clamps.poisson_clamp(x, c)
    (slope,) = torch.autograd.grad(y.sum(), x)
    x, y = x.detach(), y.detach()
    floor = -8.0 - math.log1p(math.exp(-(c + 8.0)))  # c - softplus(c + 8)
    expected = c - _softplus64(c - np.maximum(x.numpy(), -8.0))
    np.testing.assert_allclose(y.numpy(), expected, rtol=0, atol=3e-9)  # softplus threshold
    below = x < -8
    torch.testing.assert_close(y[below], torch.full_like(y[below], floor), rtol=0, atol=3e-9)
    assert torch.all(slope[below] == 0)
    assert torch.all(y >= floor - 3e-9) and torch.all(y <= c)
    assert torch.all(torch.diff(y) >= 0)
    assert torch.all(torch.diff(y[(x > -8) & (x < c + 20)]) > 0)
    middle = (x > -8) & (x < c - 30)
    torch.testing.assert_close(y[middle], x[middle], rtol=0, atol=1e-12)


def test_clamp_ceiling_schedule():
    for posterior, c_init in (("poisson", 2.0), ("gaussian", 1.0)):
        for c_final in (10.0, 7.0, 3.0, 2.0):
            assert clamps.clamp_ceiling(0.0, c_final, posterior) == c_init
            assert clamps.clamp_ceiling(1.0, c_final, posterior) == c_final
            for eps in (0.1, 0.25, 0.5, 0.9):
                assert clamps.clamp_ceiling(eps, c_final, posterior) == pytest.approx(
                    (1 - eps) * c_init + eps * c_final, abs=1e-12)
        eps_t = torch.tensor([0.0, 0.5, 1.0])
        torch.testing.assert_close(clamps.clamp_ceiling(eps_t, 10.0, posterior),
                                   torch.tensor([c_init, (c_init + 10) / 2, 10.0]))


def test_effective_dec_log_sigma():
    raw = torch.tensor([-100.0, -3.0, 0.0, 1.0, 100.0], dtype=torch.float64)
    np.testing.assert_allclose(clamps.effective_dec_log_sigma(raw).numpy(),
                               3.45 * np.tanh(raw.numpy() / 3.45), rtol=1e-14)


# ----------------------------------------------------------------------------- samplers
def _poisson_sf_by_sum(n: int, r: float) -> float:
    """P(Poisson(r) > n) summed directly over the tail in log space."""
    k = np.arange(n + 1, n + 400, dtype=np.float64)
    log_pmf = k * math.log(r) - r - np.array([math.lgamma(v + 1) for v in k])
    return float(np.exp(log_pmf).sum())


@pytest.mark.parametrize("rate", RATES + [3.0, 50.0])
def test_n_exp_is_the_quantile(rate: float):
    n = n_exp_for_rate(rate, 1e-3)
    assert isinstance(n, int)
    assert _poisson_sf_by_sum(n, rate) < 1e-3  # truncation is negligible ...
    assert _poisson_sf_by_sum(n - 1, rate) >= 1e-3  # ... and n is the smallest such length
    if rate == 3.0:
        assert n == 10  # the reference's starting value


def test_n_exp_rejects_non_positive_rate():
    with pytest.raises(ValueError):
        n_exp_for_rate(0.0)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("temp", [1.0, 0.1, 0.01])
def test_relaxed_poisson_equals_plain_autograd_expression(temp: float, dtype, tol: float):
    gen = torch.Generator().manual_seed(4)
    u = torch.linspace(-7.0, 3.0, 60, dtype=dtype).reshape(1, 4, 15)
    noise = streams.member_exponential_noise([40], u.shape[1:], generators=[gen]).to(dtype)
    weights = torch.randn(u.shape, generator=gen, dtype=dtype)
    u_fast = u.clone().requires_grad_(True)
    u_ref = u.clone().requires_grad_(True)
    z_fast = relaxed_poisson(u_fast, temp, [40], noise)
    z_ref = oracles.relaxed_poisson_reference(u_ref, temp, noise)
    (g_fast,) = torch.autograd.grad((weights * z_fast).sum(), u_fast)
    (g_ref,) = torch.autograd.grad((weights * z_ref).sum(), u_ref)
    assert z_fast.shape == u.shape and z_fast.dtype == dtype
    torch.testing.assert_close(z_fast, z_ref, rtol=tol, atol=tol)
    scale = g_ref.abs().max()
    assert scale > 0
    torch.testing.assert_close(g_fast / scale, g_ref / scale, rtol=tol, atol=tol)


def test_relaxed_poisson_reference_is_the_spec_formula():
    """z = sum_j sigmoid((1 - s_j) / tau), s_j cumulative sums of Exp(r) draws."""
    gen = torch.Generator().manual_seed(5)
    u = torch.randn(1, 3, 4, generator=gen, dtype=torch.float64)
    noise = streams.member_exponential_noise([12], u.shape[1:], generators=[gen]).double()
    rate = np.exp(u.numpy()) + np.finfo(np.float32).eps
    s = np.cumsum(noise.numpy() / rate, axis=0)
    expected = (1.0 / (1.0 + np.exp(-(1.0 - s) / 0.2))).sum(0)
    np.testing.assert_allclose(relaxed_poisson(u, 0.2, [12], noise).numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(oracles.relaxed_poisson_reference(u, 0.2, noise).numpy(), expected,
                               rtol=1e-12)


def test_hashed_uniforms_are_cell_midpoints_of_the_hash():
    """U = (m + 1/2) 2^-23 exactly, m the top 23 bits of mix(mix(c ^ k0) ^ k1) (computed
    here with numpy's wrapping uint32 arithmetic), c = draw n + i; `hashed_exponential_at`
    gives -log U at any counters, in any order."""
    like = torch.empty(2, 3, 5)
    keys = torch.tensor([[5, 2**31 - 1], [0, 77]])
    u = streams.hashed_uniform(like, keys, draw=4)

    def mix(x):
        x = x ^ (x >> np.uint32(16))
        x = x * np.uint32(0x7FEB352D)
        x = x ^ (x >> np.uint32(15))
        x = x * np.uint32(0x5BD1E995)
        return x ^ (x >> np.uint32(16))

    counter = np.arange(15, dtype=np.uint32) + np.uint32(4 * 15)
    for p in range(2):
        k0, k1 = (np.uint32(v) for v in keys[p].tolist())
        m = mix(mix(counter ^ k0) ^ k1) >> np.uint32(9)
        np.testing.assert_array_equal(u[p].flatten().double().numpy(), (m + 0.5) * 2.0**-23)
        shuffled = torch.tensor([14, 0, 7]) + 4 * 15
        np.testing.assert_allclose(streams.hashed_exponential_at(shuffled, keys[p]).numpy(),
                                   -np.log((m[[14, 0, 7]] + 0.5) * 2.0**-23), rtol=2.5e-7)


def test_cpu_arrival_stream_is_standard_exponential():
    """-log U of the CPU stream (the hashed one) against the Exp(1) distribution:
    Kolmogorov-Smirnov distance of 2 M draws below the 0.1% critical value, neighbouring
    entries and an entry's consecutive draws uncorrelated."""
    draws = streams.exponential_noise(20, torch.Size([200, 500]), generator=torch.Generator().manual_seed(3))
    x = np.sort(draws.double().flatten().numpy())
    n = x.size
    cdf = -np.expm1(-x)
    ks = max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n))
    assert ks < 1.95 / math.sqrt(n), ks
    flat = draws.double().flatten()
    corr = float(torch.corrcoef(torch.stack([flat[:-1], flat[1:]]))[0, 1])
    assert abs(corr) < 5 / math.sqrt(n)
    rows = draws.double().flatten(1)  # draw j and draw j + 1 of each entry
    corr = float(torch.corrcoef(torch.stack([rows[:-1].flatten(), rows[1:].flatten()]))[0, 1])
    assert abs(corr) < 5 / math.sqrt(rows[1:].numel())
    assert float(draws.min()) > 0 and float(draws.max()) <= 24 * math.log(2) + 1e-5


def test_cpu_arrival_stream_follows_the_torch_generator():
    """The stream is a function of the torch generator's state: the same seed replays it,
    another seed changes it, and None uses (and advances) torch's default generator."""
    shape = torch.Size([4, 6])
    a = streams.exponential_noise(11, shape, generator=torch.Generator().manual_seed(5))
    b = streams.exponential_noise(11, shape, generator=torch.Generator().manual_seed(5))
    c = streams.exponential_noise(11, shape, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)
    torch.manual_seed(5)
    d = streams.exponential_noise(11, shape)
    e = streams.exponential_noise(11, shape)
    torch.testing.assert_close(d, a, rtol=0, atol=0)
    assert not torch.equal(d, e)
    # a longer draw starts with the same arrivals
    longer = streams.exponential_noise(15, shape, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(longer[:11], a, rtol=0, atol=0)
    # each member's rows are its own generator's stream, whatever the other members draw
    gens = [torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)]
    members = streams.member_exponential_noise([11, 7], shape, generators=gens)
    assert members.shape == (11, 2, 4, 6)
    torch.testing.assert_close(members[:, 0], a, rtol=0, atol=0)
    torch.testing.assert_close(members[:7, 1], c[:7], rtol=0, atol=0)


def test_exponential_noise_is_standard_and_seeded():
    a = streams.exponential_noise(7, torch.Size([50, 200]), generator=torch.Generator().manual_seed(9))
    b = streams.exponential_noise(7, torch.Size([50, 200]), generator=torch.Generator().manual_seed(9))
    assert a.shape == (7, 50, 200)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    n = a.numel()
    assert abs(float(a.mean()) - 1.0) < 5 / math.sqrt(n)  # Exp(1): mean 1, variance 1
    assert abs(float(a.var()) - 1.0) < 5 * math.sqrt(8 / n)
    assert float(a.min()) >= 0


def _check_moments(samples: torch.Tensor, mean: float, var: float, r: float) -> None:
    """Sample mean and variance against targets, tolerances from the standard errors
    of a Poisson(r) sample: se(mean) = sqrt(r / n), se(var) = sqrt((r + 2 r^2) / n)."""
    s = samples.double().flatten()
    n = s.numel()
    se_mean = math.sqrt(r / n)
    se_var = math.sqrt((r + 2 * r * r) / n)
    assert abs(float(s.mean()) - mean) < 5 * se_mean, (float(s.mean()), mean, se_mean)
    assert abs(float(s.var()) - var) < 5 * se_var, (float(s.var()), var, se_var)


@pytest.mark.parametrize("rate", RATES)
def test_relaxed_poisson_low_temperature_moments(rate: float):
    """At tau = 0.01 the relaxed count is Poisson(r) in distribution.

    By Campbell's theorem the relaxed count sum_j sigmoid((1 - s_j)/tau) of a rate-r
    process has mean r (1 + O(e^{-1/tau})) and variance r (int sigmoid^2) = r (1 - tau)
    + O(r e^{-1/tau}); the O(tau) variance deficit is included in the target.
    """
    temp = 0.01
    n_exp = n_exp_for_rate(rate, 1e-3)
    gen = torch.Generator().manual_seed(int(rate * 100))
    u = torch.full((1, 200, 600), math.log(rate))
    noise = streams.member_exponential_noise([n_exp], u.shape[1:], generators=[gen])
    for z in (relaxed_poisson(u, temp, [n_exp], noise),  # given noise, and drawn by the sampler
              relaxed_poisson(u, temp, [n_exp], generators=[gen])):
        assert float(z.min()) >= 0 and float(z.max()) <= n_exp
        _check_moments(z, rate, rate * (1 - temp), rate)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rate", [0.02, 0.5, 3.0])
@pytest.mark.parametrize("temp", [0.05, 0.5])
def test_streamed_sampler_mean_and_gradient_are_unbiased(rate: float, temp: float, dtype):
    """The sampler drawing its own arrivals (dropping finished entries; in float32 the C
    kernel where it is built, in float64 the torch code) against closed forms:
    by Campbell's theorem E z = r int_0^inf sigmoid((1 - t)/tau) dt = r tau log(1 + e^{1/tau})
    (untruncated: n_exp at the 1e-9 quantile of the arrivals before t = 1 + 12 tau, past
    which sigmoid((1 - t) / tau) < 1e-5, far below the standard errors), and the pathwise
    gradient is unbiased,
    E dz/du = d E z / du = E z since r = e^u (the float32 floor on r is negligible here).
    """
    n_exp = n_exp_for_rate(rate * (1 + 12 * temp), 1e-9)
    gen = torch.Generator().manual_seed(int(rate * 1000 + temp * 10))
    u = torch.full((1, 400, 500), math.log(rate), dtype=dtype, requires_grad=True)
    z = relaxed_poisson(u, temp, [n_exp], generators=[gen])
    (grad,) = torch.autograd.grad(z.sum(), u)
    expected = rate * temp * math.log1p(math.exp(1.0 / temp))
    for sample in (z.detach().double(), grad.double()):
        se = float(sample.std()) / math.sqrt(sample.numel())
        assert abs(float(sample.mean()) - expected) < 5 * se, (float(sample.mean()), expected, se)


@pytest.mark.parametrize("rate", RATES)
def test_exact_poisson_sampler_moments(rate: float):
    gen = torch.Generator().manual_seed(7 + int(rate * 10))
    u = torch.full((200, 500), math.log(rate), requires_grad=True)
    z = P.exact_poisson(u, gen)
    assert not z.requires_grad
    assert torch.equal(z, z.round()) and float(z.min()) >= 0
    _check_moments(z, rate, rate, rate)


@pytest.mark.parametrize("rate", [1e-4, 0.01, 0.0999, 0.3])
def test_exact_poisson_frequencies_of_sparse_and_dense_posteriors(rate: float):
    """Counts 0..3 as often as the Poisson pmf says (scipy), with another rate (0.05) in
    every other entry: all rates <= QUIET_RATE take the sparse sampler, 0.3 torch.poisson."""
    n = 400_000
    gen = torch.Generator().manual_seed(int(rate * 1e4) + 3)
    u = torch.full((n,), math.log(rate), dtype=torch.float64)
    u[::2] = math.log(0.05)
    z = P.exact_poisson(u, gen).numpy()
    for values, r in ((z[1::2], rate), (z[::2], 0.05)):
        m = values.size
        for k in range(4):
            p = sp_poisson.pmf(k, r)
            observed = float(np.mean(values == k))
            assert abs(observed - p) < 5 * math.sqrt(p * (1 - p) / m) + 1e-12, (r, k, observed, p)


def test_sparse_poisson_is_seeded_and_draws_little():
    u = torch.log(torch.rand(200, 500, generator=torch.Generator().manual_seed(0)) * 0.02)
    a = P.exact_poisson(u, torch.Generator().manual_seed(1))
    b = P.exact_poisson(u, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.dtype == torch.float32 and a.shape == u.shape
    assert float(a.sum()) == pytest.approx(float(torch.exp(u).sum()), rel=0.1)
    rng = np.random.Generator(np.random.SFC64(0))
    picked = P._bernoulli_positions(100_000, 0.02, rng)
    assert np.all(np.diff(picked) > 0) and 1_700 < picked.size < 2_300  # ~p n of them
    hits = np.zeros(5)  # every position, the first and last included, with probability p
    for _ in range(4000):
        hits[P._bernoulli_positions(5, 0.3, rng)] += 1
    np.testing.assert_allclose(hits / 4000, 0.3, atol=5 * math.sqrt(0.3 * 0.7 / 4000))


def test_poisson_rate_has_float32_floor():
    r = P.poisson_rate(torch.tensor([-float("inf"), 0.0]))
    assert float(r[0]) == torch.finfo(torch.float32).eps
    assert float(r[1]) == pytest.approx(1.0 + torch.finfo(torch.float32).eps)
