"""The trainer's population pieces (SPEC 9): a sweep's members trained as one model with a
leading member axis (`IterativeVAE(config, members)`), in the same loop as one model.

What differs from a single run, and where:
- the model and its optimiser (`build_population`): PopulationAdamax with each member's
  lr and weight decay; `tbptt_step` sums the members' losses and clips each member to
  its own grad_clip;
- the schedules (`population_schedule`): each member's, as [P] tensors;
- the sampler noise (`seed_member_generators`): member i draws from its own generator,
  re-seeded at every global step from (its seed, the rank, the step). So a resumed run
  draws exactly the noise of an uninterrupted one with no generator state to save, and
  every member's noise is its own stream (a single run's comes from the process's
  default generator instead: the same distribution, other numbers);
- the output (`PopulationLog`): every member its own TensorBoard run
  (runs/<sweep>/members/<member>/tb), the member table members.tsv; runs/<sweep>/tb
  keeps the run's throughput.
Members see the same batches, or with --member_data_order own each its own order
(`MemberOrderLoader`: one in-memory copy of the split, gathered per member).
"""

from __future__ import annotations

import copy
import math
import time

import torch

from fondtrain.config import RunConfig
from fondtrain.members_table import write_members_tsv
from fondtrain.model.vae import IterativeVAE
from fondtrain.schedules import schedule_for
from fondtrain.seeding import stream_seed
from fondtrain.stats import sum_squares
from fondtrain.sweep import Member
from fondtrain.train.member_logs import MemberLogs
from fondtrain.train.population_optim import PopulationAdamax
from fondtrain.train.population_schedules import PopulationSchedule
from fondtrain.train.run_log import RunLog
from fondtrain.train.step import make_inputs


def build_population(config: RunConfig, members: list[Member], accelerator, split: bool = False):
    """The population model (member i initialised as its single run) and its
    PopulationAdamax, prepared; `split` (this rank's members only, population_ranks): on
    the device with mixed precision but not wrapped in DDP, which would average the
    gradients of different models."""
    tc = config.train
    model = IterativeVAE(config.model, [m.config.model for m in members])
    optimizer = PopulationAdamax(model.parameters(), lr=[m.config.train.lr for m in members],
                                 betas=tuple(tc.betas), eps=1e-8,
                                 weight_decay=[m.config.train.weight_decay for m in members])
    if split:
        model = accelerator.prepare_model(model, evaluation_mode=True)  # Accelerate's "no DDP"
        optimizer = accelerator.prepare_optimizer(optimizer)
    else:
        model, optimizer = accelerator.prepare(model, optimizer)
    if tc.compile:
        accelerator.unwrap_model(model).enable_compile()
    return model, optimizer


def population_schedule(members: list[Member], total_steps: int, device) -> PopulationSchedule:
    return PopulationSchedule([schedule_for(m.config, total_steps) for m in members], device=device)


def seed_member_generators(core: IterativeVAE, members: list[Member], rank: int, step: int) -> None:
    """Member i's sampler generator for global step `step` on `rank`."""
    device = core.W.device
    core.generators = [torch.Generator(device=device).manual_seed(
        stream_seed(m.config.train.seed, "sampler", rank, step)) for m in members]


class MemberOrderLoader:
    """The training batches of every member in its own order: `loader` (a ShardLoader
    holding its split in memory) copied once per member with the member's order seed,
    all copies sharing the one array. Batches are {'x': [P, B, M]}; the epoch length and
    resume position are the shared loader's."""

    def __init__(self, loader, members: list[Member], data_seed: int):
        if not loader.in_memory:
            raise ValueError("member orders gather from an in-memory split")
        self.loaders = []
        for m in members:
            own = copy.copy(loader)
            own.seed = stream_seed(data_seed, "data_order", m.config.train.seed)  # keyed by member
            self.loaders.append(own)
        self.batches_per_epoch, self.input_dim = loader.batches_per_epoch, loader.input_dim

    def epoch(self, epoch: int, skip_batches: int = 0):
        streams = [loader.epoch(epoch, skip_batches=skip_batches) for loader in self.loaders]
        for batches in zip(*streams, strict=True):
            yield {"x": torch.stack([b["x"] for b in batches])}


def population_inputs(config: RunConfig, x: torch.Tensor, seed: int) -> torch.Tensor:
    """A population's inputs from a batch x [B, M] (shared) or [P, B, M] (own orders):
    itself when stationary, else the feeder's frames [t_total, P or 1, B, M]."""
    if config.data.feeder == "stationary":
        return x
    if x.dim() == 2:
        return make_inputs(config, x, seed).unsqueeze(1)
    return torch.stack([make_inputs(config, xi, seed) for xi in x], dim=1)


