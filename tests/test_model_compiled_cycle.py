"""The compiled TBPTT window (model/compiled_cycle.py) and its graph sampler
(model/graph_sampler.py): fullgraph compiles on CPU, equals the eager trainer's cycle
given the same noise, and the in-graph sampler has the relaxed Poisson distribution.

Compiling dominates the run time, so sizes are tiny and each graph is built once.
"""

from __future__ import annotations

import math

import pytest
import torch

from fondtrain.config import ModelConfig
from fondtrain.model.compiled_cycle import CompiledCycle, n_exp_bucket
from fondtrain.model.graph_sampler import hashed_exponential, hashed_normal, relaxed_poisson_graph
from fondtrain.model.n_exp import n_exp_for_rate
from fondtrain.model.poisson import relaxed_poisson
from fondtrain.model.vae import IterativeVAE

# Schedule values of successive batches: every one differs, none may recompile.
SCHEDULES = [dict(lr=5e-3, beta=1.0, eps=0.3, temp=0.7, max_norm=900.0),
             dict(lr=4e-3, beta=8.0, eps=1.0, temp=0.2, max_norm=1.5)]  # the second clips


# ----------------------------------------------------------------------------- sampler
def _check_mean(sample: torch.Tensor, expected: float, relative: float = 0.0) -> None:
    sample = sample.double()
    se = float(sample.std()) / math.sqrt(sample.numel())
    bound = 5 * se + relative * abs(expected)
    assert abs(float(sample.mean()) - expected) < bound, (float(sample.mean()), expected, se)


@pytest.mark.parametrize("temp", [0.05, 0.5])
def test_graph_sampler_equals_eager_sampler_given_noise(temp: float):
    """Value and pathwise gradient equal distributions.relaxed_poisson's on the first n_exp
    arrivals; the n_max - n_exp masked arrivals add nothing."""
    gen = torch.Generator().manual_seed(3)
    u = (torch.randn(30, 40, generator=gen, dtype=torch.float64) - 1.0).requires_grad_()
    n_exp, n_max = 7, 10
    noise = torch.empty(n_max, 30, 40, dtype=torch.float64).exponential_(generator=gen)
    z_eager = relaxed_poisson(u, temp, noise[:n_exp])
    (g_eager,) = torch.autograd.grad(z_eager.sum(), u)
    z = relaxed_poisson_graph(u, torch.tensor(temp, dtype=torch.float64), n_max,
                              torch.tensor(n_exp), noise)
    (g,) = torch.autograd.grad(z.sum(), u)
    torch.testing.assert_close(z, z_eager, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g, g_eager, rtol=1e-12, atol=1e-12)


def test_hashed_normal_is_standard():
    """Box-Muller on the hashed uniforms: N(0, 1) mean, variance, kurtosis, and the
    fraction beyond 2 sigma."""
    e = hashed_normal(torch.zeros(500, 400), torch.tensor([3, 5]), 7).double().flatten()
    n = e.numel()
    assert abs(float(e.mean())) < 5 / math.sqrt(n)
    assert abs(float(e.var()) - 1.0) < 5 * math.sqrt(2 / n)
    assert abs(float((e**4).mean()) - 3.0) < 5 * math.sqrt(96 / n)
    tail = 2 * (1 - 0.5 * (1 + math.erf(2 / math.sqrt(2))))
    assert abs(float((e.abs() > 2).double().mean()) - tail) < 5 * math.sqrt(tail / n)


def test_hashed_exponential_is_standard_and_independent():
    """The hashed draws: Exp(1) moments, the cell-midpoint uniforms of the eager CPU
    sampler, and no correlation between neighbouring elements, draws or keys."""
    u = torch.zeros(500, 400)
    keys = torch.tensor([12345, 678910])
    e = hashed_exponential(u, keys, 0).double()
    n = e.numel()
    assert abs(float(e.mean()) - 1.0) < 5 / math.sqrt(n)
    assert abs(float(e.var()) - 1.0) < 5 * math.sqrt(8 / n)
    uniform = torch.exp(-e) * 2**23 - 0.5  # integer cell indices m
    assert torch.allclose(uniform, uniform.round(), atol=1e-3)
    others = (hashed_exponential(u, keys, 1), hashed_exponential(u, keys + 1, 0),
              e.flatten().roll(1).view_as(u))
    for other in others:
        corr = float(torch.corrcoef(torch.stack([e.flatten(), other.double().flatten()]))[0, 1])
        assert abs(corr) < 5 / math.sqrt(n), corr


