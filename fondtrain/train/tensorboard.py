"""TensorBoard output of a run: scalars, the dictionary as an image grid, hparams."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from fondtrain.images import dictionary_grid


class RunLogger:
    """Writes `runs/<name>/tb/` on the main process (events after `purge_step` from an
    interrupted run are dropped on resume, so curves do not double back)."""

    def __init__(self, log_dir: Path, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step or None)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)

    def dictionary(self, model, step: int, png: Path | None = None) -> Path | None:
        """Log W's elements as a grid (sorted by decoder norm); optionally save a PNG."""
        weight = model.W.detach().float().cpu().numpy()
        order = np.argsort(-np.linalg.norm(weight, axis=0))
        grid = dictionary_grid(weight, order=order)
        self.writer.add_image("dictionary", grid[None].astype(np.float32), step, dataformats="CHW")
        if png is None:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        # 4x nearest-neighbour enlargement: 16-pixel patches are too small to see
        plt.imsave(png, np.kron(grid, np.ones((4, 4))), cmap="gray", vmin=0.0, vmax=1.0)
        return png

    def hparams(self, config, metrics: dict[str, float]) -> None:
        flat = {}
        for section, values in dataclasses.asdict(config).items():
            for key, value in values.items():
                flat[f"{section}.{key}"] = value if isinstance(value, int | float | str | bool) else str(value)
        self.writer.add_hparams(flat, {f"hparam/{k}": v for k, v in metrics.items()}, run_name="hparams")

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()
