"""Everything a run shows: TensorBoard (`runs/<name>/tb/`: scalars, the dictionary as an
image grid, hparams), the progress, and the printed start banner and end summary.

On a terminal the progress is a tqdm bar; with stdout piped (a SLURM log, `| tee`) it is
one plain line every log_every steps. Only the main process writes or prints; on the
other ranks every method is a no-op, except `train_step`'s metric reduction, which is a
collective that every rank joins.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fondtrain.images import dictionary_grid
from fondtrain.train.metrics import batch_metrics


class RunLog:
    """The run's output on the main process (`is_main`); `start_step` is the step a
    resumed run continues after (0 for a new run), `last_step` where it will stop."""

    def __init__(self, run_dir: Path, is_main: bool, name: str, start_step: int, last_step: int,
                 log_every: int, samples_per_step: int):
        self.run_dir, self.is_main, self.name, self.last_step = run_dir, is_main, name, last_step
        self.log_every, self.samples_per_step = log_every, samples_per_step
        self._t, self._step = time.perf_counter(), start_step
        self.writer = self.bar = None
        if not is_main:
            return
        from torch.utils.tensorboard import SummaryWriter

        # Events an interrupted run wrote after its checkpoint are dropped (so curves do
        # not double back); those of the checkpoint's own step are kept.
        self.writer = SummaryWriter(str(run_dir / "tb"), purge_step=start_step + 1 if start_step else None)
        if sys.stdout.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=last_step, initial=start_step, desc=name, dynamic_ncols=True,
                            mininterval=1.0, file=sys.stdout)

    def say(self, text: str) -> None:
        if self.is_main:
            (self.bar.write if self.bar is not None else print)(text)

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.is_main:
            for name, value in values.items():
                self.writer.add_scalar(name, value, step)

    def train_step(self, step: int, result, model, values, accelerator) -> None:
        """After the step that reached global step `step`: every log_every steps (and at
        the last) the batch metrics, averaged over ranks (all ranks call this)."""
        if result.compile_s:
            self._t += result.compile_s  # compiling is not training: keep it out of samples/s
            self.say(f"compiled the TBPTT cycle in {result.compile_s:.1f} s")
        if step % self.log_every == 0 or step == self.last_step:
            metrics = batch_metrics(result.out, model, values, result.grad_norm)
            reduced = accelerator.reduce(torch.stack(list(metrics.values())), "mean").tolist()
            metrics = {k: float(v) for k, v in zip(metrics, reduced, strict=True)}
            now = time.perf_counter()
            metrics["perf/samples_per_s"] = (step - self._step) * self.samples_per_step / max(now - self._t, 1e-9)
            self._t, self._step = now, step
            if model.is_poisson:
                metrics["sched/n_exp_first"] = model.n_exp_at(0)
                metrics["sched/n_exp_last"] = model.n_exp_at(model.config.t_total - 1)
            self.scalars(metrics, step)
            self._progress(step, metrics)
        if self.bar is not None:
            self.bar.update(1)

    def _progress(self, step: int, metrics: dict[str, float]) -> None:
        text = (f"loss={metrics['train/loss']:.4g} r2={metrics['train/r2']:.3f} "
                f"sps={metrics['perf/samples_per_s']:.0f}")
        if self.bar is not None:
            self.bar.set_postfix_str(text.replace(" ", ", "))
        elif self.is_main:
            print(f"{self.name}: step {step:,}/{self.last_step:,} {text}", flush=True)

    def validation(self, values: dict[str, float], model, step: int) -> None:
        self.scalars(values, step)
        self.dictionary(model, step)

    def dictionary(self, model, step: int) -> None:
        """Log W's elements as an image grid (sorted by decoder norm)."""
        if self.is_main:
            self.writer.add_image("dictionary", _dictionary_grid(model)[None], step, dataformats="CHW")

    def dictionary_png(self, model) -> Path:
        """run_dir/dictionary.png: the grid enlarged 4x (16-pixel patches are too small to see)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        png = self.run_dir / "dictionary.png"
        plt.imsave(png, np.kron(_dictionary_grid(model), np.ones((4, 4))), cmap="gray", vmin=0.0, vmax=1.0)
        return png

    def banner(self, checkpoint: Path | None, step: int, world: int, config, steps_per_epoch: int,
               total_steps: int) -> None:
        """Say what starts: a new run or a resumed one, where, and how long it is."""
        tc = config.train
        start = f"resuming {self.run_dir} from {checkpoint.name} (step {step})" if checkpoint \
            else f"new run {self.run_dir}"
        accum = f" x {tc.grad_accum} micro-batches" if tc.grad_accum > 1 else ""
        cut = f"; stopping at step {self.last_step:,} (max_steps)" if self.last_step < total_steps else ""
        self.say(f"{start}\n  {world} process(es) x batch {tc.batch_size}{accum}; {steps_per_epoch:,} steps "
                 f"per epoch; {total_steps:,} steps in {tc.epochs} epoch(s){cut}")

    def finish(self, config, checkpoint: Path, model, val: dict[str, float], step: int,
               total_steps: int, logged: bool) -> None:
        """The end of a run that was not stopped by a signal: the final validation (unless
        `logged` already at this step), dictionary PNG, hparams, and the printed summary."""
        if not self.is_main:
            return
        if not logged:
            self.validation(val, model, step)
        picture = self.dictionary_png(model)
        flat = {}
        for section, values in dataclasses.asdict(config).items():
            for key, value in values.items():
                flat[f"{section}.{key}"] = value if isinstance(value, int | float | str | bool) else str(value)
        self.writer.add_hparams(flat, {f"hparam/{k}": v for k, v in val.items()}, run_name="hparams")
        ended = f"done: {step} steps" + ("" if step >= total_steps else
                                         f" (stopped at {step:,} of {total_steps:,} scheduled steps; "
                                         "use --epochs for a short run)")
        self.say("\n".join([
            ended,
            f"validation R^2 pooled {val.get('val/r2_pooled', math.nan):.3f}, "
            f"median {val.get('val/r2_median', math.nan):.3f}; "
            f"zero latents {100 * val.get('val/zeros', math.nan):.1f}%, "
            f"population sparseness {val.get('val/population_sparseness', math.nan):.3f}, "
            f"lifetime sparseness {val.get('val/lifetime_sparseness', math.nan):.3f}",
            f"TensorBoard logs: {self.run_dir / 'tb'}   (tensorboard --logdir {self.run_dir.parent})",
            f"checkpoint:       {checkpoint}",
            f"dictionary:       {picture}",
        ]))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()


def _dictionary_grid(model) -> np.ndarray:
    """W's elements as one float32 image grid, largest decoder norm first."""
    weight = model.W.detach().float().cpu().numpy()
    order = np.argsort(-np.linalg.norm(weight, axis=0))
    return dictionary_grid(weight, order=order).astype(np.float32)
