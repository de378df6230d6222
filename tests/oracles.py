"""Plain reference expressions ("oracles") that only tests compare the model's fast code with."""

from __future__ import annotations

import torch
from torch import Tensor

from fondtrain.model.clamps import poisson_clamp, softclamp_sym


def state_step_reference(value: Tensor, grad: Tensor, log_lr: Tensor, c_du: float | Tensor,
                         c_u: float | Tensor, posterior: str) -> Tensor:
    """`clamps.state_step` written as the plain composition of SPEC 3.3-3.4, left to
    autograd: clamp(value + clamp(-exp(log_lr) grad, c_du), c_u). [B, K] -> [B, K]."""
    clamp = poisson_clamp if posterior == "poisson" else softclamp_sym
    step = clamp(-torch.exp(log_lr) * grad, c_du)
    return clamp(value + step, c_u)
