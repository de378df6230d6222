"""The training loop: TBPTT cycles over inference steps, driven by Accelerate (SPEC 6).

Read it top to bottom: set up (accelerator, data, model, optimiser, resume), then for each
batch: n_iters_outer cycles of t_train steps, each with one backward, clip and Adamax
step, the state re-attached to u_init between cycles; then bookkeeping (schedules,
n_exp refresh, logging, validation, checkpoints, stop signals). One code path serves one
CPU, many GPUs and many nodes.

Conventions: `batch_size` is per process; the effective batch is batch_size x processes x
grad_accum (micro-batches of one batch share each optimiser step). A global step is one
batch; the schedules are functions of it.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from fondtrain import run_files
from fondtrain.config import RunConfig, save_yaml
from fondtrain.errors import UserError
from fondtrain.model.vae import IterativeVAE, agree_max_rates
from fondtrain.train import checkpoint as ckpt
from fondtrain.train.backends import clip_and_step, make_backend
from fondtrain.train.metrics import batch_metrics, validate
from fondtrain.train.resume import adapt_position, check_backend, reseed_if_rng_missing
from fondtrain.train.schedules import Schedule
from fondtrain.train.signals import StopRequest, requeue_slurm_job
from fondtrain.train.tensorboard import RunLogger

STOP_CHECK_EVERY = 5


def run_name(config: RunConfig) -> str:
    """Deterministic default run name, so that re-running a command resumes its run."""
    m = config.model
    return (f"{config.data.dataset}-{m.preset}-k{m.n_latents}-t{m.t_train}"
            f"-b{m.beta_outer:g}-s{config.train.seed}")


def make_schedule(config: RunConfig, total_steps: int) -> Schedule:
    t, m = config.train, config.model
    return Schedule(
        total_steps=total_steps, lr=t.lr, lr_min=t.lr_min, warmup_portion=t.warmup_portion,
        grad_clip=t.grad_clip, beta_outer=m.beta_outer, beta_min=t.beta_min,
        kl_const_portion=t.kl_const_portion, kl_anneal_portion=t.kl_anneal_portion,
        anneal_temperature=m.posterior == "poisson", temp_start=t.temp_start,
        temp_stop=t.temp_stop, temp_anneal_portion=t.temp_anneal_portion,
    )


def prepare_data(config: RunConfig, accelerator):
    """Build the shards on the main process if missing (the others wait), then loaders."""
    from fondtrain.data.loader import ShardLoader
    from fondtrain.data.shards import ensure_shards, shard_folder

    d, t = config.data, config.train
    if accelerator.is_main_process:
        ensure_shards(d.dataset, d.shards_root, path=d.path, seed=d.seed)
    accelerator.wait_for_everyone()
    shard_dir = shard_folder(d.shards_root, d.dataset, d.path)
    common = dict(rank=accelerator.process_index, world_size=accelerator.num_processes,
                  seed=d.seed, num_workers=d.num_workers, in_memory=d.in_memory,
                  pin_memory=accelerator.device.type == "cuda")  # so non_blocking copies overlap
    train_loader = ShardLoader(shard_dir, "train", batch_size=t.batch_size * t.grad_accum, **common)
    val_loader = ShardLoader(shard_dir, "val", batch_size=t.batch_size, shuffle=False, **common)
    return train_loader, val_loader


def make_inputs(config: RunConfig, x: torch.Tensor, step: int) -> torch.Tensor:
    """The batch as the model sees it over t_total steps: [B, M] (stationary) or [T, B, M]."""
    if config.data.feeder == "stationary":
        return x
    from fondtrain.data.feeders import make_feeder

    feeder = make_feeder(config.data.feeder, x, config.model.t_total, seed=step)
    return torch.stack([feeder[t] for t in range(config.model.t_total)])


@dataclass
class TrainResult:
    """What `train` leaves: the run directory, the trained model (this rank's copy), the
    global step reached, whether a stop signal ended it early, and the last validation."""

    run_dir: Path
    model: IterativeVAE
    step: int
    stopped: bool
    validation: dict[str, float]


def train(config: RunConfig) -> TrainResult:
    """Train (or resume) the run `runs/<name>` described by `config`."""
    accelerator = make_backend(config)  # an Accelerator, or DeepSpeed behind the same calls
    stop = StopRequest()  # first, so that a signal during set-up is not lost
    tc = config.train
    if not tc.name:
        tc.name = run_name(config)
    run_dir = Path(tc.runs_root) / tc.name
    ckpt_root = run_dir / "ckpt"
    is_main = accelerator.is_main_process
    say = print if is_main else (lambda *a, **k: None)

    train_loader, val_loader = prepare_data(config, accelerator)
    if train_loader.batches_per_epoch < 1:
        raise UserError(f"the {config.data.dataset} training split has fewer samples than one batch "
                        f"per process: lower --batch_size (now {tc.batch_size}).")
    config.model = dataclasses.replace(config.model, input_dim=train_loader.input_dim)

    torch.manual_seed(config.model.seed)
    model = IterativeVAE(config.model)
    optimizer = torch.optim.Adamax(model.parameters(), lr=tc.lr, betas=tuple(tc.betas),
                                   eps=1e-8, weight_decay=tc.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    core: IterativeVAE = accelerator.unwrap_model(model)
    if tc.compile:
        core.enable_compile()

    steps_per_epoch = train_loader.batches_per_epoch
    total_steps = tc.epochs * steps_per_epoch
    schedule = make_schedule(config, total_steps)
    last_step = min(total_steps, tc.max_steps) if tc.max_steps > 0 else total_steps

    # ------------------------------------------------------------- resume or start
    state = {"global_step": 0, "epoch": 0, "batch_in_epoch": 0,
             "rate_sum": [0.0] * config.model.t_total, "rate_count": 0}
    resume_from = run_files.latest_checkpoint(ckpt_root)
    if resume_from is not None:
        check_backend(resume_from, tc.backend)
        accelerator.load_state(str(resume_from))
        # Another world size (or batch size) moves the data position and schedule clock.
        saved, moved = adapt_position(run_files.read_trainer_state(resume_from), train_loader.batches_per_epoch,
                                      accelerator.num_processes, tc.epochs)
        state.update(saved)
        say(f"resuming {run_dir} from {resume_from.name} (step {state['global_step']})")
        if moved:
            say(f"note: {moved}")
        reseeded = reseed_if_rng_missing(resume_from, accelerator.process_index, tc.seed, state["global_step"])
        if reseeded:
            print(f"fondtrain: {reseeded}", file=sys.stderr, flush=True)
    else:
        # Every rank draws different sampler noise; model init was seeded identically above.
        torch.manual_seed(config.train.seed * 1000 + accelerator.process_index + 1)
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_yaml(config, run_dir / "config.yaml")
    logger = RunLogger(run_dir / "tb", purge_step=state["global_step"]) if is_main else None
    device = accelerator.device
    rate_sum = torch.tensor(state["rate_sum"], device=device)
    rate_count = state["rate_count"]
    step = state["global_step"]
    world = accelerator.num_processes
    samples_per_step = tc.batch_size * tc.grad_accum * world
    progress = None
    if is_main:
        from tqdm import tqdm

        progress = tqdm(total=last_step, initial=step, desc=tc.name, dynamic_ncols=True,
                        mininterval=1.0 if sys.stdout.isatty() else 30.0, file=sys.stdout)
    t_log, step_log = time.perf_counter(), step
    last_val: dict[str, float] = {}

    def trainer_state() -> dict:
        return {"global_step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                "rate_sum": rate_sum.tolist(), "rate_count": rate_count,
                "world_size": world, "total_steps": total_steps, "steps_per_epoch": steps_per_epoch}

    def save() -> Path:
        return ckpt.save_checkpoint(accelerator, ckpt_root, step, trainer_state(), config, tc.keep_last)

    # ------------------------------------------------------------- the loop
    stopped = False
    epoch = state["epoch"]
    batch_in_epoch = state["batch_in_epoch"]
    while step < last_step and not stopped:
        if batch_in_epoch >= steps_per_epoch:
            epoch, batch_in_epoch = epoch + 1, 0
            rate_sum.zero_()
            rate_count = 0
        for batch in train_loader.epoch(epoch, skip_batches=batch_in_epoch):
            x = batch["x"].to(device, non_blocking=True)
            values = schedule.at(step)
            for group in optimizer.param_groups:
                group["lr"] = values.lr
            inputs = make_inputs(config, x, step)
            micro_inputs = inputs.chunk(tc.grad_accum, dim=-2)
            states = [core.init_state(mi.shape[-2]) for mi in micro_inputs]
            batch_rates = []
            for outer in range(config.model.n_iters_outer):
                t0 = outer * config.model.t_train
                window_rates = []
                for j, mi in enumerate(micro_inputs):
                    window = mi if mi.dim() == 2 else mi[t0:t0 + config.model.t_train]
                    # Gradients are synchronised only on the last micro-batch of a window.
                    last_micro = j == len(micro_inputs) - 1
                    with nullcontext() if last_micro else accelerator.no_sync(model):
                        out = model(window, states[j], t0, config.model.t_train,
                                    values.temp, values.beta, values.eps)
                        accelerator.backward(out.loss / tc.grad_accum)
                    states[j] = core.reattach_to_init(out.state)
                    if out.max_rate is not None:
                        window_rates.append(out.max_rate)
                grad_norm = clip_and_step(accelerator, model, optimizer, values.max_norm)
                if window_rates:
                    batch_rates.append(torch.stack(window_rates).amax(0))
            if batch_rates:
                rate_sum += torch.cat(batch_rates)  # largest rate at each step t, [t_total]
                rate_count += 1
            step += 1
            batch_in_epoch += 1

            # n_exp refresh (Poisson): every n_exp_refresh_every steps after warm-up, from
            # the epoch's running average of the largest rate, agreed on by all ranks.
            if (core.is_poisson and rate_count and not values.warming_up
                    and (step - 1) % tc.n_exp_refresh_every == 0):
                average = rate_sum / rate_count
                core.set_n_exp(agree_max_rates(average, accelerator.gather if world > 1 else None))

            if step % tc.log_every == 0 or step == last_step:
                elapsed = time.perf_counter() - t_log
                metrics = batch_metrics(out, core, values, grad_norm)
                metrics = {k: float(v) for k, v in zip(
                    metrics, accelerator.reduce(torch.stack(list(metrics.values())), "mean").tolist(),
                    strict=True)}
                metrics["perf/samples_per_s"] = (step - step_log) * samples_per_step / max(elapsed, 1e-9)
                t_log, step_log = time.perf_counter(), step
                if is_main:
                    logger.scalars(metrics, step)
                    if core.is_poisson:
                        logger.scalars({"sched/n_exp_first": core.n_exp_at(0),
                                        "sched/n_exp_last": core.n_exp_at(config.model.t_total - 1)}, step)
                    progress.set_postfix(loss=f"{metrics['train/loss']:.4g}",
                                         r2=f"{metrics['train/r2']:.3f}",
                                         sps=f"{metrics['perf/samples_per_s']:.0f}")
            if progress is not None:
                progress.update(1)

            if tc.eval_every and step % tc.eval_every == 0:
                last_val = validate(core, val_loader, config, accelerator, values)
                if is_main:
                    logger.scalars(last_val, step)
                    logger.dictionary(core, step)

            # Ranks agree on a stop every STOP_CHECK_EVERY batches (the all-reduce syncs the
            # host); SLURM's USR1@120 leaves minutes, a few batches are seconds.
            stop_now = step % STOP_CHECK_EVERY == 0 and _agree(accelerator, stop.requested) \
                if world > 1 else stop.requested
            if stop_now or (tc.ckpt_every and step % tc.ckpt_every == 0):
                save()
            if stop_now:
                say(f"stopped by signal at step {step}; checkpoint saved in {ckpt_root}")
                if is_main and stop.signum == signal.SIGUSR1:
                    requeue_slurm_job()
                stopped = True
                break
            if step >= last_step:
                break
    stop.restore()
    if progress is not None:
        progress.close()
    if stopped:
        if logger:
            logger.close()
        return TrainResult(run_dir, core, step, True, last_val)

    # ------------------------------------------------------------- the end
    final = run_files.step_dir(ckpt_root, step)
    if not (final / run_files.COMPLETE).is_file():  # not saved already by ckpt_every
        final = save()
    last_val = validate(core, val_loader, config, accelerator, schedule.at(max(step - 1, 0)))
    if is_main:
        logger.scalars(last_val, step)
        picture = logger.dictionary(core, step, png=run_dir / "dictionary.png")
        logger.hparams(config, last_val)
        logger.close()
        say(_summary(run_dir, final, picture, last_val, step))
    accelerator.wait_for_everyone()
    return TrainResult(run_dir, core, step, False, last_val)


def _agree(accelerator, flag: bool) -> bool:
    """True on every rank if any rank got a stop signal (one tiny all-reduce)."""
    value = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(value, "sum").item() > 0)


def _summary(run_dir: Path, checkpoint: Path | None, picture: Path | None, val: dict, step: int) -> str:
    lines = [
        f"done: {step} steps",
        f"validation R^2 pooled {val.get('val/r2_pooled', math.nan):.3f}, "
        f"median {val.get('val/r2_median', math.nan):.3f}; "
        f"zero latents {100 * val.get('val/zeros', math.nan):.1f}%, "
        f"population sparseness {val.get('val/population_sparseness', math.nan):.3f}, "
        f"lifetime sparseness {val.get('val/lifetime_sparseness', math.nan):.3f}",
        f"TensorBoard logs: {run_dir / 'tb'}   (tensorboard --logdir {run_dir.parent})",
        f"checkpoint:       {checkpoint}",
        f"dictionary:       {picture}",
    ]
    return "\n".join(lines)