def member_batch_metrics(out, model: IterativeVAE, values, grad_norm) -> dict[str, torch.Tensor]:
    """`metrics.batch_metrics` of every member, [P] device tensors, from a population's
    CycleOutput (step_losses [n_steps, P], last_x_hat [P, B, M], ...)."""
    ss_res, ss_tot = sum_squares(out.last_x, out.last_x_hat)  # [P, B] each
    scalars = {
        "train/loss": out.step_losses.mean(0),
        "train/recon": out.recon.mean(0),
        "train/kl": out.kl.mean(0),
        "train/r2": 1.0 - ss_res.sum(-1) / ss_tot.expand_as(ss_res).sum(-1),
        "train/zeros": (model.activation(out.last_z) == 0).float().mean((-2, -1)),
        "train/grad_norm": torch.as_tensor(grad_norm, dtype=torch.float32, device=out.loss.device),
    }
    for name in ("lr", "beta", "temp", "eps"):
        scalars[f"sched/{name}"] = getattr(values, name)
    return {k: v.detach().float().reshape(-1) for k, v in scalars.items()}


class PopulationLog(RunLog):
    """A population run's output: `RunLog`'s progress, banner and run-wide scalars, plus
    each member's scalars, dictionary and final metrics in its own TensorBoard run and
    the member table. `members`: all of them; `share`: this rank's `RankShare` when the
    members are split across ranks (their metrics and weights are gathered to the main
    process), else None (every member on every rank: metrics averaged over the ranks)."""

    def __init__(self, run_dir, is_main: bool, name: str, start_step: int, last_step: int,
                 log_every: int, samples_per_step: int, members: list[Member], share=None):
        super().__init__(run_dir, is_main, name, start_step, last_step, log_every, samples_per_step)
        self.members, self.share = members, share
        self.member_logs = MemberLogs(run_dir, [m.name for m in members], start_step, is_main)
        if is_main and start_step == 0:
            write_members_tsv(run_dir, members)

    def train_step(self, step: int, result, model, values, accelerator) -> None:
        if step % self.log_every == 0 or step == self.last_step:
            metrics = member_batch_metrics(result.out, model, values, result.grad_norm)
            if self.share is None:
                reduced = accelerator.reduce(torch.stack(list(metrics.values())), "mean")
                metrics = dict(zip(metrics, reduced, strict=True))
            if model.is_poisson:
                metrics["sched/n_exp_first"] = model.n_exp[:, 0].float()
                metrics["sched/n_exp_last"] = model.n_exp[:, -1].float()
            if self.share is not None:
                metrics = self.share.gather_columns(metrics)  # None off the main process
            if not self.is_main:
                return
            self.member_logs.scalars(metrics, step)
            now = time.perf_counter()
            rate = (step - self._step) * self.samples_per_step / max(now - self._t, 1e-9)
            self._t, self._step = now, step
            self.scalars({"perf/samples_per_s": rate}, step)
            means = {k: float(v.mean()) for k, v in metrics.items()}
            self._progress(step, {**means, "perf/samples_per_s": rate})
        if self.bar is not None:
            self.bar.update(1)

    def validation(self, values: list[dict[str, float]], model, step: int) -> None:
        """values: every member's validation; model: this rank's (all ranks call this)."""
        if values:
            self.member_logs.scalars({k: [v[k] for v in values] for k in values[0]}, step)
        self.member_logs.dictionaries(model.W if self.share is None else self.share.gather_rows(model.W), step)

    def finish(self, config, checkpoint, model, val: list[dict[str, float]], step: int,
               total_steps: int, logged: bool) -> None:
        if not logged:
            self.validation(val, model, step)
        if not self.is_main:
            return
        results = {m.name: v for m, v in zip(self.members, val, strict=True)}
        table = write_members_tsv(self.run_dir, self.members, results)
        self.member_logs.hparams(self.members, results)
        lines = [f"done: {step} steps" + ("" if step >= total_steps else
                                          f" (stopped at {step:,} of {total_steps:,} scheduled steps)")]
        for member, v in zip(self.members, val, strict=True):
            lines.append(f"  {member.name}: validation R^2 pooled {v.get('val/r2_pooled', math.nan):.3f}, "
                         f"zero latents {100 * v.get('val/zeros', math.nan):.1f}%")
        lines += [f"member table:     {table}",
                  f"TensorBoard logs: {self.run_dir / 'members'}   (tensorboard --logdir {self.run_dir})",
                  f"checkpoint:       {checkpoint}"]
        self.say("\n".join(lines))

    def close(self) -> None:
        super().close()
        self.member_logs.close()
