"""The inference-step maths (SPEC 3) against autograd and hand computations in numpy float64.

- `recon_grad` is the autograd gradient of 0.5 sum((x - W a(z))^2 / sigma_dec^2) w.r.t. z;
- `free_energy_grad` and `update` equal the formulas of SPEC 3.3-3.4 written out below;
- the inner-KL terms (n_iters_inner > 1) are natural gradients of the KL:
  Poisson  beta (u - u0)                 = beta F_u^{-1} dKL_exact/du,  F_u = r (Fisher of
           Pois(e^u) in u);
  Gaussian beta sigma^2 (mu - mu0)/sigma0^2 = beta F_mu^{-1} dKL_tau/dmu, F_mu = 1/(tau sigma)^2,
           i.e. before the natural-gradient scaling the mu term is tau^2 dKL_tau/dmu
           (= dKL_1/dmu: the temperature drops out);
           beta (exp(2 (xi - xi0)) - 1)   = beta dKL_tau/dxi for every tau (the ratio of the
           two temperature-scaled sigmas does not depend on tau), scaled by F_xi^{-1} = 1/2.

The models are populations of one (P = 1): parameters, states and outputs carry a leading
member axis of size 1; the numpy maths act on member 0's parameters and tensors.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fondtrain.config import ModelConfig
from fondtrain.model import gaussian as G
from fondtrain.model import poisson as P
from fondtrain.model.vae import IterativeVAE, State

PRESETS = ("ipvae", "igvae", "igrelu")
M, K, B = 16, 8, 5


def make_model(preset: str, seed: int = 0, **overrides) -> IterativeVAE:
    """A small float64 model (P = 1) whose parameters are all away from their (symmetric)
    inits."""
    overrides.setdefault("t_train", 3)
    config = ModelConfig(preset=preset, input_dim=M, n_latents=K, seed=seed, **overrides)
    model = IterativeVAE(config).double()
    gen = torch.Generator().manual_seed(100 + seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    with torch.no_grad():
        model.W.copy_(0.3 * rnd(M, K)[None])
        model.dec_log_sigma.copy_(0.4 * rnd(M)[None])
        model.log_bias.copy_(-2.0 + 0.5 * rnd(K)[None])
        model.log_lr.copy_(-1.0 + 0.3 * rnd(config.n_components)[None])
        if model.is_poisson:
            model.u_init.copy_(-2.0 + rnd(1, K)[None])
        else:
            model.u_init.copy_(torch.stack([0.5 * rnd(K), -0.3 + 0.3 * rnd(K)])[None])
        if preset == "igrelu":
            model.log_gain.copy_(0.3 * rnd(K)[None])
    return model


def _inputs(seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(B, M, generator=gen, dtype=torch.float64), gen


def _params(model: IterativeVAE) -> dict[str, np.ndarray]:
    """Member 0's parameters without the member axis."""
    return {k: v[0].detach().numpy().copy() for k, v in model.named_parameters()}


# ----------------------------------------------------------------------------- numpy maths
def np_activation(p, preset, z):
    if preset == "igrelu":
        return np.maximum(z, 0.0) * np.exp(p["log_gain"]), (z > 0) * np.exp(p["log_gain"])
    return z, np.ones_like(z)


def np_recon_grad(p, preset, x, z):
    """SPEC 3.2: g_rec = -a'(z) * (W^T ((x - W a(z)) / sigma_dec^2))."""
    a, da = np_activation(p, preset, z)
    log_sigma = 3.45 * np.tanh(p["dec_log_sigma"] / 3.45)
    error = (x - a @ p["W"].T) / np.exp(2 * log_sigma)
    return -da * (error @ p["W"])


