"""Training schedules (SPEC 6): learning rate, KL weight beta, clamp growth eps, temperature
and gradient-clip norm, as pure functions of the global step, one `Schedule` per member
and `Schedules.at` giving every member's values at a step.

A global step is one batch (the reference's `gstep`); with n_iters_outer > 1 the optimiser
steps several times per batch at the same schedule values. The values equal the
reference trainer's (tests/data/schedules.npz) step for step, including its quirk that the
cosine decay starts from the learning rate of the *last* warm-up step
(lr * (n_warm - 1) / n_warm rather than lr).

Pure maths below train/ and eval/: the trainer drives a run with them, and evaluation
recomputes the soft-clamp opening an older checkpoint had reached.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fondtrain.config import RunConfig


@dataclass(frozen=True)
class ScheduleValues:
    """Everything the loop needs at one global step, one value per member: [P] float64
    tensors on the host (a model moves what it needs to its device), warming_up [P] bool."""

    lr: Tensor
    beta: Tensor
    eps: Tensor
    temp: Tensor
    max_norm: Tensor
    warming_up: Tensor

    def member(self, index: int) -> ScheduleValues:
        """Member `index`'s values, as a population of one ([1] tensors)."""
        return ScheduleValues(*(v[index:index + 1] for v in self.__dict__.values()))


@dataclass(frozen=True)
class Schedule:
    """Schedules over `total_steps` global steps.

    beta: beta_min for the first kl_const_portion of steps, then linear to beta_outer by
    kl_const_portion + kl_anneal_portion, constant after; eps the same shape from 0 to 1;
    temperature (Poisson) linear from temp_start to temp_stop over temp_anneal_portion,
    Gaussian always 1; lr linear warm-up from 0 over warmup_portion, then cosine to lr_min
    over the remaining steps; clipping norm 3x grad_clip during warm-up.
    """

    total_steps: int
    lr: float = 5e-3
    lr_min: float = 1e-5
    warmup_portion: float = 0.005
    grad_clip: float = 300.0
    beta_outer: float = 24.0
    beta_min: float = 1e-4
    kl_const_portion: float = 1e-3
    kl_anneal_portion: float = 0.1
    anneal_temperature: bool = True
    temp_start: float = 1.0
    temp_stop: float = 0.01
    temp_anneal_portion: float = 0.5

    def __post_init__(self) -> None:
        if self.total_steps < 1:
            raise ValueError("a schedule needs at least one step")

    @property
    def n_warmup(self) -> int:
        """Number of steps g with g / total_steps < warmup_portion."""
        return math.ceil(self.warmup_portion * self.total_steps)

    def _linear_anneal(self, step: int, start: float, end: float) -> float:
        n = self.total_steps
        a = math.ceil(self.kl_const_portion * n)
        b = math.ceil((self.kl_const_portion + self.kl_anneal_portion) * n)
        if step < a:
            return start
        if step >= b:
            return end
        return _linspace_at(start, end, b - a, step - a)

    def beta(self, step: int) -> float:
        return self._linear_anneal(step, self.beta_min, self.beta_outer)

    def eps(self, step: int) -> float:
        return self._linear_anneal(step, 0.0, 1.0)

    def temp(self, step: int) -> float:
        if not self.anneal_temperature:
            return 1.0
        i = math.ceil(self.temp_anneal_portion * self.total_steps)
        if step >= i:
            return self.temp_stop
        return _linspace_at(self.temp_start, self.temp_stop, i, step)

    def learning_rate(self, step: int) -> float:
        n, n_warm = self.total_steps, self.n_warmup
        if step < n_warm:
            return self.lr * (step / n) / self.warmup_portion
        # The cosine starts from the lr in force after warm-up (the last warm-up value,
        # or lr itself when there is no warm-up or a single warm-up step at lr 0).
        peak = self.lr * ((n_warm - 1) / n) / self.warmup_portion if n_warm > 1 else self.lr
        period = (1.0 - self.warmup_portion) * n
        t = step - n_warm
        return self.lr_min + (peak - self.lr_min) * (1.0 + math.cos(math.pi * t / period)) / 2.0

    def warming_up(self, step: int) -> bool:
        return step < self.n_warmup

    def max_norm(self, step: int) -> float:
        return self.grad_clip * (3.0 if self.warming_up(step) else 1.0)


class Schedules:
    """The schedules of a run's members (one `Schedule` each, over the same total steps)."""

    def __init__(self, schedules: Sequence[Schedule]):
        if not schedules or len({s.total_steps for s in schedules}) != 1:
            raise ValueError("a run needs at least one schedule, all over the same number of steps")
        self.schedules = list(schedules)
        self.total_steps = self.schedules[0].total_steps

    def at(self, step: int) -> ScheduleValues:
        """Every member's values at global step `step`."""
        def column(name: str, dtype=torch.float64) -> Tensor:
            return torch.tensor([getattr(s, name)(step) for s in self.schedules], dtype=dtype)

        return ScheduleValues(lr=column("learning_rate"), beta=column("beta"), eps=column("eps"),
                              temp=column("temp"), max_norm=column("max_norm"),
                              warming_up=column("warming_up", torch.bool))


def _linspace_at(start: float, end: float, count: int, index: int) -> float:
    """Element `index` of numpy.linspace(start, end, count)."""
    if count == 1:
        return start
    return start + (end - start) * index / (count - 1)


def schedules_for(configs: Sequence[RunConfig], total_steps: int) -> Schedules:
    """The schedules of members with configs `configs` over `total_steps` global steps."""
    return Schedules([schedule_for(c, total_steps) for c in configs])


def schedule_for(config: RunConfig, total_steps: int) -> Schedule:
    """The schedules of a run described by `config` over `total_steps` global steps."""
    t, m = config.train, config.model
    return Schedule(
        total_steps=total_steps, lr=t.lr, lr_min=t.lr_min, warmup_portion=t.warmup_portion,
        grad_clip=t.grad_clip, beta_outer=m.beta_outer, beta_min=t.beta_min,
        kl_const_portion=t.kl_const_portion, kl_anneal_portion=t.kl_anneal_portion,
        anneal_temperature=m.posterior == "poisson", temp_start=t.temp_start,
        temp_stop=t.temp_stop, temp_anneal_portion=t.temp_anneal_portion,
    )
