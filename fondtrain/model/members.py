"""A population of models as one IterativeVAE with a leading member axis P (SPEC 9).

Member i of `IterativeVAE(config, members)` is the single model `IterativeVAE(members[i])`:
its parameters are that model's initial parameters (its own seed and init_scale), stacked
on a leading axis (W [P, M, K], dec_log_sigma [P, M], log_bias [P, K], log_lr [P, C],
u_init [P, C, K], log_gain [P, K]); its state components are [P, B, K]; inputs are shared
[B, M] (broadcast) or its own [P, B, M]. Per-member numbers (temp, beta, eps, beta_inner)
are [P] tensors viewed [P, 1, 1], so every product, clamp and KL is the single model's
expression broadcast over the member axis: one code path, not a second model.

A leading axis rather than torch.func.stack_module_state + vmap: the fused autograd
Functions (clamps.state_step, the relaxed Poisson sampler) and the host-side samplers
would each need a vmap rule, while an explicit axis is plain broadcasting in the same
kernels.

Sampling (`sample_members`, `draw_member_noise`): member i draws from its own generator
(its seed's sampler noise) and its own n_exp[i, t] arrivals. On CPU the relaxed Poisson
sampler runs member by member on the single model's streamed sampler, which already
skips every finished entry (most entries of a sparse posterior finish after an arrival
or two): batching members cannot shrink that work, and each member then gets exactly
a single run's numbers. On accelerators the masked batched sampler
(`population_n_exp.relaxed_poisson_population`: the longest member's length, the extra
arrivals masked, each member's distribution exactly its own) runs all members at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import Tensor

from fondtrain.config import ModelConfig
from fondtrain.model import gaussian, poisson
from fondtrain.model.population_n_exp import relaxed_poisson_population

# ModelConfig fields members may differ in; every other field fixes a shape or the dynamics.
MEMBER_FIELDS = frozenset({"seed", "beta_outer", "beta_inner", "init_scale", "poisson_kl"})


def initial_parameters(config: ModelConfig) -> dict[str, Tensor]:
    """A single model's initial parameters from its seed, in registration order:
    W [M, K] ~ N(0, init_scale^2), dec_log_sigma 0 [M], log_bias -3 [K], log_lr 0 [C],
    u_init [C, K] (Poisson: U(u_init_low, u_init_high); Gaussian: 0), log_gain 0 [K]
    (igrelu only)."""
    m, k, c = config.input_dim, config.n_latents, config.n_components
    gen = torch.Generator().manual_seed(config.seed)
    params = {
        "W": torch.randn(m, k, generator=gen) * config.init_scale,
        "dec_log_sigma": torch.zeros(m),
        "log_bias": torch.full((k,), -3.0),
        "log_lr": torch.zeros(c),
    }
    if config.posterior == "poisson":
        low, high = config.u_init_low, config.u_init_high
        params["u_init"] = low + (high - low) * torch.rand(1, k, generator=gen)
    else:
        params["u_init"] = torch.zeros(2, k)
    if config.preset == "igrelu":
        params["log_gain"] = torch.zeros(k)
    return params


def check_members(config: ModelConfig, members: Sequence[ModelConfig]) -> None:
    """Members may differ from `config` only in MEMBER_FIELDS (ValueError otherwise)."""
    if not members:
        raise ValueError("a population needs at least one member")
    for i, member in enumerate(members):
        for field in dataclasses.fields(ModelConfig):
            if field.name not in MEMBER_FIELDS and getattr(member, field.name) != getattr(config, field.name):
                raise ValueError(f"member {i} differs in the shared setting {field.name!r}")


def stacked_parameters(members: Sequence[ModelConfig]) -> dict[str, Tensor]:
    """Every member's `initial_parameters`, stacked on a leading member axis."""
    singles = [initial_parameters(m) for m in members]
    return {name: torch.stack([s[name] for s in singles]) for name in singles[0]}