def np_free_energy_grad(p, cfg: ModelConfig, x, comps, z, temp, prior):
    g_rec = np_recon_grad(p, cfg.preset, x, z)
    inner = cfg.n_iters_inner > 1
    if cfg.posterior == "poisson":
        (u,) = comps
        g = g_rec + (cfg.beta_inner * (u - prior[0]) if inner else 0.0)
        return (g + np.exp(p["log_bias"]),)
    mu, xi = comps
    sigma = np.exp(xi)
    e = (z - mu) / (temp * sigma)
    g_mu, g_xi = g_rec, g_rec * e * sigma
    if inner:
        mu0, xi0 = prior
        g_mu = g_mu + cfg.beta_inner * (mu - mu0) / np.exp(xi0) ** 2
        g_xi = g_xi + cfg.beta_inner * (np.exp(2 * (xi - xi0)) - 1.0)
    return (g_mu * sigma**2 + np.exp(p["log_bias"]), 0.5 * g_xi)


def np_clamp(v, c_final, cfg: ModelConfig, eps):
    if cfg.posterior == "poisson":
        c = 2.0 + eps * (c_final - 2.0)
        return c - np.logaddexp(0.0, c - np.maximum(v, -8.0))
    c = 1.0 + eps * (c_final - 1.0)
    return c * np.tanh(v / c)


def np_update(p, cfg: ModelConfig, x, comps, z, eps, temp, prior):
    grads = np_free_energy_grad(p, cfg, x, comps, z, temp, prior)
    new, raw_steps = [], []
    for i, (v, g) in enumerate(zip(comps, grads, strict=True)):
        raw = -np.exp(p["log_lr"][i]) * g
        raw_steps.append(raw)
        d = np_clamp(raw, cfg.clamp_du[i], cfg, eps)
        new.append(np_clamp(v + d, cfg.clamp_u[i], cfg, eps))
    return new, grads, raw_steps


