"""n_exp bookkeeping (Poisson presets, SPEC 4 and 6): the relaxed sampler's length at each
step t follows the largest rate seen at t.

Every rank sums, over the batches of the current epoch, the largest rate of each step t of
its own batches; every `refresh_every` steps after warm-up the ranks agree (the max over
ranks of their averages) and set the model's n_exp table from it. The sums are per rank,
so a checkpoint keeps every rank's row and an exact resume gives each rank its own back.
"""

from __future__ import annotations

from typing import Any

import torch

from fondtrain.model.n_exp import agree_max_rates
from fondtrain.model.population_n_exp import refresh_member_tables
from fondtrain.model.vae import IterativeVAE


class NExpTracker:
    """Running sums of the per-step largest rates of this rank's batches, [t_total] (a
    population of n_members: one row per member, [P, t_total])."""

    def __init__(self, t_total: int, refresh_every: int, device: torch.device,
                 n_members: int | None = None):
        self.refresh_every = refresh_every
        shape = (t_total,) if n_members is None else (n_members, t_total)
        self.rate_sum = torch.zeros(shape, device=device)
        self.count = 0

    def observe(self, max_rates: torch.Tensor | None) -> None:
        """Add one batch's largest rate at each step t ([t_total] or [P, t_total]; None
        for Gaussians)."""
        if max_rates is not None:
            self.rate_sum += max_rates
            self.count += 1

    def reset(self) -> None:
        """A new epoch starts new averages."""
        self.rate_sum.zero_()
        self.count = 0

    def refresh(self, model: IterativeVAE, step: int, warming_up: bool, accelerator) -> None:
        """After the batch that made the global step `step`: set n_exp from the epoch's
        averages, agreed across ranks, every refresh_every steps once warm-up is over
        (from the first batch of a run on, as the reference does). A population:
        warming_up [P], and only the members past their own warm-up take new rows."""
        if not self.count or (step - 1) % self.refresh_every:
            return
        population = self.rate_sum.dim() == 2
        refresh = ~torch.as_tensor(warming_up, device=self.rate_sum.device)
        if not bool(refresh.any()):
            return
        gather = accelerator.gather if accelerator.num_processes > 1 else None
        rates = agree_max_rates(self.rate_sum / self.count, gather)
        if population:
            model.load_n_exp_table(refresh_member_tables(model.n_exp, rates, model.config.n_exp_p, refresh))
        else:
            model.set_n_exp(rates)

    def state_dict(self, accelerator) -> dict[str, Any]:
        """Every rank's sums (a collective: call it on every rank): rate_sum [world][t_total]."""
        rows = accelerator.gather(self.rate_sum[None]) if accelerator.num_processes > 1 else self.rate_sum[None]
        return {"rate_sum": rows.tolist(), "rate_count": self.count}

    def load_state_dict(self, saved: dict[str, Any], rank: int, world_size: int,
                        members: range | None = None) -> None:
        """This rank's own row when the checkpoint holds one per rank of this world size;
        else (written by another number of processes) the elementwise max of the saved
        rows on every rank, so that the n_exp table agreed next is the one saved.
        `members`: this tracker follows only these members of the saved population
        (members split across ranks)."""
        rows = torch.tensor(saved["rate_sum"], dtype=self.rate_sum.dtype)
        if members is not None:  # [world][P][t_total] of the whole population
            rows = rows.reshape(-1, *rows.shape[-2:])[:, members.start:members.stop]
        rows = rows.reshape(-1, *self.rate_sum.shape)
        row = rows[rank] if rows.shape[0] == world_size else rows.amax(0)
        self.rate_sum.copy_(row.to(self.rate_sum.device))
        self.count = int(saved["rate_count"])