@pytest.fixture(scope="module")
def compiled_sampler():
    """The sampler drawing its arrivals inside one compiled graph, float32, 32 arrivals,
    hashed draws with fresh keys per call (the CPU training path)."""
    graph = torch.compile(lambda u, temp, n_exp, keys: relaxed_poisson_graph(
        u, temp, 32, n_exp, keys=keys), fullgraph=True, dynamic=False)
    return lambda u, temp, n_exp: graph(u, temp, n_exp, torch.randint(2**31, (2,)))


def test_rand_like_sampler_mean():
    """The device-generator path (GPUs), eager here: Campbell's mean at tau 0.5."""
    torch.manual_seed(2)
    u = torch.full((200, 300), math.log(0.5))
    z = relaxed_poisson_graph(u, 0.5, n_exp_for_rate(0.5, 1e-9))
    _check_mean(z, 0.5 * 0.5 * math.log1p(math.exp(2.0)))


@pytest.mark.parametrize("rate", [0.05, 1.0, 3.0])
def test_compiled_sampler_low_temperature_is_poisson(compiled_sampler, rate: float):
    """At tau = 0.01, n_exp the 1e-3 quantile: mean r and variance r (1 - tau) (Campbell,
    as for the eager sampler), drawn inside the graph."""
    temp, n_exp = 0.01, n_exp_for_rate(rate, 1e-3)
    torch.manual_seed(int(rate * 100))
    u = torch.full((200, 600), math.log(rate))
    z = compiled_sampler(u, torch.tensor(temp), torch.tensor(n_exp)).double().flatten()
    assert float(z.min()) >= 0 and float(z.max()) <= n_exp
    n = z.numel()
    assert abs(float(z.mean()) - rate) < 5 * math.sqrt(rate / n)
    assert abs(float(z.var()) - rate * (1 - temp)) < 5 * math.sqrt((rate + 2 * rate * rate) / n)


@pytest.mark.parametrize("rate", [0.02, 0.5, 3.0])
@pytest.mark.parametrize("temp", [0.05, 0.5])
def test_compiled_sampler_mean_and_pathwise_gradient(compiled_sampler, rate: float, temp: float):
    """E z = r tau log(1 + e^{1/tau}) (Campbell, untruncated: n_exp at the 1e-9 quantile,
    <= 32) and E dz/du = d E z / du = E z (r = e^u), the gradient through the graph."""
    n_exp = n_exp_for_rate(rate, 1e-9)
    assert n_exp <= 32
    torch.manual_seed(int(rate * 1000 + temp * 10))
    u = torch.full((400, 500), math.log(rate), requires_grad=True)
    z = compiled_sampler(u, torch.tensor(temp), torch.tensor(n_exp))
    (grad,) = torch.autograd.grad(z.sum(), u)
    expected = rate * temp * math.log1p(math.exp(1.0 / temp))
    _check_mean(z.detach(), expected)
    # The gradient allows 0.5% more: at rate 3, tau 0.5 the eager sampler
    # (distributions.relaxed_poisson, float32 or float64) shows the same ~0.3% deficit
    # of the mean pathwise gradient at this sample size, 3-4 standard errors.
    _check_mean(grad, expected, relative=5e-3)


# ----------------------------------------------------------------------------- cycle
def _model(preset: str, **overrides) -> IterativeVAE:
    config = ModelConfig(preset=preset, input_dim=12, n_latents=8, t_train=2, n_iters_outer=2,
                         init_scale=0.3, seed=11, **overrides)
    model = IterativeVAE(config)
    if model.is_poisson:  # a different n_exp at each step, all below the graph's bucket
        model.set_n_exp([0.3, 1.5, 0.05, 2.5])
    return model


def _adamax(model: IterativeVAE) -> torch.optim.Adamax:
    return torch.optim.Adamax(model.parameters(), lr=1.0, betas=(0.9, 0.999), eps=1e-8,
                              weight_decay=3e-4)


