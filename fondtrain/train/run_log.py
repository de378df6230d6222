"""Everything a run shows: TensorBoard (scalars, the dictionary as an image grid, hparams),
the progress, and the printed start banner and end summary.

Each member writes its own TensorBoard run in its folder (`sweep.member_dir`): a plain
run's one member is the run itself (runs/<name>/tb), a sweep's members are
runs/<sweep>/members/<member>/tb, so TensorBoard pointed at runs/<sweep> overlays them
under the same tags; the run's throughput goes to runs/<name>/tb. A sweep also keeps the
member table members.tsv.

On a terminal the progress is a tqdm bar; with stdout piped (a SLURM log, `| tee`) it is
one plain line every log_every steps, with the elapsed time and an estimate of the time
left, and a line per validation. Only the main process writes or prints; on the other
ranks every method is a no-op, except the gathers of `train_step`, `validation` and
`finish`, collectives that every rank joins.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch

from fondtrain.config.sweep import Member, member_dir, write_members_tsv
from fondtrain.images import dictionary_grid
from fondtrain.train.metrics import batch_metrics


class RunLog:
    """The run's output on the main process (`is_main`). `members`: every member of the
    run (a plain run: one, named ""); `placement`: where they train (its gathers make
    every member's numbers reach the main process). `start_step` is the step a resumed
    run continues after (0 for a new run), `last_step` where it will stop."""

    def __init__(self, run_dir: Path, is_main: bool, name: str, start_step: int, last_step: int,
                 log_every: int, samples_per_step: int, members: list[Member], placement):
        self.run_dir, self.is_main, self.name, self.last_step = run_dir, is_main, name, last_step
        self.log_every, self.samples_per_step = log_every, samples_per_step
        self.members, self.placement = members, placement
        self.sweep = any(m.name for m in members)
        self._start, self._t, self._step, self._first = time.perf_counter(), time.perf_counter(), start_step, start_step
        self.writers, self.run_writer, self.bar = [], None, None
        if not is_main:
            return
        from torch.utils.tensorboard import SummaryWriter

        # Events an interrupted run wrote after its checkpoint are dropped (so curves do
        # not double back); those of the checkpoint's own step are kept.
        purge = start_step + 1 if start_step else None
        self.run_writer = SummaryWriter(str(run_dir / "tb"), purge_step=purge)
        self.writers = [self.run_writer if member_dir(run_dir, m.name) == run_dir else
                        SummaryWriter(str(member_dir(run_dir, m.name) / "tb"), purge_step=purge) for m in members]
        if self.sweep and start_step == 0:
            write_members_tsv(run_dir, members)
        if sys.stdout.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=last_step, initial=start_step, desc=name, dynamic_ncols=True,
                            mininterval=1.0, file=sys.stdout)

    def say(self, text: str) -> None:
        if not self.is_main:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    # ------------------------------------------------------------------ TensorBoard
    def scalars(self, values: dict[str, torch.Tensor | list[float]], step: int) -> None:
        """values[tag]: one value per member, [P], each to its member's run."""
        if not self.writers or not values:
            return
        table = torch.stack([torch.as_tensor(v, dtype=torch.float64).reshape(-1).cpu() for v in values.values()])
        if table.shape[1] != len(self.writers):
            raise ValueError(f"need one value per member ({len(self.writers)}), got {table.shape[1]}")
        for writer, column in zip(self.writers, table.T.tolist(), strict=True):
            for tag, value in zip(values, column, strict=True):
                writer.add_scalar(tag, value, step)

    def dictionaries(self, weight: torch.Tensor | None, step: int) -> None:
        """Each member's decoder W [P, M, K] as an image grid (largest decoder norm first)."""
        if not self.writers or weight is None:
            return
        for writer, w in zip(self.writers, weight.float().cpu().numpy(), strict=True):
            writer.add_image("dictionary", _dictionary_grid(w)[None], step, dataformats="CHW")

    # ------------------------------------------------------------------ the loop
    def train_step(self, step: int, result, model, values) -> None:
        """After the batch that reached global step `step`: every log_every steps (and at
        the last) each member's batch metrics (all ranks call this)."""
        if result.compile_s:
            self._t += result.compile_s  # compiling is not training: keep it out of samples/s
            self.say(f"compiled the TBPTT cycle in {result.compile_s:.1f} s")
        if step % self.log_every == 0 or step == self.last_step:
            metrics = self.placement.member_metrics(batch_metrics(result.out, model, values, result.grad_norm))
            if self.is_main:
                self.scalars(metrics, step)
                now = time.perf_counter()
                rate = (step - self._step) * self.samples_per_step / max(now - self._t, 1e-9)
                self._t, self._step = now, step
                self.run_writer.add_scalar("perf/samples_per_s", rate, step)
                self._progress(step, {k: float(v.mean()) for k, v in metrics.items()}, rate)
        if self.bar is not None:
            self.bar.update(1)

    def _progress(self, step: int, means: dict[str, float], rate: float) -> None:
        text = f"loss={means['train/loss']:.4g} r2={means['train/r2']:.3f} sps={rate:.0f}"
        if self.bar is not None:
            self.bar.set_postfix_str(text.replace(" ", ", "))
            return
        elapsed = time.perf_counter() - self._start
        done = step - self._first
        eta = elapsed / done * (self.last_step - step) if done > 0 else math.nan
        print(f"{self.name}: step {step:,}/{self.last_step:,} {text} elapsed {_clock(elapsed)} "
              f"eta {_clock(eta)}", flush=True)

    def validation(self, values: list[dict[str, float]], model, step: int, say: bool = True) -> None:
        """values: every member's validation; model: this rank's (all ranks call this);
        say: also print a line per member."""
        weight = self.placement.gather_rows(model.W)
        if not self.is_main:
            return
        if values:
            self.scalars({k: [v[k] for v in values] for k in values[0]}, step)
            for member, v in zip(self.members, values, strict=True) if say else ():
                self.say(f"{self.name}{'/' + member.name if member.name else ''}: step {step:,} validation "
                         f"{_validation_text(v)}")
        self.dictionaries(weight, step)

    def banner(self, checkpoint: Path | None, step: int, world: int, config, steps_per_epoch: int,
               total_steps: int, data_source: str, device: torch.device) -> None:
        """Say what starts: a new run or a resumed one, where, on what data, which model,
        and how long it is."""
        tc, mc = config.train, config.model
        start = f"resuming {self.run_dir} from {checkpoint.name} (step {step})" if checkpoint \
            else f"new run {self.run_dir}"
        accum = f" x {tc.grad_accum} micro-batches" if tc.grad_accum > 1 else ""
        cut = f"; stopping at step {self.last_step:,} (max_steps)" if self.last_step < total_steps else ""
        members = f"; {len(self.members)} members ({', '.join(m.name for m in self.members)})" if self.sweep else ""
        model = f"{mc.preset}, K {mc.n_latents}, t_train {mc.t_train}, beta_outer {mc.beta_outer:g}"
        threads = f"; {torch.get_num_threads()} thread(s) per process" if device.type == "cpu" else ""
        self.say(f"{start}\n  data: {config.data.dataset} from {data_source}\n  model: {model}{members}\n"
                 f"  device: {device}{threads}\n"
                 f"  {world} process(es) x batch {tc.batch_size}{accum}; {steps_per_epoch:,} steps "
                 f"per epoch; {total_steps:,} steps in {tc.epochs} epoch(s){cut}")

    def finish(self, checkpoint: Path, model, val: list[dict[str, float]], step: int, total_steps: int,
               logged: bool) -> None:
        """The end of a run that was not stopped by a signal: the final validation (unless
        `logged` already at this step), each member's dictionary PNG and hparams, the
        member table, and the printed summary (all ranks call this)."""
        if not logged:
            self.validation(val, model, step, say=False)  # the summary below says it
        weight = self.placement.gather_rows(model.W)
        if not self.is_main:
            return
        lines = [f"done: {step} steps" + ("" if step >= total_steps else
                                          f" (stopped at {step:,} of {total_steps:,} scheduled steps; "
                                          "use --epochs for a short run)")]
        pictures = []
        for member, v, writer, w in zip(self.members, val, self.writers, weight, strict=True):
            folder = member_dir(self.run_dir, member.name)
            pictures.append(_dictionary_png(w, folder / "dictionary.png"))
            writer.add_hparams({**_flat(member.config), **member.settings},
                               {f"hparam/{k}": x for k, x in v.items()}, run_name="hparams")
            lines.append(f"{member.name + ': ' if member.name else ''}validation {_validation_text(v)}")
        logs, picture = self.run_dir / "tb", pictures[0]
        if self.sweep:
            results = {m.name: v for m, v in zip(self.members, val, strict=True)}
            table = write_members_tsv(self.run_dir, self.members, results)
            lines.append(f"member table:     {table}")
            logs, picture = self.run_dir / "members", self.run_dir / "members" / "*" / "dictionary.png"
        lines += [f"TensorBoard logs: {logs}   (tensorboard --logdir {self.run_dir.parent})",
                  f"checkpoint:       {checkpoint}",
                  f"dictionary:       {picture}"]
        self.say("\n".join(lines))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        for writer in {id(w): w for w in [self.run_writer, *self.writers] if w is not None}.values():
            writer.flush()
            writer.close()


def _validation_text(v: dict[str, float]) -> str:
    """The validation's numbers in one line; R^2 three ways (`stats.R2_LABELS`: pooled over
    every sample, the median sample's, and the paper's mean over samples)."""
    return (f"R^2 pooled {v.get('val/r2_pooled', math.nan):.3f}, median {v.get('val/r2_median', math.nan):.3f}, "
            f"paper (per-sample mean) {v.get('val/r2_mean', math.nan):.3f}; "
            f"zero latents {100 * v.get('val/zeros', math.nan):.1f}%, population sparseness "
            f"{v.get('val/population_sparseness', math.nan):.3f}, lifetime sparseness "
            f"{v.get('val/lifetime_sparseness', math.nan):.3f}")


def _clock(seconds: float) -> str:
    return "?" if not math.isfinite(seconds) else str(timedelta(seconds=round(seconds)))


def _flat(config) -> dict:
    """A RunConfig as TensorBoard hparams: section.field -> a number, string or bool."""
    flat = {}
    for section, values in dataclasses.asdict(config).items():
        for key, value in values.items():
            flat[f"{section}.{key}"] = value if isinstance(value, int | float | str | bool) else str(value)
    return flat


def _dictionary_grid(weight: np.ndarray) -> np.ndarray:
    """W's elements [M, K] as one float32 image grid, largest decoder norm first."""
    order = np.argsort(-np.linalg.norm(weight, axis=0))
    return dictionary_grid(weight, order=order).astype(np.float32)


def _dictionary_png(weight: torch.Tensor, png: Path) -> Path:
    """The grid enlarged 4x (16-pixel patches are too small to see) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    png.parent.mkdir(parents=True, exist_ok=True)
    grid = _dictionary_grid(weight.float().cpu().numpy())
    plt.imsave(png, np.kron(grid, np.ones((4, 4))), cmap="gray", vmin=0.0, vmax=1.0)
    return png
