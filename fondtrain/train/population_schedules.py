"""Per-member schedules of a population (SPEC 6.6, 9.2): the values of P `Schedule`s at a
global step as [P] tensors, one entry per member, each equal to its member's scalar
schedule (float64, to an ulp of the cosine).

The members' constants (warm-up length, anneal boundaries, peak learning rate, ...) are
computed once on the host exactly as `Schedule` computes them; `at(step)` is then pure
tensor arithmetic with torch.where for the branches, no host sync and no branch on
tensor values, so the step may be a device tensor inside a compiled graph.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class PopulationValues:
    """The schedule values of every member at one global step: [P] float64 tensors, and
    warming_up [P] bool."""

    lr: Tensor
    beta: Tensor
    eps: Tensor
    temp: Tensor
    max_norm: Tensor
    warming_up: Tensor


class PopulationSchedule:
    """The schedules of P members (`fondtrain Schedule`s over the same total_steps)."""

    def __init__(self, schedules: Sequence, device=None):
        if not schedules:
            raise ValueError("a population schedule needs at least one member schedule")
        totals = {s.total_steps for s in schedules}
        if len(totals) != 1:
            raise ValueError(f"member schedules span different numbers of steps: {sorted(totals)}")
        self.total_steps = totals.pop()
        n = self.total_steps

        def column(values) -> Tensor:
            return torch.tensor(list(values), dtype=torch.float64, device=device)

        self.n_warmup = column(s.n_warmup for s in schedules)
        self.lr = column(s.lr for s in schedules)
        self.lr_min = column(s.lr_min for s in schedules)
        # a zero warm-up never divides: its warm-up branch is never taken
        self.warmup_portion = column(s.warmup_portion or 1.0 for s in schedules)
        self.peak = column(s.lr * ((s.n_warmup - 1) / n) / s.warmup_portion if s.n_warmup > 1 else s.lr
                           for s in schedules)
        self.period = column((1.0 - s.warmup_portion) * n for s in schedules)
        self.anneal_start = column(math.ceil(s.kl_const_portion * n) for s in schedules)
        self.anneal_end = column(math.ceil((s.kl_const_portion + s.kl_anneal_portion) * n) for s in schedules)
        self.beta_min = column(s.beta_min for s in schedules)
        self.beta_outer = column(s.beta_outer for s in schedules)
        self.temp_end = column(math.ceil(s.temp_anneal_portion * n) for s in schedules)
        self.temp_start = column(s.temp_start if s.anneal_temperature else 1.0 for s in schedules)
        self.temp_stop = column(s.temp_stop if s.anneal_temperature else 1.0 for s in schedules)
        self.grad_clip = column(s.grad_clip for s in schedules)

    @property
    def n_members(self) -> int:
        return self.lr.numel()

    def at(self, step: int | Tensor) -> PopulationValues:
        """Every member's values at global step `step` (an int or a 0-dim tensor)."""
        g = torch.as_tensor(step, dtype=torch.float64, device=self.lr.device)
        n = float(self.total_steps)
        warming_up = g < self.n_warmup
        warm_lr = self.lr * (g / n) / self.warmup_portion
        cosine = torch.cos(math.pi * (g - self.n_warmup) / self.period)
        cos_lr = self.lr_min + (self.peak - self.lr_min) * (1.0 + cosine) / 2.0
        return PopulationValues(
            lr=torch.where(warming_up, warm_lr, cos_lr),
            beta=self._linear_anneal(g, self.beta_min, self.beta_outer),
            eps=self._linear_anneal(g, torch.zeros_like(self.lr), torch.ones_like(self.lr)),
            temp=_ramp(g, torch.zeros_like(self.lr), self.temp_end, self.temp_start, self.temp_stop),
            max_norm=self.grad_clip * torch.where(warming_up, 3.0, 1.0),
            warming_up=warming_up,
        )

    def _linear_anneal(self, g: Tensor, start: Tensor, end: Tensor) -> Tensor:
        return _ramp(g, self.anneal_start, self.anneal_end, start, end)


def _ramp(g: Tensor, a: Tensor, b: Tensor, start: Tensor, end: Tensor) -> Tensor:
    """start before step a, end from step b on, between them linspace(start, end, b - a)
    at g - a (start when b - a = 1, as `Schedule`'s `_linspace_at`)."""
    inside = start + (end - start) * (g - a) / torch.clamp(b - a - 1.0, min=1.0)
    return torch.where(g < a, start, torch.where(g >= b, end, inside))
