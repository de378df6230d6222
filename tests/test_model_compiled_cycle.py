"""The compiled TBPTT cycle (model/cycle.py) and the graph form of the samplers: fullgraph
compiles on CPU, a batch trained through the compiled cycle equals the same batch trained
eagerly (`train_batch`, the one function, given the same noise), and the in-graph sampler
has the relaxed Poisson distribution.

Compiling dominates the run time, so sizes are tiny.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from fondtrain.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from fondtrain.config.schedules import ScheduleValues
from fondtrain.model.n_exp import n_exp_bucket, n_exp_for_rate
from fondtrain.model.random_streams import hashed_exponential, hashed_normal
from fondtrain.model.relaxed_poisson import _graph_sample
from fondtrain.model.vae import IterativeVAE
from fondtrain.train.batch import train_batch
from fondtrain.train.optim import MemberAdamax

GRAD_ACCUM, MICRO, M = 2, 3, 16  # M: a 4 x 4 patch, so that the jitter feeder can move it


def _values(p: int, lr: float, beta: float, eps: float, temp: float, max_norm: float) -> ScheduleValues:
    """Schedule values of every member; members differ a little (their own schedules)."""
    def column(v):
        return torch.tensor([v * (1.0 + 0.1 * i) for i in range(p)], dtype=torch.float64)

    return ScheduleValues(lr=column(lr), beta=column(beta), eps=column(eps).clamp(max=1.0), temp=column(temp),
                          max_norm=column(max_norm), warming_up=torch.zeros(p, dtype=torch.bool))


# Schedule values of successive batches: every one differs, none may recompile; the second clips.
SCHEDULES = [dict(lr=5e-3, beta=1.0, eps=0.3, temp=0.7, max_norm=900.0),
             dict(lr=4e-3, beta=8.0, eps=1.0, temp=0.2, max_norm=1.5)]


# ----------------------------------------------------------------------------- sampler
def _check_mean(sample: torch.Tensor, expected: float, relative: float = 0.0) -> None:
    sample = sample.double()
    se = float(sample.std()) / math.sqrt(sample.numel())
    bound = 5 * se + relative * abs(expected)
    assert abs(float(sample.mean()) - expected) < bound, (float(sample.mean()), expected, se)


def test_hashed_normal_is_standard():
    """Box-Muller on the hashed uniforms: N(0, 1) mean, variance, kurtosis, and the
    fraction beyond 2 sigma."""
    e = hashed_normal(torch.zeros(1, 500, 400), torch.tensor([[3, 5]]), 7).double().flatten()
    n = e.numel()
    assert abs(float(e.mean())) < 5 / math.sqrt(n)
    assert abs(float(e.var()) - 1.0) < 5 * math.sqrt(2 / n)
    assert abs(float((e**4).mean()) - 3.0) < 5 * math.sqrt(96 / n)
    tail = 2 * (1 - 0.5 * (1 + math.erf(2 / math.sqrt(2))))
    assert abs(float((e.abs() > 2).double().mean()) - tail) < 5 * math.sqrt(tail / n)


def test_hashed_exponential_is_standard_and_independent():
    """The hashed draws: Exp(1) moments, the cell-midpoint uniforms of the eager CPU
    sampler, no correlation between neighbouring elements, draws or keys, and each
    member's draws are its own keys' whatever the other members (a member of a population
    draws what it draws alone)."""
    u = torch.zeros(1, 500, 400)
    keys = torch.tensor([[12345, 678910]])
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
    three = hashed_exponential(torch.zeros(3, 500, 400), torch.tensor([[1, 2], [12345, 678910], [3, 4]]), 0)
    assert torch.equal(three[1:2], e.float())


@pytest.fixture(scope="module")
def compiled_sampler():
    """The sampler drawing its arrivals inside one compiled graph, float32, 32 arrivals,
    hashed draws with fresh keys per call (the CPU training path), one member."""
    graph = torch.compile(lambda u, temp, n_exp, keys: _graph_sample(u, temp, n_exp, 32, None, keys, 0),
                          fullgraph=True, dynamic=False)
    return lambda u, temp, n_exp: graph(u[None], temp, n_exp.reshape(1), torch.randint(2**31, (1, 2)))[0]


def test_rand_like_sampler_mean():
    """The device-generator path (GPUs), eager here: Campbell's mean at tau 0.5."""
    torch.manual_seed(2)
    u = torch.full((1, 200, 300), math.log(0.5))
    n_exp = n_exp_for_rate(0.5, 1e-9)
    z = _graph_sample(u, 0.5, torch.tensor([n_exp]), n_exp, None, None, 0)
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
    # The gradient allows 0.5% more: at rate 3, tau 0.5 the eager sampler shows the same
    # ~0.3% deficit of the mean pathwise gradient at this sample size, 3-4 standard errors.
    _check_mean(grad, expected, relative=5e-3)