def _noise(model: IterativeVAE, micro_batch: int, grad_accum: int, gen: torch.Generator):
    """Standard noise per window and micro-batch, in the compiled cycle's layout."""
    cfg = model.config
    k, samples = cfg.n_latents, cfg.n_iters_inner + 1
    if model.is_poisson:
        n_max = n_exp_bucket(max(model.n_exp_at(t) for t in range(cfg.t_total)))
        shape = (cfg.t_train, samples, n_max, micro_batch, k)
        return [[torch.empty(shape).exponential_(generator=gen) for _ in range(grad_accum)]
                for _ in range(cfg.n_iters_outer)]
    shape = (cfg.t_train, samples, micro_batch, k)
    return [[torch.randn(shape, generator=gen) for _ in range(grad_accum)]
            for _ in range(cfg.n_iters_outer)]


def _eager_batch(model, optimizer, inputs, grad_accum, values, noise):
    """The eager trainer's batch (train/loop.py): windows of micro-batches, one backward
    per micro-batch, clip_grad_norm_ and Adamax per window. Returns the step losses and
    grad norms of every window."""
    cfg = model.config
    for group in optimizer.param_groups:
        group["lr"] = values["lr"]
    micro_inputs = inputs.chunk(grad_accum, dim=-2)
    states = [model.init_state(mi.shape[-2]) for mi in micro_inputs]
    losses, norms = [], []
    for outer in range(cfg.n_iters_outer):
        t0 = outer * cfg.t_train
        for j, mi in enumerate(micro_inputs):
            window = mi if mi.dim() == 2 else mi[t0:t0 + cfg.t_train]
            w = noise[outer][j]
            step_noise = [tuple(w[i, n, :model.n_exp_at(t0 + i)] if model.is_poisson else w[i, n]
                                for n in range(cfg.n_iters_inner + 1)) for i in range(cfg.t_train)]
            out = model(window, states[j], t0, cfg.t_train, values["temp"], values["beta"],
                        values["eps"], noise=step_noise)
            (out.loss / grad_accum).backward()
            states[j] = model.reattach_to_init(out.state)
            losses.append(out.step_losses)
        norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), values["max_norm"]))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return losses, norms


