"""Soft clamps of the state updates and the fused clamped state step (SPEC 3.3-3.4).

Pure functions of tensors; `state_step` is one autograd node for
clamp(value + clamp(-exp(log_lr) grad, c_du), c_u), the plain composition of the clamps
below written out with a hand-made backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Lower bound applied before the Poisson soft clamp (the reference's `clamp_(min=-8)`).
POISSON_FLOOR = -8.0
# Decoder log-sigma is squashed to (-3.45, 3.45): variances from ~1e-3 to ~1e3.
DEC_LOG_SIGMA_BOUND = 3.45


def softclamp_upper(x: Tensor, c: float | Tensor) -> Tensor:
    """One-sided soft clamp c - softplus(c - x): identity far below c, never above c."""
    return c - F.softplus(c - x)


def softclamp_sym(x: Tensor, c: float | Tensor) -> Tensor:
    """Symmetric soft clamp c * tanh(x / c): slope 1 at 0, limits -c and c."""
    return c * torch.tanh(x / c)


def poisson_clamp(x: Tensor, c: float | Tensor) -> Tensor:
    """clampU(v, c) = c - softplus(c - max(v, -8)) (SPEC 3.3)."""
    return softclamp_upper(torch.clamp(x, min=POISSON_FLOOR), c)


def clamp_ceiling(eps: float | Tensor, c_final: float, posterior: str) -> float | Tensor:
    """Soft-clamp constant c = c_init + eps (c_final - c_init); c_init 2 (Poisson), 1 (Gaussian).

    eps grows from 0 to 1 early in training (SPEC 6), loosening the clamps.
    """
    c_init = 2.0 if posterior == "poisson" else 1.0
    return c_init + eps * (c_final - c_init)


def effective_dec_log_sigma(raw: Tensor) -> Tensor:
    """Effective decoder log-std 3.45 tanh(raw / 3.45), [M]."""
    return softclamp_sym(raw, DEC_LOG_SIGMA_BOUND)


# ----------------------------------------------------------------------------- fused step
class _PoissonStateStep(torch.autograd.Function):
    """new = clampU(value + clampU(-exp(log_lr) grad, c_du), c_u) in one node (SPEC 3.3).

    The same numbers as the composition of `poisson_clamp` calls; backward recomputes the
    two softplus slopes from the two pre-clamp tensors it saves ([B, K] each) instead of
    autograd's chain of a dozen saved intermediates.
    """

    @staticmethod
    def forward(ctx, value: Tensor, grad: Tensor, log_lr: Tensor, c_du, c_u) -> Tensor:
        lr = torch.exp(log_lr)
        step_raw = grad * (-lr)
        new_raw = _poisson_clamp_fresh(torch.clamp(step_raw, min=POISSON_FLOOR), c_du).add_(value)
        ctx.save_for_backward(step_raw, new_raw, lr)
        ctx.c = (c_du, c_u)
        return _poisson_clamp_fresh(torch.clamp(new_raw, min=POISSON_FLOOR), c_u)

    @staticmethod
    def backward(ctx, grad_new: Tensor):
        step_raw, new_raw, lr = ctx.saved_tensors
        c_du, c_u = ctx.c
        # d clampU(v, c)/dv = sigmoid(c - max(v, -8)) where v >= -8, else 0 (torch.clamp's
        # gradient passes at the bound itself).
        grad_value = grad_new * _upper_slope(new_raw, c_u)
        grad_step = grad_value * _upper_slope(step_raw, c_du)
        grad_grad = grad_step * (-lr) if ctx.needs_input_grad[1] else None
        grad_log_lr = None
        if ctx.needs_input_grad[2]:
            grad_log_lr = _sum_to(grad_step * step_raw, lr)
        return grad_value, grad_grad, grad_log_lr, None, None


def _sum_to(values: Tensor, like: Tensor) -> Tensor:
    """The gradient of a broadcast log_lr: values [B, K] summed to a 0-dim or [1] log_lr,
    or [P, B, K] summed over (B, K) to a population's [P, 1, 1]."""
    if like.numel() == 1:
        return values.sum().reshape(like.shape)
    return values.sum_to_size(like.shape)


def _poisson_clamp_fresh(floored: Tensor, c) -> Tensor:
    """c - softplus(c - floored), reusing the buffers of `floored` (a tensor of the
    caller's own, already max(v, -8)) and of the softplus: (-t) + c is c - t bit for bit,
    without the two allocations of `poisson_clamp` (that one stays for autograd)."""
    return F.softplus(floored.neg_().add_(c)).neg_().add_(c)


def _upper_slope(v: Tensor, c) -> Tensor:
    """Derivative of clampU(v, c) = c - softplus(c - max(v, -8)) with respect to v:
    sigmoid(c - v) where v >= -8 (there max(v, -8) is v), 0 below."""
    return torch.sigmoid_(c - v).masked_fill_(v < POISSON_FLOOR, 0.0)


class _SymStateStep(torch.autograd.Function):
    """new = clampS(value + clampS(-exp(log_lr) grad, c_du), c_u) in one node (SPEC 3.4),
    clampS(v, c) = c tanh(v / c); backward reuses the two tanh outputs it saves."""

    @staticmethod
    def forward(ctx, value: Tensor, grad: Tensor, log_lr: Tensor, c_du, c_u) -> Tensor:
        lr = torch.exp(log_lr)
        step_raw = grad * (-lr)
        tanh_step = (step_raw / c_du).tanh_()
        # in place on fresh buffers; the same operations as (value + c_du tanh_step) / c_u
        tanh_new = (tanh_step * c_du).add_(value).div_(c_u).tanh_()
        ctx.save_for_backward(step_raw, tanh_step, tanh_new, lr)
        return tanh_new * c_u

    @staticmethod
    def backward(ctx, grad_new: Tensor):
        step_raw, tanh_step, tanh_new, lr = ctx.saved_tensors
        grad_value = grad_new * (1.0 - tanh_new * tanh_new)
        grad_step = grad_value * (1.0 - tanh_step * tanh_step)
        grad_grad = grad_step * (-lr) if ctx.needs_input_grad[1] else None
        grad_log_lr = None
        if ctx.needs_input_grad[2]:
            grad_log_lr = _sum_to(grad_step * step_raw, lr)
        return grad_value, grad_grad, grad_log_lr, None, None


def state_step(value: Tensor, grad: Tensor, log_lr: Tensor, c_du: float | Tensor,
               c_u: float | Tensor, posterior: str) -> Tensor:
    """One clamped gradient step of a state component, fused: [B, K] -> [B, K].

    new = clamp(value + clamp(-exp(log_lr) grad, c_du), c_u) with the Poisson one-sided
    clamp or the Gaussian symmetric one. log_lr is a 0-dim (or [1]) tensor; c_du, c_u are
    floats or 0-dim tensors without gradient. A population: value, grad [P, B, K],
    log_lr and c_du, c_u [P, 1, 1] (each member its own). Equals the plain composition (tests/oracles.py, tested).
    """
    if posterior == "poisson":
        return _PoissonStateStep.apply(value, grad, log_lr, c_du, c_u)
    return _SymStateStep.apply(value, grad, log_lr, c_du, c_u)