@pytest.mark.parametrize("n_exp, bucket", [(1, 4), (4, 4), (11, 12), (129, 160), (300, 320)])
def test_n_exp_bucket(n_exp: int, bucket: int):
    assert n_exp_bucket(n_exp) == bucket


# ----------------------------------------------------------------------------- the cycle
def _config(preset: str, n_members: int, sequence: bool) -> tuple[RunConfig, list[ModelConfig]]:
    model = ModelConfig(preset=preset, input_dim=M, n_latents=8, t_train=2, n_iters_outer=2,
                        init_scale=0.3, seed=11)
    members = [ModelConfig(**{**model.__dict__, "seed": 11 + i, "beta_outer": 2.0 + i}) for i in range(n_members)]
    config = RunConfig(model=model, data=DataConfig(feeder="jitter" if sequence else "stationary"),
                       train=TrainConfig(grad_accum=GRAD_ACCUM, batch_size=MICRO))
    return config, members


def _rates(n_members: int) -> torch.Tensor:
    """Largest rates [P, t_total] that make a different n_exp at each step and member."""
    return torch.tensor([[0.3, 1.5, 0.05, 2.5]]).repeat(n_members, 1) * torch.linspace(1.0, 1.5, n_members).view(-1, 1)


def _model(config: RunConfig, members: list[ModelConfig]) -> tuple[IterativeVAE, MemberAdamax]:
    model = IterativeVAE(config.model, members)
    if model.is_poisson:
        model.set_n_exp(_rates(len(members)))
    optimizer = MemberAdamax(model.parameters(), lr=[1.0] * len(members), eps=1e-8, weight_decay=3e-4)
    return model, optimizer


def _replay_noise(model: IterativeVAE, gen: torch.Generator):
    """noise(outer, j) for train_batch: every step's update and output sample noise of
    window `outer`, micro-batch j, drawn once per batch (the layout of `draw_noise`)."""
    cfg = model.config
    cache = {}

    def noise(outer: int, j: int):
        if (outer, j) not in cache:
            state = model.init_state(MICRO)
            cache[outer, j] = [tuple(model.draw_noise(state, 0.5, outer * cfg.t_train + i, [gen] * model.n_members)
                                     for _ in range(cfg.n_iters_inner + 1)) for i in range(cfg.t_train)]
        return cache[outer, j]

    return noise


def _inputs(config: RunConfig, gen: torch.Generator) -> torch.Tensor:
    from fondtrain.train.batch import make_inputs

    return make_inputs(config, torch.randn(GRAD_ACCUM * MICRO, M, generator=gen), seed=7)


