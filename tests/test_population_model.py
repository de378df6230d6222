"""A population (every IterativeVAE has a leading member axis) trains exactly like its
members' single runs (populations of one): the same parameters, losses and n_exp tables
after several optimiser steps, for every preset, with n_iters_outer 2, n_iters_inner 2 and
grad_accum 2."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator

from fondtrain.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from fondtrain.config.schedules import schedules_for
from fondtrain.config.sweep import members_from_sweep
from fondtrain.model import inference
from fondtrain.model.relaxed_poisson import _vectorized
from fondtrain.model.vae import IterativeVAE


def _trainer_parts():
    """The trainer's pieces these tests drive (imported here: the model-level tests of this
    module do not need them)."""
    from fondtrain.train.batch import train_batch
    from fondtrain.train.optim import MemberAdamax

    return MemberAdamax, train_batch

PRESETS = ("ipvae", "igvae", "igrelu")
N_STEPS = 4
# Member settings chosen to differ in everything a member may: its init and noise seed,
# both betas, the init scale, the Poisson KL form, lr, weight decay and the clip norm
# (0.05 clips every step, 300 never does).
SWEEP = [
    dict(seed=0, beta_outer=1.0, beta_inner=1.0, init_scale=0.3, poisson_kl="reference",
         lr=2e-2, weight_decay=0.0, grad_clip=300.0),
    dict(seed=1, beta_outer=3.0, beta_inner=0.5, init_scale=0.5, poisson_kl="exact",
         lr=1e-2, weight_decay=1e-2, grad_clip=0.05),
    dict(seed=2, beta_outer=0.5, beta_inner=2.0, init_scale=0.2, poisson_kl="reference",
         lr=3e-2, weight_decay=3e-4, grad_clip=1.0),
]
# Float32 rounding: a member's batched products ([P, B, K] @ [P, K, M]) may add in another
# order than the single model's [B, K] @ [K, M], a few ulps per product (~1e-7 relative).
# Through 2 windows x 3 steps x 2 inner updates and 4 Adamax steps, whose update
# lr * m / u normalises small gradients (a 1e-7 relative change of a gradient near 0
# moves its sign-like step), those grow to ~1e-5 of the parameters' size: well below any
# difference between members (their settings differ by factors of 2 or more).
RTOL, ATOL = 1e-4, 1e-5


def _base(preset: str) -> RunConfig:
    return RunConfig(
        model=ModelConfig(preset=preset, input_dim=16, n_latents=12, t_train=3,
                          n_iters_outer=2, n_iters_inner=2),
        data=DataConfig(dataset="digits"),
        train=TrainConfig(batch_size=4, grad_accum=2, warmup_portion=0.25,
                          kl_const_portion=0.0, kl_anneal_portion=0.5, temp_start=1.0,
                          temp_stop=0.3, temp_anneal_portion=0.5),
    )


def _batches(config: RunConfig) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(123)
    b = config.train.batch_size * config.train.grad_accum
    return [torch.randn(b, config.model.input_dim, generator=gen) for _ in range(N_STEPS)]


def _refresh_n_exp(core: IterativeVAE, max_rates: torch.Tensor | None) -> None:
    """The n_exp refresh after every step: each member's table from its own rates."""
    if max_rates is not None:
        core.set_n_exp(max_rates)


def _train_single(config: RunConfig, batches) -> dict:
    """A member's single run: a population of one, its parameters and n_exp [1, ...]."""
    MemberAdamax, train_batch = _trainer_parts()
    torch.manual_seed(config.model.seed)  # the sampler noise: the default generator
    core = IterativeVAE(config.model)
    tc = config.train
    optimizer = MemberAdamax(core.parameters(), lr=[tc.lr], betas=tuple(tc.betas), eps=1e-8,
                             weight_decay=tc.weight_decay)
    accelerator = Accelerator(cpu=True)
    model, optimizer = accelerator.prepare(core, optimizer)
    schedule = schedules_for([config], N_STEPS)
    losses = []
    for step, x in enumerate(batches):
        result = train_batch(model, core, optimizer, accelerator, x, schedule.at(step), config)
        losses.append(result.out.loss.detach())
        _refresh_n_exp(core, result.max_rates)
    return {"params": dict(core.named_parameters()), "losses": torch.stack(losses),
            "n_exp": core.n_exp.clone()}


def _train_population(members, batches) -> dict:
    MemberAdamax, train_batch = _trainer_parts()
    configs = [m.config for m in members]
    core = IterativeVAE(configs[0].model, [c.model for c in configs])
    core.generators = [torch.Generator().manual_seed(c.model.seed) for c in configs]
    optimizer = MemberAdamax(core.parameters(), lr=[c.train.lr for c in configs],
                             betas=configs[0].train.betas, eps=1e-8,
                             weight_decay=[c.train.weight_decay for c in configs])
    accelerator = Accelerator(cpu=True)
    model, optimizer = accelerator.prepare(core, optimizer)
    schedule = schedules_for(configs, N_STEPS)
    losses = []
    for step, x in enumerate(batches):
        result = train_batch(model, core, optimizer, accelerator, x, schedule.at(step), configs[0])
        losses.append(result.out.loss.detach())
        _refresh_n_exp(core, result.max_rates)
    return {"params": dict(core.named_parameters()), "losses": torch.stack(losses),
            "n_exp": core.n_exp.clone()}


