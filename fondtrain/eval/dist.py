"""Data-parallel evaluation through Accelerate: split rows across ranks, sum and gather.

Under `accelerate launch` every rank evaluates a contiguous part of the data and the
sums / per-sample values are combined with Accelerate's `reduce` and `gather`; a plain
`python` / `fondtrain` process is a world of one and needs no launcher. fondtrain writes
no collectives of its own (DESIGN: distributed by the book).
"""

from __future__ import annotations

import torch
from torch import Tensor


class Ranks:
    """Where this process stands in the evaluation world (one process without a launcher)."""

    def __init__(self, device: str | torch.device | None = None):
        from accelerate import PartialState
        from accelerate.utils import parse_flag_from_env

        from fondtrain.runtime import configure_cpu_process

        configure_cpu_process()

        # Accelerate treats several CPU processes as one world only when told cpu=True
        # (Accelerator reads ACCELERATE_USE_CPU itself; PartialState does not).
        cpu = (str(device) == "cpu" if device is not None else False) or \
            parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
        self.state = PartialState(cpu=cpu)
        self.rank = self.state.process_index
        self.world = self.state.num_processes
        self.device = torch.device(device) if device is not None else self.state.device
        self.is_main = self.state.is_main_process

    def part(self, n: int) -> slice:
        """This rank's contiguous slice of n rows (parts differ in length by at most 1)."""
        return slice(self.rank * n // self.world, (self.rank + 1) * n // self.world)

    def sum(self, tensor: Tensor) -> Tensor:
        """Element-wise sum over ranks (float64 sums stay float64)."""
        if self.world == 1:
            return tensor
        from accelerate.utils import reduce

        return reduce(tensor.to(self.state.device), reduction="sum").to(tensor.device)

    def gather_rows(self, tensor: Tensor) -> Tensor:
        """Concatenate every rank's rows [n_r, ...] in rank order -> [sum n_r, ...].

        Parts may differ in length: they are padded to the longest, gathered, and the
        padding dropped again.
        """
        if self.world == 1:
            return tensor
        from accelerate.utils import gather

        device = self.state.device
        local = tensor.to(device)
        lengths = gather(torch.tensor([local.shape[0]], device=device)).tolist()
        longest = max(lengths)
        if local.shape[0] < longest:
            pad = torch.zeros((longest - local.shape[0], *local.shape[1:]), dtype=local.dtype,
                              device=device)
            local = torch.cat([local, pad])
        everything = gather(local.contiguous())
        parts = [everything[r * longest: r * longest + n] for r, n in enumerate(lengths)]
        return torch.cat(parts).to(tensor.device)

    def barrier(self) -> None:
        if self.world > 1:
            self.state.wait_for_everyone()
