"""TensorBoard output of a population: one run per member, runs/<sweep>/members/<member>/tb,
so TensorBoard pointed at runs/<sweep> lists every member in its run selector and
overlays their curves under the same tags as a single run's.

Values arrive as [P] tensors (one entry per member) and cross to the host once per call.
Only the main process writes; elsewhere every method is a no-op.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fondtrain.images import dictionary_grid
from fondtrain.members_table import member_dir
from fondtrain.sweep import Member


def member_tb_dir(run_dir: str | Path, name: str) -> Path:
    return member_dir(run_dir, name) / "tb"


class MemberLogs:
    """One SummaryWriter per member (`names` in member order). `start_step`: the step a
    resumed run continues after (0 for a new run); events an interrupted run wrote after
    its checkpoint are dropped, as for a single run's TensorBoard."""

    def __init__(self, run_dir: str | Path, names: Sequence[str], start_step: int = 0, is_main: bool = True):
        self.names = list(names)
        self.writers = []
        if not is_main:
            return
        from torch.utils.tensorboard import SummaryWriter

        purge = start_step + 1 if start_step else None
        self.writers = [SummaryWriter(str(member_tb_dir(run_dir, n)), purge_step=purge) for n in self.names]

    def scalars(self, values: Mapping[str, Tensor | Sequence[float]], step: int) -> None:
        """values[tag]: one value per member, [P]."""
        if not self.writers or not values:
            return
        table = torch.stack([torch.as_tensor(v, dtype=torch.float64).reshape(-1).cpu() for v in values.values()])
        if table.shape[1] != len(self.writers):
            raise ValueError(f"need one value per member ({len(self.writers)}), got {table.shape[1]}")
        for writer, column in zip(self.writers, table.T.tolist(), strict=True):
            for tag, value in zip(values, column, strict=True):
                writer.add_scalar(tag, value, step)

    def dictionaries(self, weight: Tensor, step: int) -> None:
        """Each member's decoder W [P, M, K] as an image grid (sorted by decoder norm)."""
        if not self.writers:
            return
        weights = weight.detach().float().cpu().numpy()
        for writer, w in zip(self.writers, weights, strict=True):
            grid = dictionary_grid(w, order=np.argsort(-np.linalg.norm(w, axis=0)))
            writer.add_image("dictionary", grid[None].astype(np.float32), step, dataformats="CHW")

    def hparams(self, members: Sequence[Member], results: Mapping[str, Mapping[str, float]]) -> None:
        """Each member's swept settings against its final metrics (TensorBoard's HPARAMS
        view compares the members side by side)."""
        for writer, member in zip(self.writers, members, strict=True):
            metrics = {f"hparam/{k}": float(v) for k, v in results.get(member.name, {}).items()}
            writer.add_hparams(dict(member.settings), metrics, run_name=".")

    def close(self) -> None:
        for writer in self.writers:
            writer.flush()
            writer.close()
