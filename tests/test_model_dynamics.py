"""Inference dynamics: seeding, step/infer shapes, initial state, TBPTT re-attachment and the
relaxed-Poisson sampler lengths (n_exp) with their persistence.

The models are populations of one (P = 1): every state and output has a leading member
axis of size 1, and the samplers draw from a list of one generator per member."""

from __future__ import annotations

import pytest
import torch

from fondtrain.model import inference
from fondtrain.model import poisson as P
from fondtrain.model.n_exp import n_exp_for_rate
from fondtrain.model.vae import IterativeVAE, State
from tests.test_model_gradients import PRESETS, B, K, M, make_model

TEMPS = {"ipvae": 0.5, "igvae": 1.0, "igrelu": 1.0}


def _x(seed: int = 11) -> torch.Tensor:
    return torch.randn(B, M, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _gens(seed: int) -> list[torch.Generator]:
    """The generators of a population of one: one, seeded."""
    return [torch.Generator().manual_seed(seed)]


# ----------------------------------------------------------------------------- seeding
@pytest.mark.parametrize("preset,temp", [("ipvae", 0.5), ("ipvae", 0.0), ("igvae", 1.0),
                                         ("igrelu", 1.0)])
def test_infer_is_reproducible_with_a_seeded_generator(preset: str, temp: float):
    model = make_model(preset)
    x = _x()

    def run(seed: int):
        return inference.run(model, x, n_steps=5, temp=temp, eps=0.5, beta=1.0,
                             generators=_gens(seed))

    a, b, c = run(3), run(3), run(4)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert not torch.equal(a["z"], c["z"])
    assert not torch.equal(a["state"], c["state"])
    assert torch.isfinite(a["loss"]).all()


# ----------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("n_inner", [1, 2])
def test_step_output_shapes_and_consistency(preset: str, n_inner: int):
    model = make_model(preset, n_iters_inner=n_inner)
    n_comp = model.config.n_components
    x = _x()
    temp, beta, eps = TEMPS[preset], 3.0, 0.5
    state = model.init_state(B)
    out = model.step(x, state, temp, beta, eps, t=1, generators=_gens(0))
    assert len(out.state.components) == n_comp
    assert all(c.shape == (1, B, K) for c in out.state.components)
    assert out.z.shape == (1, B, K) and out.x_hat.shape == (1, B, M)
    assert out.recon.shape == (1, B) and out.kl.shape == (1, B, K) and out.loss.shape == (1,)
    assert len(out.grad_samples) == n_inner
    assert all(z.shape == (1, B, K) for z in out.grad_samples)
    with torch.no_grad():
        torch.testing.assert_close(out.x_hat, model.decode(out.z))
        sigma = torch.exp(model.dec_log_sigma_effective()).unsqueeze(-2)
        nll = -torch.distributions.Normal(out.x_hat, sigma).log_prob(x).sum(-1)
        torch.testing.assert_close(out.recon, nll)
        torch.testing.assert_close(out.kl, model.kl(out.state, state, temp))
        expected_loss = (out.recon + beta * out.kl.sum(-1)).mean(-1) * 256 / M
        torch.testing.assert_close(out.loss, expected_loss)
    # The loss is differentiable w.r.t. every parameter.
    out.loss.sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("n_inner", [1, 2])
def test_step_replays_given_noise_and_chains_inner_updates(preset: str, n_inner: int):
    """A step driven by explicit noise equals the same step drawing it from the generator,
    and equals the chain of `update` calls against the step's prior."""
    model = make_model(preset, n_iters_inner=n_inner)
    x = _x()
    temp, eps = TEMPS[preset], 0.7
    state = model.init_state(B)
    drawn = model.step(x, state, temp, 1.0, eps, t=2, generators=_gens(5))
    gens = _gens(5)
    noise, current = [], state
    with torch.no_grad():
        for n in range(n_inner):
            noise.append(model.draw_noise(current, temp, 2, gens))
            z = model.sample(current, temp, noise[-1], t=2)
            torch.testing.assert_close(z, drawn.grad_samples[n])
            current = model.update(x, current, z, eps, temp, prior=state)
        noise.append(model.draw_noise(current, temp, 2, gens))
    for a, b in zip(current.components, drawn.state.components, strict=True):
        torch.testing.assert_close(a, b.detach())
    replay = model.step(x, state, temp, 1.0, eps, t=2, noise=tuple(noise))
    torch.testing.assert_close(replay.z, drawn.z, rtol=0, atol=0)
    torch.testing.assert_close(replay.loss, drawn.loss, rtol=0, atol=0)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("n_inner", [1, 2])
def test_infer_trace_shapes(preset: str, n_inner: int):
    model = make_model(preset, n_iters_inner=n_inner)
    c = model.config.n_components
    x = _x()
    traces = inference.run(model, x, n_steps=5, temp=TEMPS[preset], record=range(2, 6, 2),
                           generators=_gens(1))
    assert traces["steps"].tolist() == [2, 4, 5]
    t = 3
    assert traces["z"].shape == (t, 1, B, K)
    assert traces["x_hat"].shape == (t, 1, B, M)
    assert traces["recon"].shape == (t, 1, B)
    assert traces["kl"].shape == (t, 1, B, K)
    assert traces["loss"].shape == (t, 1)
    assert traces["state"].shape == (t, c, 1, B, K)
    assert not any(v.requires_grad for v in traces.values())
    full = inference.run(model, x, n_steps=5, temp=TEMPS[preset], generators=_gens(1))
    assert full["steps"].tolist() == [1, 2, 3, 4, 5]
    torch.testing.assert_close(full["state"][[1, 3, 4]], traces["state"], rtol=0, atol=0)


def test_infer_with_feeder_uses_input_of_each_step():
    model = make_model("igvae")
    xs = torch.stack([_x(s) for s in range(4)])
    fed = inference.run(model, xs[0], n_steps=4, temp=1.0, feeder=xs, generators=_gens(2))
    still = inference.run(model, xs[0], n_steps=4, temp=1.0, generators=_gens(2))
    torch.testing.assert_close(fed["state"][0], still["state"][0], rtol=0, atol=0)
    assert not torch.equal(fed["state"][1], still["state"][1])


# ----------------------------------------------------------------------------- initial state
@pytest.mark.parametrize("preset", PRESETS)
def test_init_state_broadcasts_u_init(preset: str):
    model = make_model(preset)
    state = model.init_state(B)
    assert isinstance(state, State) and state.batch_size == B
    assert len(state.components) == model.config.n_components
    for c, comp in enumerate(state.components):
        assert comp.shape == (1, B, K)
        for b in range(B):
            torch.testing.assert_close(comp[0, b], model.u_init[0, c].detach(), rtol=0, atol=0)
    weights = torch.randn(1, B, K, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sum((weights * comp).sum() for comp in state.components).backward()
    for c in range(model.config.n_components):
        torch.testing.assert_close(model.u_init.grad[0, c], weights[0].sum(0))
    assert model.W.grad is None


@pytest.mark.parametrize("preset", PRESETS)
def test_reattach_to_init_keeps_values_and_cuts_the_graph(preset: str):
    model = make_model(preset)
    x = _x()
    state = model.init_state(B)
    for t in range(2):
        state = model.step(x, state, TEMPS[preset], 1.0, 1.0, t, generators=_gens(t)).state
    weights = torch.randn(1, B, K, generator=torch.Generator().manual_seed(9), dtype=torch.float64)

    # Without re-attachment the gradient reaches W and u_init through the whole graph.
    sum((weights * c).sum() for c in state.components).backward(retain_graph=True)
    assert model.W.grad is not None and model.W.grad.abs().max() > 0
    through_graph = model.u_init.grad.clone()
    model.zero_grad(set_to_none=True)

    again = model.reattach_to_init(state)
    for a, b in zip(again.components, state.components, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    sum((weights * c).sum() for c in again.components).backward()
    for name, param in model.named_parameters():
        if name != "u_init":
            assert param.grad is None, f"gradient leaked into {name} through the old graph"
    expected = torch.stack([weights[0].sum(0)] * model.config.n_components)[None]
    torch.testing.assert_close(model.u_init.grad, expected)
    assert not torch.allclose(through_graph, expected)


def test_state_detach():
    model = make_model("igvae")
    state = model.step(_x(), model.init_state(B), 1.0, 1.0, generators=_gens(0)).state
    assert all(c.requires_grad for c in state.components)
    detached = state.detach()
    assert not any(c.requires_grad for c in detached.components)
    for a, b in zip(detached.components, state.components, strict=True):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------- n_exp
RATES = [0.05, 0.5, 2.0, 8.0, 20.0]


def test_set_n_exp_from_rates_and_noise_lengths():
    model = make_model("ipvae", t_train=5)
    assert model.n_exp.tolist() == [[10] * 5]  # the reference's start value (rate 3)
    assert model.n_exp.dtype == torch.int32
    model.set_n_exp([RATES])  # [P, t_total]
    expected = [n_exp_for_rate(r, 1e-3) for r in RATES]
    assert expected == [2, 4, 8, 18, 35]  # Poisson (1 - 1e-3) quantiles
    assert model.n_exp.tolist() == [expected]
    assert [model.n_exp_at(t) for t in range(5)] == [[n] for n in expected]
    state = model.init_state(B)
    for t in range(5):
        noise = model.draw_noise(state, 0.5, t, _gens(t))
        assert noise.shape == (expected[t], 1, B, K)
    assert model.draw_noise(state, 0.0, 0) is None  # exact sampler at temperature 0
    # a tensor of rates works too
    model.set_n_exp(torch.tensor([RATES[::-1]]))
    assert model.n_exp.tolist() == [expected[::-1]]
    assert [model.n_exp_at(t) for t in range(5)] == [[n] for n in expected[::-1]]
    with pytest.raises(ValueError):
        model.set_n_exp([RATES[:3]])


def test_n_exp_beyond_t_total_follows_the_batch_rate():
    model = make_model("ipvae", t_train=3)
    state = State((torch.full((1, B, K), 0.0, dtype=torch.float64),))
    state.components[0][0, 0, 0] = torch.log(torch.tensor(20.0))
    assert model.n_exp_at(10, state) == [n_exp_for_rate(20.0 + P.FLOAT32_EPS, 1e-3)]
    assert model.n_exp_at(10) == model.n_exp_at(2)


def test_n_exp_survives_state_dict_round_trip():
    source = make_model("ipvae", t_train=5)
    source.set_n_exp([RATES])
    sd = source.state_dict()
    assert sd["n_exp"].tolist() == [[2, 4, 8, 18, 35]]
    target = IterativeVAE(source.config).double()
    assert target.n_exp_at(0) == [10]  # fills the host-side cache with the defaults
    target.load_state_dict(sd)
    assert target.n_exp.tolist() == [[2, 4, 8, 18, 35]]
    assert [target.n_exp_at(t) for t in range(5)] == [[2], [4], [8], [18], [35]]  # cache refreshed
    noise = target.draw_noise(target.init_state(B), 0.5, 4)
    assert noise.shape[0] == 35
    for name, value in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[name], value, rtol=0, atol=0)
    # a single model's layout (no member axis: what export writes) loads into P = 1 too
    single = source.member_state_dict(0)
    assert single["n_exp"].tolist() == [2, 4, 8, 18, 35] and single["W"].shape == (M, K)
    other = IterativeVAE(source.config).double()
    assert other.n_exp_at(0) == [10]
    other.load_state_dict(single)
    assert [other.n_exp_at(t) for t in range(5)] == [[2], [4], [8], [18], [35]]
    for name, value in source.state_dict().items():
        torch.testing.assert_close(other.state_dict()[name], value, rtol=0, atol=0)
