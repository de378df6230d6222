"""The relaxed Poisson sampler's length table n_exp[i, t] (SPEC 4, 6, 9): how many arrivals
member i draws at step t, from the largest posterior rate it showed at that step, agreed
across the ranks that hold it.

Off the hot path (every few hundred optimiser steps), so scipy is fine here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fondtrain.model.poisson import FLOAT32_EPS, poisson_rate

# The reference's starting value of every n_exp[t]: the quantile for rate 3 (10 at p 1e-3).
INITIAL_RATE = 3.0
# Sampler lengths a compiled cycle is built for: one graph serves every n_exp up to its bucket.
N_EXP_BUCKETS = (4, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192, 256)


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


def n_exp_table(max_rates: Tensor | Sequence, p: float) -> list[int]:
    """n_exp[t] for the largest rates observed at each step t (one rate per step); a rate
    of 0 (every entry at exp(u) = 0) counts as float32 eps."""
    rates = max_rates.tolist() if isinstance(max_rates, Tensor) else max_rates
    return [n_exp_for_rate(max(float(r), FLOAT32_EPS), p) for r in rates]


def n_exp_bucket(n_exp: int) -> int:
    """The smallest bucket >= n_exp (beyond the table: the next multiple of 64)."""
    for bucket in N_EXP_BUCKETS:
        if bucket >= n_exp:
            return bucket
    return -(-n_exp // 64) * 64


def agree_max_rates(max_rates: Tensor, gather_fn=None) -> Tensor:
    """The per-step largest rates every rank agrees on: the max over ranks, so that all
    ranks draw samplers of the same length.

    max_rates [P, t_total]; `gather_fn` stacks a [1, P, t_total] tensor from every rank
    into [world, P, t_total] (e.g. `accelerator.gather`); None (one process) keeps them.
    """
    return max_rates if gather_fn is None else gather_fn(max_rates[None]).amax(0)


class NExpTable:
    """Mixin of a torch module: the sampler length of member i at step t < t_total, the
    buffer `n_exp` [P, t_total] (int32, saved with the module's state dict), and a host
    copy of it so that a step reads its P lengths without a device sync."""

    def register_n_exp(self, t_total: int, p: float, n_members: int) -> None:
        """Create the buffer at the reference's start value; p: the truncation
        probability (`n_exp_for_rate`)."""
        self.register_buffer("n_exp", torch.full((n_members, t_total), initial_n_exp(p), dtype=torch.int32))
        self._n_exp_p = p
        self._n_exp_host: list[list[int]] | None = None

    def n_exp_at(self, t: int, state=None) -> list[int]:
        """Each member's relaxed-Poisson sampler length at step t, P ints (the host copy:
        no device sync).

        Beyond t_total (long evaluations at tau > 0) it is inferred from each member's
        largest rate in `state` (a State of log-rates (u,) [P, B, K]), as the reference
        does; that one reads the device. Without a state: the last step's length.
        """
        if self._n_exp_host is None:
            self._n_exp_host = self.n_exp.t().tolist()  # [t_total][P]
        if t < len(self._n_exp_host):
            return self._n_exp_host[t]
        if state is None:
            return self._n_exp_host[-1]
        rates = poisson_rate(state.components[0]).flatten(1).amax(1).tolist()
        return [n_exp_for_rate(r, self._n_exp_p) for r in rates]

    def longest_n_exp(self) -> int:
        """The longest sampler length of any member and step (the host copy)."""
        self.n_exp_at(0)
        return max(max(row) for row in self._n_exp_host)

    def set_n_exp(self, max_rates: Tensor, refresh: Tensor | None = None) -> None:
        """Refresh n_exp[i, t] from every member's largest rates at each step,
        [P, t_total] (SPEC 4, 6). refresh [P] bool: only those members take the new row
        (the others, e.g. still warming up, keep theirs); None: every member.

        In distributed runs pass rates already agreed across ranks (`agree_max_rates`) so
        that every rank uses the same sampler lengths.
        """
        rates = torch.as_tensor(max_rates, dtype=torch.float64).detach().cpu()
        if rates.shape != self.n_exp.shape:
            raise ValueError(f"need rates of shape {tuple(self.n_exp.shape)}, got {tuple(rates.shape)}")
        fresh = torch.tensor([n_exp_table(row, self._n_exp_p) for row in rates], dtype=torch.int32)
        if refresh is not None:
            fresh = torch.where(refresh.cpu().view(-1, 1), fresh, self.n_exp.cpu())
        self.n_exp.copy_(fresh.to(self.n_exp.device))
        self._n_exp_host = None

    def fill_n_exp(self, n_exp: int) -> None:
        """Use the same sampler length `n_exp` at every step (benchmarks, fixed-length runs)."""
        self.n_exp.fill_(int(n_exp))
        self._n_exp_host = None

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._n_exp_host = None  # n_exp may have changed: re-read lazily


class NExpTracker:
    """Training's bookkeeping of the table (SPEC 6.7): running sums, over this rank's
    batches of the current epoch, of each member's largest rate at each step t,
    rate_sum [P, t_total]. Every `refresh_every` steps after a member's warm-up the ranks
    agree (the max over ranks of their averages) and the member's row of the model's table
    is set from it. The sums are per rank, so a checkpoint keeps every rank's row and an
    exact resume gives each rank its own back."""

    def __init__(self, n_members: int, t_total: int, refresh_every: int, device: torch.device):
        self.refresh_every = refresh_every
        self.rate_sum = torch.zeros((n_members, t_total), device=device)
        self.count = 0

    def observe(self, max_rates: Tensor | None) -> None:
        """Add one batch's largest rates [P, t_total] (None for Gaussians)."""
        if max_rates is not None:
            self.rate_sum += max_rates
            self.count += 1

    def reset(self) -> None:
        """A new epoch starts new averages."""
        self.rate_sum.zero_()
        self.count = 0

    def refresh(self, model: NExpTable, step: int, warming_up: Tensor, collectives) -> None:
        """After the batch that made the global step `step`: every refresh_every steps
        (from the first batch of a run on, as the reference does), the members past their
        warm-up (warming_up [P] bool, host) take the table of the epoch's averages, agreed
        over the processes of `collectives` (an Accelerator or a rank's own)."""
        if not self.count or (step - 1) % self.refresh_every:
            return
        refresh = ~warming_up
        if not bool(refresh.any()):
            return
        gather = collectives.gather if collectives.num_processes > 1 else None
        model.set_n_exp(agree_max_rates(self.rate_sum / self.count, gather), refresh)

    def state_dict(self, collectives) -> dict:
        """Every rank's sums (a collective: call it on every rank): rate_sum
        [world][P][t_total] and the batch count."""
        rows = collectives.gather(self.rate_sum[None]) if collectives.num_processes > 1 else self.rate_sum[None]
        return {"rate_sum": rows.tolist(), "rate_count": self.count}

    def load_state_dict(self, saved: dict, rank: int, world_size: int, members: range) -> None:
        """This rank's own row when the checkpoint holds one per rank of this world size;
        else (written by another number of processes) the elementwise max of the saved
        rows on every rank, so that the table agreed next is the one saved. `members`:
        the saved members this tracker follows (the rank's block; range(P) when it trains
        all). Also reads a single model's rows [world][t_total], what fondtrain saved
        before every model had a member axis."""
        rows = torch.tensor(saved["rate_sum"], dtype=self.rate_sum.dtype)
        if rows.dim() == 2:
            rows = rows.unsqueeze(1)
        rows = rows[:, members.start:members.stop]
        row = rows[rank] if rows.shape[0] == world_size else rows.amax(0)
        self.rate_sum.copy_(row.to(self.rate_sum.device))
        self.count = int(saved["rate_count"])