def _state_and_sample(model: IterativeVAE, temp: float, gen: torch.Generator):
    """A wide state (so that both soft clamps act), a prior and a sample from the state,
    each [1, B, K]."""
    if model.is_poisson:
        u = -10.0 + 16.0 * torch.rand(1, B, K, generator=gen, dtype=torch.float64)
        u0 = -10.0 + 16.0 * torch.rand(1, B, K, generator=gen, dtype=torch.float64)
        z = torch.poisson(torch.exp(u), generator=gen) + torch.rand(1, B, K, generator=gen,
                                                                     dtype=torch.float64)
        return State((u,)), State((u0,)), z
    mu = 2.0 * torch.randn(1, B, K, generator=gen, dtype=torch.float64)
    xi = 0.8 * torch.randn(1, B, K, generator=gen, dtype=torch.float64)
    mu0 = mu + torch.randn(1, B, K, generator=gen, dtype=torch.float64)
    xi0 = xi + 0.5 * torch.randn(1, B, K, generator=gen, dtype=torch.float64)
    noise = torch.randn(1, B, K, generator=gen, dtype=torch.float64)
    z = G.gaussian_sample(mu, xi, temp, noise)
    return State((mu, xi)), State((mu0, xi0)), z


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("preset", PRESETS)
def test_recon_grad_is_autograd_of_recon_loss(preset: str):
    model = make_model(preset)
    x, gen = _inputs()
    z = 1.5 * torch.randn(1, B, K, generator=gen, dtype=torch.float64)
    if preset == "igrelu":
        z = torch.where(z.abs() < 0.1, z.sign() * 0.1 + z, z)  # away from the kink at 0
        assert (z > 0).any() and (z < 0).any()
    if preset == "ipvae":
        z = z.abs().round() + 0.3 * z  # count-like values
    z.requires_grad_(True)
    W = model.W.detach()[0]
    a = z if preset != "igrelu" else torch.relu(z) * torch.exp(model.log_gain.detach()[0])
    sigma = torch.exp(3.45 * torch.tanh(model.dec_log_sigma.detach()[0] / 3.45))
    loss = 0.5 * (((x - a @ W.T) / sigma) ** 2).sum()
    (expected,) = torch.autograd.grad(loss, z)
    actual = model.recon_grad(x, z.detach())
    assert actual.shape == (1, B, K)
    assert expected.abs().max() > 1.0
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(actual[0].detach().numpy(),
                               np_recon_grad(_params(model), preset, x.numpy(),
                                             z[0].detach().numpy()), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("n_inner", [1, 2])
@pytest.mark.parametrize("eps,temp", [(1.0, 1.0), (0.3, 0.5)])
def test_free_energy_grad_and_update_match_hand_computation(preset, n_inner, eps, temp):
    model = make_model(preset, n_iters_inner=n_inner, beta_inner=0.7)
    x, gen = _inputs(2)
    state, prior, z = _state_and_sample(model, temp, gen)
    p = _params(model)
    comps = [c[0].numpy() for c in state.components]
    prior_np = [c[0].numpy() for c in prior.components]
    new_np, grads_np, raw_np = np_update(p, model.config, x.numpy(), comps, z[0].numpy(), eps,
                                         temp, prior_np)
    with torch.no_grad():
        grads = model.free_energy_grad(x, state, z, temp, prior)
        new = model.update(x, state, z, eps, temp, prior)
    assert len(grads) == len(new.components) == model.config.n_components
    for i in range(model.config.n_components):
        assert grads[i].shape == new.components[i].shape == (1, B, K)
        np.testing.assert_allclose(grads[i][0].numpy(), grads_np[i], rtol=1e-11, atol=1e-11)
        np.testing.assert_allclose(new.components[i][0].numpy(), new_np[i], rtol=1e-11,
                                   atol=1e-11)
    # The probe reaches the non-linear part of the soft clamps, so they are tested too.
    for i in range(model.config.n_components):
        unclamped = comps[i] + raw_np[i]
        assert np.abs(new_np[i] - unclamped).max() > 0.1, "the soft clamps never act"


def test_update_requires_prior_with_inner_iterations():
    model = make_model("igvae", n_iters_inner=2)
    x, gen = _inputs()
    state, _, z = _state_and_sample(model, 1.0, gen)
    with pytest.raises(ValueError):
        model.free_energy_grad(x, state, z, 1.0, None)


def _inner_term(preset: str, temp: float, beta_inner: float = 0.7):
    """The part of free_energy_grad that n_iters_inner = 2 adds (same model, same inputs)."""
    with_kl = make_model(preset, n_iters_inner=2, beta_inner=beta_inner)
    without = IterativeVAE(dataclasses.replace(with_kl.config, n_iters_inner=1)).double()
    without.load_state_dict(with_kl.state_dict())
    x, gen = _inputs(3)
    state, prior, z = _state_and_sample(with_kl, temp, gen)
    with torch.no_grad():
        g2 = with_kl.free_energy_grad(x, state, z, temp, prior)
        g1 = without.free_energy_grad(x, state, z, temp, prior)
    return [a - b for a, b in zip(g2, g1, strict=True)], state, prior


def test_poisson_inner_kl_term_is_natural_gradient_of_exact_kl():
    (delta,), state, prior = _inner_term("ipvae", temp=0.5)
    u, u0 = state.components[0], prior.components[0]
    torch.testing.assert_close(delta, 0.7 * (u - u0), rtol=1e-12, atol=1e-12)
    u_var = u.clone().requires_grad_(True)
    r, r0 = torch.exp(u_var), torch.exp(u0)
    kl_exact = r * (u_var - u0) - r + r0  # KL(Pois(r) || Pois(r0)), written out
    (d_kl,) = torch.autograd.grad(kl_exact.sum(), u_var)
    torch.testing.assert_close(delta, 0.7 * d_kl / torch.exp(u), rtol=1e-10, atol=1e-10)
    # ... and it is NOT the gradient of the reference KL form (which the outer loss uses).
    u_var2 = u.clone().requires_grad_(True)
    (d_ref,) = torch.autograd.grad(P.poisson_kl(u_var2, u0, reference=True).sum(), u_var2)
    assert (delta - 0.7 * d_ref / torch.exp(u)).abs().max() > 1e-2


@pytest.mark.parametrize("temp", [1.0, 0.5, 2.0])
def test_gaussian_inner_kl_terms_against_autograd_of_gaussian_kl(temp: float):
    (d_mu, d_xi), state, prior = _inner_term("igvae", temp)
    (mu, xi), (mu0, xi0) = state.components, prior.components
    sigma2 = torch.exp(2 * xi)
    mu_v, xi_v = mu.clone().requires_grad_(True), xi.clone().requires_grad_(True)
    kl = G.gaussian_kl(mu_v, xi_v, mu0, xi0, temp)
    dkl_dmu, dkl_dxi = torch.autograd.grad(kl.sum(), (mu_v, xi_v))
    # also against an independent KL: torch.distributions with both sigmas scaled by tau
    mu_w, xi_w = mu.clone().requires_grad_(True), xi.clone().requires_grad_(True)
    kl_t = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu_w, temp * torch.exp(xi_w)),
        torch.distributions.Normal(mu0, temp * torch.exp(xi0)))
    t_mu, t_xi = torch.autograd.grad(kl_t.sum(), (mu_w, xi_w))
    torch.testing.assert_close(dkl_dmu, t_mu, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(dkl_dxi, t_xi, rtol=1e-10, atol=1e-10)
    beta = 0.7
    # xi: beta * dKL_tau/dxi = beta (exp(2 (xi - xi0)) - 1) for every tau, times F_xi^-1 = 1/2.
    torch.testing.assert_close(d_xi, 0.5 * beta * dkl_dxi, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(dkl_dxi, torch.exp(2 * (xi - xi0)) - 1, rtol=1e-10, atol=1e-10)
    # mu: beta * tau^2 dKL_tau/dmu before the scaling by sigma^2, i.e. the natural gradient
    # F_mu^{-1} dKL_tau/dmu with F_mu = 1 / (tau sigma)^2.
    torch.testing.assert_close(d_mu / sigma2, beta * temp**2 * dkl_dmu, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(d_mu, beta * (temp**2 * sigma2) * dkl_dmu, rtol=1e-10,
                               atol=1e-10)
    if temp != 1.0:  # the plain gradient is off by tau^2
        assert (d_mu / sigma2 - beta * dkl_dmu).abs().max() > 1e-3


@pytest.mark.parametrize("temp", [1.0, 0.5])
def test_gaussian_recon_terms_are_reparameterisation_gradients(temp: float):
    """With z = mu + tau sigma e and L(z) the recon loss: g_mu = dL/dmu, g_xi = dL/dxi / tau
    (before the natural-gradient scaling; the reference drops tau in g_xi)."""
    model = make_model("igrelu")  # n_iters_inner = 1: no KL terms
    x, gen = _inputs(4)
    state, _, z = _state_and_sample(model, temp, gen)
    mu, xi = state.components
    noise = (z - mu) / (temp * torch.exp(xi))
    mu_v, xi_v = mu.clone().requires_grad_(True), xi.clone().requires_grad_(True)
    z_v = mu_v + temp * torch.exp(xi_v) * noise
    a = torch.relu(z_v) * torch.exp(model.log_gain.detach()[0])
    sigma = torch.exp(3.45 * torch.tanh(model.dec_log_sigma.detach()[0] / 3.45))
    loss = 0.5 * (((x - a @ model.W.detach()[0].T) / sigma) ** 2).sum()
    dl_dmu, dl_dxi = torch.autograd.grad(loss, (mu_v, xi_v))
    with torch.no_grad():
        g_mu, g_xi = model.free_energy_grad(x, state, z, temp)
    sigma2 = torch.exp(2 * xi)
    bias = torch.exp(model.log_bias.detach()[0])
    torch.testing.assert_close(g_mu, dl_dmu * sigma2 + bias, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(g_xi, 0.5 * dl_dxi / temp, rtol=1e-10, atol=1e-10)


def test_poisson_grad_is_recon_grad_plus_leak():
    model = make_model("ipvae")
    x, gen = _inputs(5)
    state, prior, z = _state_and_sample(model, 0.5, gen)
    with torch.no_grad():
        (g,) = model.free_energy_grad(x, state, z, 0.5, prior)
        expected = model.recon_grad(x, z) + torch.exp(model.log_bias)[:, None]
    torch.testing.assert_close(g, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("preset", PRESETS)
def test_decode_and_activation(preset: str):
    model = make_model(preset)
    gen = torch.Generator().manual_seed(6)
    z = torch.randn(1, B, K, generator=gen, dtype=torch.float64)
    z[0, 0, 0] = 0.0
    p = _params(model)
    a_np, da_np = np_activation(p, preset, z[0].numpy())
    with torch.no_grad():
        a = model.activation(z)
        deriv = model.activation_derivative(z)
        x_hat = model.decode(z)
    np.testing.assert_allclose(a[0].numpy(), a_np, rtol=1e-14)
    np.testing.assert_allclose(x_hat[0].numpy(), a_np @ p["W"].T, rtol=1e-12, atol=1e-12)
    assert x_hat.shape == (1, B, M)
    if preset == "igrelu":
        assert float(a[0, 0, 0]) == 0.0 and float(deriv[0, 0, 0]) == 0.0
        assert torch.all(a[z < 0] == 0)
        np.testing.assert_allclose(deriv[0].numpy(), da_np, rtol=1e-14)
        # a'(z) is the autograd derivative of a(z) away from 0
        z_v = z.clone().requires_grad_(True)
        (auto,) = torch.autograd.grad(model.activation(z_v).sum(), z_v)
        torch.testing.assert_close(auto[z != 0], deriv[z != 0], rtol=1e-14, atol=1e-14)
        gains = torch.exp(model.log_gain.detach()[0])
        assert not torch.allclose(gains, torch.ones_like(gains))
    else:
        assert deriv is None  # identity: a'(z) = 1
        torch.testing.assert_close(a, z, rtol=0, atol=0)


def test_dec_log_sigma_effective_is_squashed():
    model = make_model("igvae")
    with torch.no_grad():
        model.dec_log_sigma.copy_(torch.linspace(-20, 20, M, dtype=torch.float64)[None])
    eff = model.dec_log_sigma_effective()[0].detach().numpy()
    np.testing.assert_allclose(eff, 3.45 * np.tanh(np.linspace(-20, 20, M) / 3.45), rtol=1e-14)
    assert np.all(np.abs(eff) < 3.45)


@pytest.mark.parametrize("transpose", [False, True])
def test_dictionary_product_one_member_equals_the_batched_product(transpose: bool):
    """P = 1 multiplies 2-D matrices, P > 1 batches: both give a @ W (a @ W^T) and the same
    gradients, and the one-member form hands W its gradient in W's own layout."""
    from fondtrain.model.vae import dictionary_product

    gen = torch.Generator().manual_seed(3)
    W = torch.randn(1, M, K, generator=gen, dtype=torch.float64, requires_grad=True)
    a = torch.randn(1, B, M if not transpose else K, generator=gen, dtype=torch.float64,
                    requires_grad=True)
    g = torch.randn(1, B, K if not transpose else M, generator=gen, dtype=torch.float64)
    batched = a @ (W.transpose(-1, -2) if transpose else W)
    grads_batched = torch.autograd.grad(batched, (a, W), g)
    out = dictionary_product(a, W, transpose, two_d=True)
    grads = torch.autograd.grad(out, (a, W), g)
    torch.testing.assert_close(out, batched, rtol=1e-12, atol=1e-12)
    for ours, theirs in zip(grads, grads_batched, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    assert grads[1].is_contiguous()
    assert torch.equal(dictionary_product(a, W, transpose), batched)  # the batched form itself
