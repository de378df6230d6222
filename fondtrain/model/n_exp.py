"""The relaxed Poisson sampler's length table n_exp[t] (SPEC 4, 6): how many arrivals a
step draws, from the largest posterior rate seen at that step, agreed across ranks.

Off the hot path (every few hundred optimiser steps), so scipy is fine here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fondtrain.model.poisson import FLOAT32_EPS, poisson_rate

# The reference's starting value of every n_exp[t]: the quantile for rate 3 (10 at p 1e-3).
INITIAL_RATE = 3.0


def n_exp_for_rate(rate: float, p: float = 1e-3) -> int:
    """Number of exponential draws so that the relaxed sampler truncates with prob. < p.

    It is the (1 - p) quantile of Poisson(rate) (the reference's `compute_n_exp`): with
    that many arrivals the chance that more than n_exp events fall in [0, 1] is < p.
    """
    from scipy.stats import poisson

    if not rate > 0:
        raise ValueError(f"rate must be positive, got {rate}")
    return int(poisson.ppf(1.0 - p, rate))


def initial_n_exp(p: float) -> int:
    """Every n_exp[t] before the first refresh: the reference's start value."""
    return n_exp_for_rate(INITIAL_RATE, p)


def n_exp_table(max_rates: list[float] | Tensor, p: float) -> list[int]:
    """n_exp[t] for the largest rates observed at each step t (one rate per step); a rate
    of 0 (every entry at exp(u) = 0) counts as float32 eps."""
    rates = max_rates.tolist() if isinstance(max_rates, Tensor) else max_rates
    return [n_exp_for_rate(max(float(r), FLOAT32_EPS), p) for r in rates]


def agree_max_rates(max_rates: Tensor, gather_fn=None) -> Tensor:
    """The per-step largest rates every rank agrees on, before `set_n_exp`: the max over
    ranks, so that all ranks draw samplers of the same length.

    max_rates [t_total]; `gather_fn` stacks a [1, t_total] tensor from every rank into
    [world, t_total] (e.g. `accelerator.gather`); None (one process) keeps the rates.
    """
    return max_rates if gather_fn is None else gather_fn(max_rates[None]).amax(0)


class NExpTable:
    """Mixin of a torch module: the sampler length of each step t < t_total, the buffer
    `n_exp` [t_total] (int32, saved with the module's state dict), and a host-side copy
    of it so that a step reads its length without a device sync. A population of P
    members keeps one row per member, [P, t_total] (`fondtrain.model.members`), and reads
    a list of P lengths per step."""

    def register_n_exp(self, t_total: int, p: float, n_members: int | None = None) -> None:
        """Create the buffer at the reference's start value; p: the truncation
        probability (`n_exp_for_rate`); n_members: P rows (None: a single model's one)."""
        shape = (t_total,) if n_members is None else (n_members, t_total)
        self.register_buffer("n_exp", torch.full(shape, initial_n_exp(p), dtype=torch.int32))
        self._n_exp_p = p
        self._n_exp_host: list[int] | None = None

    def n_exp_at(self, t: int, state=None) -> int | list[int]:
        """Relaxed-Poisson sampler length at step t (the host-side copy: no device sync);
        a population: each member's, a list of P ints.

        Beyond t_total (long evaluations at tau > 0) it is inferred from the largest rate
        of `state` (a State of log-rates (u,)), as the reference does; that one reads the
        device. Without a state: the last step's length.
        """
        if self._n_exp_host is None:
            self._n_exp_host = self.n_exp.t().tolist()  # [t_total] or [t_total][P]
        if t < len(self._n_exp_host):
            return self._n_exp_host[t]
        if state is None:
            return self._n_exp_host[-1]
        u = state.components[0]
        if self.n_exp.dim() == 1:
            return n_exp_for_rate(float(poisson_rate(u).max()), self._n_exp_p)
        rates = poisson_rate(u).flatten(1).amax(1).tolist()
        return [n_exp_for_rate(r, self._n_exp_p) for r in rates]

    def set_n_exp(self, max_rates: list[float] | Tensor) -> None:
        """Refresh n_exp[t] from observed largest rates, one per step t (SPEC 4, 6); a
        population: one row of rates per member, [P, t_total].

        In distributed runs pass rates already agreed across ranks (`agree_max_rates`)
        so every rank uses the same sampler length.
        """
        rates = max_rates if isinstance(max_rates, Tensor) else torch.tensor(max_rates, dtype=torch.float64)
        if rates.shape != self.n_exp.shape:
            raise ValueError(f"need rates of shape {tuple(self.n_exp.shape)}, got {tuple(rates.shape)}")
        rows = rates.reshape(-1, rates.shape[-1])
        values = torch.tensor([n_exp_table(row, self._n_exp_p) for row in rows], dtype=torch.int32)
        self.n_exp.copy_(values.view_as(self.n_exp))
        self._n_exp_host = None

    def load_n_exp_table(self, table: Tensor) -> None:
        """Set the whole table (int, the buffer's shape): a population's refresh, where
        members past their warm-up take new rows and the others keep theirs."""
        self.n_exp.copy_(table.to(self.n_exp.device))
        self._n_exp_host = None

    def fill_n_exp(self, n_exp: int) -> None:
        """Use the same sampler length `n_exp` at every step (benchmarks, fixed-length runs)."""
        self.n_exp.fill_(int(n_exp))
        self._n_exp_host = None

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._n_exp_host = None  # n_exp may have changed: re-read lazily