def member_view(value, n_members: int | None, rank: int = 3):
    """A per-member value as it broadcasts over [P, B, K] (rank 3) or [P, B] (rank 2):
    a [P] tensor viewed [P, 1, 1] / [P, 1] in float32 (schedules give float64, which
    would promote the state); floats, 0-dim tensors and every value of a single model
    (n_members None) unchanged."""
    if n_members is None or not isinstance(value, Tensor) or value.dim() == 0:
        return value
    return value.to(torch.float32).view((-1,) + (1,) * (rank - 1))


def member_floats(value, n_members: int) -> list[float]:
    """A shared float or a [P] tensor as P host floats (reads the device once)."""
    if isinstance(value, Tensor) and value.dim() > 0:
        return [float(v) for v in value.tolist()]
    return [float(value)] * n_members


def member_generators(generator, n_members: int, own=None) -> list:
    """One generator per member: a sequence of P generators; None: the model's own
    (`own`, IterativeVAE.generators), else the default generator for every member."""
    if generator is None:
        generator = own
    if generator is None:
        return [None] * n_members
    if isinstance(generator, torch.Generator):
        raise ValueError("a population draws from one generator per member: pass a list of them")
    if len(generator) != n_members:
        raise ValueError(f"need {n_members} generators, got {len(generator)}")
    return list(generator)


def poisson_kl_members(u: Tensor, u_prior: Tensor, reference: Tensor) -> Tensor:
    """poisson.poisson_kl with each member's own form, [P, B, K]: reference [P] bool
    (True: the 'reference' form r f(delta); False: 'exact' r0 f(delta))."""
    delta = u - u_prior
    f = 1.0 + torch.exp(delta) * (delta - 1.0)
    return torch.where(reference.view(-1, 1, 1), torch.exp(u), torch.exp(u_prior)) * f


def draw_member_noise(model, state, temp, t: int, generator) -> Tensor | None:
    """Each member's standard noise from its own generator: Exp(1) [n_max, P, B, K]
    (Poisson, member i's first n_exp[i, t] rows its own, the rest ones and masked),
    N(0, 1) [P, B, K] (Gaussian), None at temp 0 (exact Poisson)."""
    ref = state.components[0]
    p = ref.shape[0]
    gens = member_generators(generator, p, model.generators)
    if not model.is_poisson:
        # each row filled in place: torch.randn's numbers (it is empty().normal_()) without
        # a stack's copy of the whole [P, B, K]
        noise = torch.empty(ref.shape, device=ref.device)
        for row, g in zip(noise, gens, strict=True):
            row.normal_(generator=g)
        return noise
    if all(v == 0 for v in member_floats(temp, p)):
        return None
    lengths = model.n_exp_at(t, state)
    n_max = max(lengths)
    noise = torch.ones((n_max, *ref.shape), device=ref.device)
    for i, (n, g) in enumerate(zip(lengths, gens, strict=True)):
        noise[:n, i] = poisson.exponential_noise(n, ref.shape[1:], ref.device, g)
    return noise


def sample_members(model, state, temp, noise: Tensor | None, generator, t: int) -> Tensor:
    """z ~ q(z | state) of every member, [P, B, K]: member i at its temperature, from its
    noise (`draw_member_noise`'s layout) or its own generator."""
    comps = state.components
    p = comps[0].shape[0]
    if not model.is_poisson:
        if noise is None:
            noise = draw_member_noise(model, state, temp, t, generator)
        return gaussian.gaussian_sample(*comps, member_view(temp, p), noise)
    u = comps[0]
    temps = member_floats(temp, p)
    gens = member_generators(generator, p, model.generators)
    if all(v == 0 for v in temps):
        return torch.stack([poisson.exact_poisson(u[i], gens[i]) for i in range(p)])
    if any(v == 0 for v in temps):
        raise ValueError("members must all sample at temperature 0 or all above it")
    lengths = model.n_exp_at(t, state)
    if not poisson.vectorized_sampler(u):
        return torch.stack([
            poisson.relaxed_poisson(u[i], temps[i], None if noise is None else noise[:n, i], n, gens[i])
            for i, n in enumerate(lengths)
        ])
    if noise is None:
        noise = draw_member_noise(model, state, temp, t, generator)
    temp_tensor = torch.tensor(temps, device=u.device)
    return relaxed_poisson_population(u, temp_tensor, noise, torch.tensor(lengths, device=u.device))