@pytest.mark.parametrize("preset", PRESETS)
def test_population_trains_like_its_members_single_runs(preset):
    base = _base(preset)
    members = members_from_sweep(base, SWEEP)
    batches = _batches(base)
    population = _train_population(members, batches)
    assert population["losses"].shape == (N_STEPS, len(members))
    for i, member in enumerate(members):
        single = _train_single(member.config, batches)
        for name, value in single["params"].items():
            torch.testing.assert_close(population["params"][name][i], value[0], rtol=RTOL, atol=ATOL,
                                       msg=f"{member.name}: {name}")
        torch.testing.assert_close(population["losses"][:, i], single["losses"][:, 0], rtol=RTOL, atol=ATOL)
        assert torch.equal(population["n_exp"][i], single["n_exp"][0])
    # the members really differ (a test that could not fail otherwise)
    w = population["params"]["W"]
    assert not torch.allclose(w[0], w[1], rtol=1e-2, atol=1e-3)
    if preset == "ipvae":
        assert len({tuple(row.tolist()) for row in population["n_exp"]}) > 1, "n_exp tables agree"


@pytest.mark.parametrize("preset", PRESETS)
def test_population_initial_parameters_are_each_members_own(preset):
    base = _base(preset)
    members = members_from_sweep(base, SWEEP)
    population = IterativeVAE(base.model, [m.config.model for m in members])
    for i, member in enumerate(members):
        single = IterativeVAE(member.config.model)
        for name, value in single.state_dict().items():
            assert torch.equal(population.state_dict()[name][i], value[0]), name
        for name, value in population.member_state_dict(i).items():
            assert torch.equal(value, single.state_dict()[name][0]), name


@pytest.mark.parametrize(("preset", "temp"), [("ipvae", 0.0), ("ipvae", 0.5), ("igvae", 1.0),
                                              ("igrelu", 1.0)])
def test_population_inference_member_by_member(preset, temp):
    """The engine runs a population: each member's trajectory (the exact Poisson sampler
    at temp 0, the streamed relaxed one, the Gaussian) is its single model's, given its
    own generator."""
    base = _base(preset)
    members = members_from_sweep(base, SWEEP)
    population = IterativeVAE(base.model, [m.config.model for m in members])
    x = torch.randn(5, base.model.input_dim, generator=torch.Generator().manual_seed(7))
    gens = [torch.Generator().manual_seed(10 + i) for i in range(len(members))]
    out = inference.run(population, x, 6, temp=temp, generators=gens)
    for i, member in enumerate(members):
        single = inference.run(IterativeVAE(member.config.model), x, 6, temp=temp,
                               generators=[torch.Generator().manual_seed(10 + i)])
        torch.testing.assert_close(out["z"][:, i], single["z"][:, 0], rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(out["loss"][:, i], single["loss"][:, 0], rtol=RTOL, atol=ATOL)


def test_members_may_not_differ_in_shape():
    base = _base("ipvae")
    other = ModelConfig(preset="ipvae", input_dim=16, n_latents=13, t_train=3,
                        n_iters_outer=2, n_iters_inner=2)
    with pytest.raises(ValueError, match="n_latents"):
        IterativeVAE(base.model, [base.model, other])


def test_batched_masked_sampler_equals_member_by_member():
    """The accelerator path (all members in one masked sampler, `_vectorized`, called here
    on the CPU) gives each member the numbers of the CPU path (member by member) on the
    same noise, and the same gradient."""
    base = _base("ipvae")
    members = members_from_sweep(base, SWEEP)
    population = IterativeVAE(base.model, [m.config.model for m in members])
    population.set_n_exp(torch.tensor([[0.5] * 6, [4.0] * 6, [12.0] * 6]))  # different lengths
    state = population.init_state(5)
    u = (state.components[0] + torch.linspace(0.0, 5.0, 12)).detach().requires_grad_()
    state = type(state)((u,))
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    temp = torch.tensor([0.5, 0.3, 1.0])
    noise = population.draw_noise(state, temp, t=2, generators=gens)
    lengths = population.n_exp_at(2)
    assert len(set(lengths)) == 3 and noise.shape == (max(lengths), 3, 5, 12)
    by_member = population.sample(state, temp, noise, t=2)
    (grad_member,) = torch.autograd.grad(by_member.square().sum(), u)
    batched, dz_du = _vectorized(u.detach(), temp.tolist(), lengths, noise, (None,) * 3, True)
    grad_batched = 2.0 * batched * dz_du  # the sampler's backward of sum(z^2): grad_z dz/du
    torch.testing.assert_close(batched, by_member, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_batched, grad_member, rtol=1e-5, atol=1e-6)


def test_a_model_needs_its_input_size():
    with pytest.raises(ValueError, match="input_dim is None"):
        IterativeVAE(ModelConfig(preset="ipvae"))
