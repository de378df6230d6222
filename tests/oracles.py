"""Plain reference expressions ("oracles") that only tests compare the model's fast code with."""

from __future__ import annotations

import torch
from torch import Tensor

from fondtrain.model.clamps import poisson_clamp, softclamp_sym
from fondtrain.model.poisson import poisson_rate


def state_step_reference(value: Tensor, grad: Tensor, log_lr: Tensor, c_du: float | Tensor,
                         c_u: float | Tensor, posterior: str) -> Tensor:
    """`clamps.state_step` written as the plain composition of SPEC 3.3-3.4, left to
    autograd: clamp(value + clamp(-exp(log_lr) grad, c_du), c_u). [P, B, K] -> [P, B, K]
    (log_lr and the ceilings broadcast: [P, 1, 1] per member, or shared)."""
    clamp = poisson_clamp if posterior == "poisson" else softclamp_sym
    step = clamp(-torch.exp(log_lr) * grad, c_du)
    return clamp(value + step, c_u)


def relaxed_poisson_reference(u: Tensor, temp: float, noise: Tensor) -> Tensor:
    """The reference implementation's relaxed Poisson expression, left to autograd: the
    oracle `relaxed_poisson` is compared with. z = sum_j sigmoid((1 - S_j / r) / tau) over
    every row of noise [n, *u.shape] (Exp(1) draws; S_j their running sums), r = exp(u) + eps.
    u of any shape (one member's [B, K], or [P, B, K] with one temperature)."""
    rate = poisson_rate(u)
    times = torch.cumsum(noise / rate, dim=0)
    return torch.sigmoid((1.0 - times) / temp).sum(0)