def _assert_same_training(eager_model, eager_opt, model, optimizer):
    for (name, p_eager), p in zip(eager_model.named_parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(p, p_eager, rtol=1e-4, atol=1e-5, msg=name)
        s_eager, s = eager_opt.state[p_eager], optimizer.state[p]
        assert float(s["step"]) == float(s_eager["step"])
        torch.testing.assert_close(s["exp_avg"], s_eager["exp_avg"], rtol=1e-4, atol=1e-6, msg=name)
        torch.testing.assert_close(s["exp_inf"], s_eager["exp_inf"], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("preset, sequence", [("ipvae", False), ("igvae", False), ("igrelu", True)])
def test_compiled_cycle_equals_eager_cycle(preset: str, sequence: bool):
    """n_iters_outer 2, grad_accum 2, two batches (4 optimiser steps) with changing
    schedules, the same noise: parameters, Adamax state, losses and norms of the compiled
    cycle equal the eager trainer's. Tolerance: float32 rounding of reordered sums
    (fused kernels, blocked arrival sums) compounded over the steps: rtol 1e-4."""
    grad_accum, micro = 2, 3
    eager_model, model = _model(preset), _model(preset)
    eager_opt, optimizer = _adamax(eager_model), _adamax(model)
    cycle = CompiledCycle(model, optimizer, grad_accum=grad_accum)
    gen = torch.Generator().manual_seed(5)
    shape = (model.config.t_total, grad_accum * micro, 12) if sequence else (grad_accum * micro, 12)
    inputs = torch.randn(shape, generator=gen)
    for b, values in enumerate(SCHEDULES):
        noise = _noise(model, micro, grad_accum, gen)
        losses, norms = _eager_batch(eager_model, eager_opt, inputs, grad_accum, values, noise)
        result = cycle.train_batch(inputs, noise=noise, **values)
        assert result is not None
        assert (result.compile_s > 0) == (b == 0)  # one graph serves both windows and batches
        torch.testing.assert_close(result.out.step_losses, losses[-1], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(result.grad_norm, norms[-1], rtol=1e-4, atol=1e-5)
        _assert_same_training(eager_model, eager_opt, model, optimizer)
    assert float(norms[-1]) > SCHEDULES[1]["max_norm"]  # the clip was active
    assert len(cycle._graphs) == 1


@pytest.fixture(scope="module")
def drawing_cycle():
    """An ipvae cycle drawing its noise inside the graph (the training path)."""
    model = _model("ipvae")
    optimizer = _adamax(model)
    return model, optimizer, CompiledCycle(model, optimizer, grad_accum=2)


def test_in_graph_noise_trains_without_recompiling(drawing_cycle):
    """The training path compiles with fullgraph, draws fresh noise every call, and
    schedule changes and an n_exp refresh within the bucket reuse the graph."""
    from torch._dynamo.utils import counters

    model, optimizer, cycle = drawing_cycle
    torch.manual_seed(0)
    inputs = torch.randn(6, 12)
    first = cycle.train_batch(inputs, **SCHEDULES[0])
    graphs = counters["stats"]["unique_graphs"]
    before = [p.detach().clone() for p in model.parameters()]
    second = cycle.train_batch(inputs, **SCHEDULES[1])
    model.set_n_exp([0.05, 0.3, 2.5, 1.5])  # other n_exp (2, 3, 9, 6), same bucket (10)
    third = cycle.train_batch(inputs, **SCHEDULES[0])
    assert counters["stats"]["unique_graphs"] == graphs
    assert first.compile_s > 0 and second.compile_s == third.compile_s == 0.0
    assert not torch.equal(second.out.last_z, third.out.last_z)  # fresh draws
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    assert torch.isfinite(third.max_rates).all() and third.max_rates.shape == (4,)
    assert float(optimizer.state[model.W]["step"]) == 6.0


def test_replay_from_saved_state_is_bit_exact(drawing_cycle):
    """Resume equals uninterrupted: the in-graph noise comes from torch's generator, so
    restoring the model, the optimiser state and the RNG state (what a checkpoint holds)
    replays a batch bit for bit, and a restored optimiser (new state tensors) reuses the
    graph."""
    import copy

    from torch._dynamo.utils import counters

    model, optimizer, cycle = drawing_cycle
    inputs = torch.randn(6, 12)
    cycle.train_batch(inputs, **SCHEDULES[0])  # compiled (shared fixture: maybe already)
    saved = (copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()),
             torch.get_rng_state())
    first = cycle.train_batch(inputs, **SCHEDULES[1])
    after = [p.detach().clone() for p in model.parameters()]
    graphs = counters["stats"]["unique_graphs"]
    model.load_state_dict(saved[0])
    optimizer.load_state_dict(saved[1])
    torch.set_rng_state(saved[2])
    again = cycle.train_batch(inputs, **SCHEDULES[1])
    assert counters["stats"]["unique_graphs"] == graphs
    assert torch.equal(first.out.last_z, again.out.last_z)
    for a, p in zip(after, model.parameters(), strict=True):
        assert torch.equal(a, p)


def test_compile_failure_warns_once_and_leaves_the_model_untouched():
    """A real compiler error (an option inductor does not know) gives one warning and None,
    so that the trainer runs its eager cycle; nothing was changed."""
    model = _model("igvae")
    optimizer = _adamax(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cycle = CompiledCycle(model, optimizer, grad_accum=1, options={"no_such_inductor_option": True})
    with pytest.warns(RuntimeWarning, match="compiling the training cycle failed.*eager cycle"):
        assert cycle.train_batch(torch.randn(4, 12), **SCHEDULES[0]) is None
    assert cycle.train_batch(torch.randn(4, 12), **SCHEDULES[0]) is None  # no second warning
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_unsupported_optimizer_is_refused():
    model = _model("igvae")
    with pytest.raises(ValueError, match="Adamax"):
        CompiledCycle(model, torch.optim.SGD(model.parameters(), lr=0.1), grad_accum=1)


@pytest.mark.parametrize("n_exp, bucket", [(1, 4), (4, 4), (11, 12), (129, 160), (300, 320)])
def test_n_exp_bucket(n_exp: int, bucket: int):
    assert n_exp_bucket(n_exp) == bucket
