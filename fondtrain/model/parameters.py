"""A model's initial parameters, and the settings the members of one model may differ in."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import Tensor

from fondtrain.config import ModelConfig

# ModelConfig fields members may differ in; every other field fixes a shape or the dynamics.
MEMBER_FIELDS = frozenset({"seed", "beta_outer", "beta_inner", "init_scale", "poisson_kl"})


def initial_parameters(config: ModelConfig) -> dict[str, Tensor]:
    """A single model's initial parameters from its seed, in registration order:
    W [M, K] ~ N(0, init_scale^2), dec_log_sigma 0 [M], log_bias -3 [K], log_lr 0 [C],
    u_init [C, K] (Poisson: U(u_init_low, u_init_high); Gaussian: 0), log_gain 0 [K]
    (igrelu only)."""
    m, k, c = config.input_dim, config.n_latents, config.n_components
    if m is None:
        raise ValueError("ModelConfig.input_dim is None: give the input size, or take the data "
                         "set's with fondtrain.config.with_input_dim")
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
    for i, member in enumerate(members):
        for field in dataclasses.fields(ModelConfig):
            if field.name not in MEMBER_FIELDS and getattr(member, field.name) != getattr(config, field.name):
                raise ValueError(f"member {i} differs in the shared setting {field.name!r}")