@pytest.mark.slow
@pytest.mark.parametrize("n_members", [1, 3])
@pytest.mark.parametrize("preset, sequence", [("ipvae", False), ("igvae", False), ("igrelu", True)])
def test_compiled_batch_equals_eager_batch(preset: str, sequence: bool, n_members: int):
    """train_batch with n_iters_outer 2, grad_accum 2, two batches (4 optimiser steps per
    member) with changing schedules and the same noise: parameters, Adamax state, losses
    and norms through the compiled cycle equal the eager ones. Tolerance: float32 rounding
    of reordered sums (fused kernels, blocked arrival sums) compounded over the steps."""
    from accelerate import Accelerator

    torch._dynamo.reset()
    accelerator = Accelerator(cpu=True)
    config, members = _config(preset, n_members, sequence)
    (eager, eager_opt), (compiled, opt) = _model(config, members), _model(config, members)
    assert compiled.enable_compile()
    gen = torch.Generator().manual_seed(5)
    inputs = _inputs(config, gen)
    for b, schedule in enumerate(SCHEDULES):
        values = _values(n_members, **schedule)
        noise = _replay_noise(eager, gen)
        expected = train_batch(eager, eager, eager_opt, accelerator, inputs, values, config, noise)
        result = train_batch(compiled, compiled, opt, accelerator, inputs, values, config, noise)
        assert compiled.compiled_cycle is not None, "the compiled cycle ran without falling back"
        assert (result.compile_s > 0) == (b == 0)  # a graph per window, built in the first batch
        torch.testing.assert_close(result.out.step_losses, expected.out.step_losses, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(result.grad_norm, expected.grad_norm, rtol=1e-4, atol=1e-5)
        if result.max_rates is not None:
            torch.testing.assert_close(result.max_rates, expected.max_rates, rtol=1e-4, atol=1e-6)
        for (name, p_eager), p in zip(eager.named_parameters(), compiled.parameters(), strict=True):
            torch.testing.assert_close(p, p_eager, rtol=1e-4, atol=1e-5, msg=name)
            s_eager, s = eager_opt.state[p_eager], opt.state[p]
            assert float(s["step"]) == float(s_eager["step"]) == 2 * (b + 1)
            torch.testing.assert_close(s["exp_avg"], s_eager["exp_avg"], rtol=1e-4, atol=1e-6, msg=name)
            torch.testing.assert_close(s["exp_inf"], s_eager["exp_inf"], rtol=1e-4, atol=1e-6, msg=name)
    assert float(expected.grad_norm.max()) > SCHEDULES[1]["max_norm"]  # the clip was active


@pytest.mark.slow
def test_in_graph_noise_trains_without_recompiling_and_replays_from_the_generators():
    """The training path (draws inside the graph, keyed from the members' generators):
    fresh draws every call, schedule changes and an n_exp refresh within the bucket reuse
    the graphs, and the same generators and state replay a batch bit for bit (what a
    resumed run does: the trainer re-seeds every member's generator at each step)."""
    from accelerate import Accelerator
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    accelerator = Accelerator(cpu=True)
    config, members = _config("ipvae", 2, False)
    model, optimizer = _model(config, members)
    model.enable_compile()
    inputs = _inputs(config, torch.Generator().manual_seed(1))

    def batch(schedule: int, seed: int):
        model.generators = [torch.Generator().manual_seed(seed + i) for i in range(2)]
        return train_batch(model, model, optimizer, accelerator, inputs, _values(2, **SCHEDULES[schedule]), config)

    first = batch(0, 1)
    graphs = counters["stats"]["unique_graphs"]
    second = batch(1, 2)
    model.set_n_exp(_rates(2).flip(1))  # other n_exp at every step, the same longest one (its bucket)
    saved = (copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()))
    third = batch(0, 3)
    after = [p.detach().clone() for p in model.parameters()]
    assert counters["stats"]["unique_graphs"] == graphs
    assert first.compile_s > 0 and second.compile_s == third.compile_s == 0.0
    assert not torch.equal(second.out.last_z, third.out.last_z)  # fresh draws
    assert torch.isfinite(third.max_rates).all() and third.max_rates.shape == (2, 4)
    assert float(optimizer.state[model.W]["step"]) == 6.0
    model.load_state_dict(saved[0])
    optimizer.load_state_dict(saved[1])
    again = batch(0, 3)
    assert counters["stats"]["unique_graphs"] == graphs
    assert torch.equal(third.out.last_z, again.out.last_z)
    for a, p in zip(after, model.parameters(), strict=True):
        assert torch.equal(a, p)
