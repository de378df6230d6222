"""The trainer: TBPTT over inference steps, driven by Accelerate or DeepSpeed (SPEC 6, 9).

`train` reads top to bottom: set up (back end, members and their placement, data, model,
optimiser, resume), then for each batch: schedule values, `train_batch`, n_exp tracking,
logging, validation, checkpoints and stop signals. One code path serves one model and a
sweep (a plain run is a population of one member), one CPU, many GPUs and many nodes.

Conventions: `batch_size` is per process; the effective batch is batch_size x processes x
grad_accum under data parallelism (micro-batches of one batch share each optimiser step);
members split across ranks (`placement`) each get batch_size x grad_accum, as on one
process. A global step is one batch; the schedules are functions of it. Every member's
sampler noise comes from its own generator, re-seeded at every global step from (its
seed, the data rank, the step): a resumed run draws exactly what an uninterrupted one
draws, with no generator state to save.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from fondtrain.config import RunConfig, save_yaml, with_input_dim
from fondtrain.config.schedules import schedules_for
from fondtrain.config.sweep import Member, run_members
from fondtrain.errors import UserError
from fondtrain.model.n_exp import NExpTracker
from fondtrain.model.vae import IterativeVAE
from fondtrain.runs import files as run_files
from fondtrain.seeding import stream_seed
from fondtrain.train import checkpoint as ckpt
from fondtrain.train.agreement import stop_everywhere
from fondtrain.train.backends import make_backend
from fondtrain.train.batch import make_inputs, train_batch
from fondtrain.train.divergence import DivergenceWatch
from fondtrain.train.log_faults import open_log
from fondtrain.train.metrics import validate
from fondtrain.train.optim import MemberAdamax
from fondtrain.train.placement import Placement
from fondtrain.train.resume import adapt_position, check_backend, load_latest, newest_sound
from fondtrain.train.run_identity import check_resume, default_run_name
from fondtrain.train.run_lock import RunLock
from fondtrain.train.run_log import RunLog
from fondtrain.train.signals import StopRequest, die_with_parent, requeue_slurm_job
from fondtrain.train.state import RunState

STOP_CHECK_EVERY = 5


@dataclass
class TrainResult:
    """What `train` leaves: the run directory, the trained model (this rank's members),
    the global step reached, whether a stop signal ended it early, and the last validation
    (one dict per member, every member)."""

    run_dir: Path
    model: IterativeVAE
    step: int
    stopped: bool
    validation: list[dict[str, float]]


def train(config: RunConfig) -> TrainResult:
    """Train (or resume) the run `runs/<name>` described by `config`."""
    die_with_parent()  # a worker whose launcher is killed must not train on alone
    stop = StopRequest()  # before the back end starts: a SIGTERM during rendezvous is kept
    log = lock = None
    try:
        accelerator = make_backend(config)  # an Accelerator, or DeepSpeed behind the same calls
        tc, world = config.train, accelerator.num_processes
        members = run_members(config)  # the sweep's, or the run itself as its one member
        placement = Placement(accelerator, len(members), tc.population_parallel)
        own = placement.members(members)  # the members this rank trains
        run_dir = Path(tc.runs_root) / (tc.name or default_run_name(config))
        ckpt_root = run_dir / "ckpt"
        train_loader, val_loader, data_source = prepare_data(config, accelerator, placement, own)
        config = resolved(config, run_dir.name, train_loader.input_dim)
        members = [dataclasses.replace(m, config=resolved(m.config, run_dir.name, train_loader.input_dim))
                   for m in members]
        own = placement.members(members)
        model, optimizer = build_model(config, own, placement)
        core: IterativeVAE = accelerator.unwrap_model(model)
        steps_per_epoch = train_loader.batches_per_epoch
        total_steps = tc.epochs * steps_per_epoch
        schedules = schedules_for([m.config for m in own], total_steps)
        last_step = min(total_steps, tc.max_steps) if tc.max_steps > 0 else total_steps
        n_exp = NExpTracker(len(own), config.model.t_total, tc.n_exp_refresh_every, accelerator.device)
        state = RunState(world_size=placement.data_world, steps_per_epoch=steps_per_epoch, total_steps=total_steps)
        lock, notes = claim_run_folder(accelerator, config, run_dir)
        resumed_from, resume_notes = resume(accelerator, config, ckpt_root, state, n_exp, placement)
        notes += resume_notes + [n for n in [placement.note([m.name for m in members])] if n]
        if accelerator.is_main_process:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_yaml(config, run_dir / "config.yaml")
        # a full disk met by TensorBoard: a sentence, or a stop after a checkpoint (log_faults)
        log = open_log(lambda: RunLog(run_dir, accelerator.is_main_process, run_dir.name, state.global_step,
                                      last_step, tc.log_every, tc.batch_size * tc.grad_accum * placement.data_world,
                                      members, placement),
                       stop, accelerator, run_dir / "tb")
        log.banner(resumed_from, state.global_step, world, config, steps_per_epoch, total_steps, data_source,
                   accelerator.device)
        for note in notes:
            log.say(f"note: {note}")
        watch = DivergenceWatch(accelerator, core, config, last_step, ckpt_root, members, placement.own.start)
        saved_at, stopped, validation, validated_at = time.monotonic(), False, [], -1
        while state.global_step < last_step and not stopped:
            if state.batch_in_epoch >= steps_per_epoch:
                state.next_epoch()
                n_exp.reset()
            for batch in train_loader.epoch(state.epoch, skip_batches=state.batch_in_epoch):
                values = schedules.at(state.global_step)
                x = batch["x"].to(accelerator.device, non_blocking=True)
                core.generators = member_generators(own, placement.data_rank, state.global_step, accelerator.device)
                inputs = make_inputs(config, x, stream_seed(config.data.seed, "feeder", placement.data_rank,
                                                            state.global_step))
                result = train_batch(model, core, optimizer, accelerator, inputs, values, config)
                state.advance(values.eps)
                step = state.global_step
                watch.observe(step, result)  # on the device; stops a diverged run where the loop syncs
                n_exp.observe(result.max_rates)
                if core.is_poisson:
                    n_exp.refresh(core, step, values.warming_up, placement.collectives)
                log.train_step(step, result, core, values)
                if tc.eval_every and step % tc.eval_every == 0:
                    validation, validated_at = validate_run(core, val_loader, config, placement, values, own), step
                    log.validation(validation, core, step)
                stopped, save_now = agree_stop_and_save(accelerator, step, stop, tc, saved_at)
                if save_now:
                    watch.check(step)
                    save(accelerator, ckpt_root, state, n_exp, config, placement)
                    saved_at = time.monotonic()
                if stopped or step >= last_step:
                    break
        if stopped:
            stop.stopped(accelerator, state.global_step, ckpt_root)  # a fault that asked for it: its sentence
            log.say(f"stopped by signal at step {state.global_step}; checkpoint saved in {ckpt_root}")
            if accelerator.is_main_process and stop.signum == signal.SIGUSR1:
                requeue_slurm_job()
        else:
            validation = finish(accelerator, config, core, val_loader, schedules, own, placement, state,
                                n_exp, log, validation if validated_at == state.global_step else None)
    finally:
        stop.restore()
        if log is not None:
            log.close()
        if lock is not None:
            lock.release()
    return TrainResult(run_dir, core, state.global_step, stopped, validation)


def resolved(config: RunConfig, name: str, input_dim: int) -> RunConfig:
    """The config the run saves: its name, and the input size its data set decides (one
    sentence if the config names another)."""
    return dataclasses.replace(config, train=dataclasses.replace(config.train, name=name),
                               model=with_input_dim(config.model, input_dim, config.data.dataset))


def member_generators(members: list[Member], rank: int, step: int, device) -> list[torch.Generator]:
    """Each member's sampler generator for global step `step` of data rank `rank`."""
    return [torch.Generator(device=device).manual_seed(stream_seed(m.config.train.seed, "sampler", rank, step))
            for m in members]


def validate_run(core, val_loader, config: RunConfig, placement: Placement, values, members) -> list[dict]:
    """`validate` of this rank's members; every rank returns every member's."""
    return placement.gather_all(validate(core, val_loader, config, placement.collectives, values, members))


def finish(accelerator, config: RunConfig, core, val_loader, schedules, members, placement, state: RunState,
           n_exp: NExpTracker, log: RunLog, validation):
    """The end of a run that reached its last step: the final checkpoint (unless ckpt_every
    just wrote it), the final validation (unless `validation` is that of this very step),
    the summary. Returns the validation."""
    ckpt_root = Path(config.train.runs_root) / config.train.name / "ckpt"
    final = run_files.step_dir(ckpt_root, state.global_step)
    if not (final / run_files.COMPLETE).is_file():
        final = save(accelerator, ckpt_root, state, n_exp, config, placement)
    logged = validation is not None
    if not logged:
        validation = validate_run(core, val_loader, config, placement,
                                  schedules.at(max(state.global_step - 1, 0)), members)
    log.finish(final, core, validation, state.global_step, state.total_steps, logged=logged)
    accelerator.wait_for_everyone()
    return validation


def prepare_data(config: RunConfig, accelerator, placement: Placement, members: list[Member]):
    """Build the shards on the main process if missing (the others wait), then the loaders
    of this rank's data (members split across ranks: each reads it all). Returns (train
    loader, validation loader, where the data come from)."""
    from fondtrain.data.loader import MemberOrderLoader, ShardLoader, validation_loader
    from fondtrain.data.shards import ensure_shards, shard_folder

    d, t = config.data, config.train
    error = None
    if accelerator.is_main_process:
        try:
            ensure_shards(d.dataset, d.shards_root, path=d.path, seed=d.seed, say=print)
        except UserError as err:
            error = err
    stop_everywhere(accelerator, error)  # the others wait here, and stop quietly with it
    shard_dir = shard_folder(d.shards_root, d.dataset, d.path)
    common = dict(rank=placement.data_rank, world_size=placement.data_world,
                  seed=d.seed, num_workers=d.num_workers, in_memory=d.in_memory,
                  pin_memory=accelerator.device.type == "cuda")  # so non_blocking copies overlap
    own_orders = t.member_data_order == "own"  # gathered per member from one in-memory copy
    try:  # every rank finds a split too small for its batches (ShardLoader): they leave together
        train_loader = ShardLoader(shard_dir, "train", batch_size=t.batch_size * t.grad_accum,
                                   **(common | {"in_memory": d.in_memory or own_orders}))
        if own_orders:
            seeds = [stream_seed(d.seed, "data_order", m.config.train.seed) for m in members]
            train_loader = MemberOrderLoader(train_loader, seeds)
        val_loader = validation_loader(shard_dir, t.batch_size, **common)
        error = None
    except UserError as err:
        error = err
    stop_everywhere(accelerator, error)
    source = f"{shard_dir}" + (f" (built from {d.path})" if d.path else "")
    return train_loader, val_loader, source


def build_model(config: RunConfig, members: list[Member], placement: Placement):
    """This rank's members as one model (member i initialised as its single run) and
    their MemberAdamax, prepared by the placement; with --compile each TBPTT cycle runs as
    one compiled graph."""
    tc = config.train
    model = IterativeVAE(config.model, [m.config.model for m in members])
    optimizer = MemberAdamax(model.parameters(), lr=[m.config.train.lr for m in members], betas=tuple(tc.betas),
                             eps=1e-8, weight_decay=[m.config.train.weight_decay for m in members])
    model, optimizer = placement.prepare(model, optimizer)
    if tc.compile:
        placement.accelerator.unwrap_model(model).enable_compile()
    return model, optimizer


def resume(accelerator, config: RunConfig, ckpt_root: Path, state: RunState, n_exp: NExpTracker,
           placement: Placement) -> tuple[Path | None, list[str]]:
    """Continue from the newest complete checkpoint (weights, optimiser, the position and
    the n_exp sums into `state` / `n_exp`), each rank taking its own members. Returns
    (the checkpoint or None, notes)."""
    found = load_latest(accelerator, ckpt_root, config.train.backend, load_state=placement.reader())
    if found is None:
        return None, []
    checkpoint, saved = found
    # Another world size (or batch size) moves the data position and schedule clock.
    saved, moved = adapt_position(saved, state.steps_per_epoch, placement.data_world, config.train.epochs)
    loaded = RunState.from_json(saved)
    state.global_step, state.epoch, state.batch_in_epoch = loaded.global_step, loaded.epoch, loaded.batch_in_epoch
    state.eps = placement.members(loaded.eps)
    if loaded.rate_sum:
        n_exp.load_state_dict({"rate_sum": loaded.rate_sum, "rate_count": loaded.rate_count},
                              placement.data_rank, placement.data_world, placement.own)
    return checkpoint, [moved] if moved else []


def claim_run_folder(accelerator, config: RunConfig, run_dir: Path) -> tuple[RunLock | None, list[str]]:
    """Lock the run folder for this run's life (main process) and check that a checkpoint
    found there was trained with the same meaningful settings, before anything is written
    or loaded. Returns (the lock on the main process, notes to print); raises UserError
    naming the other process, or listing the changed settings."""
    lock, notes, error = None, [], None
    if accelerator.is_main_process:
        try:
            lock = RunLock(run_dir).acquire()
            latest = newest_sound(run_dir / "ckpt")  # a corrupt newest one is set aside, with a line
            if latest is not None:
                check_backend(latest, config.train.backend)  # the more precise message first
            resume_note = check_resume(run_dir, latest, config)
            notes = [n for n in (lock.note, resume_note) if n]
        except OSError as err:  # before anything else is written: a read-only or full disk
            error = UserError(f"cannot write the run folder {run_dir} ({err.strerror or err}): give "
                              "--runs_root a folder you can write to.")
        except UserError as err:
            error = err
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        if error is not None and lock is not None:
            lock.release()
            lock = None
    stop_everywhere(accelerator, error)  # the other ranks wait here, and stop quietly with it
    return lock, notes


def agree_stop_and_save(accelerator, step: int, stop: StopRequest, tc, saved_at: float) -> tuple[bool, bool]:
    """(stop now, checkpoint now), the same on every rank. A signal reaches the ranks at
    different moments and their clocks differ, so with several ranks they agree by one tiny
    all-reduce every STOP_CHECK_EVERY batches (it syncs the host; SLURM's USR1@120 leaves
    minutes, a few batches are seconds). Checkpoints: every ckpt_every steps, and when
    ckpt_minutes have passed since the last one."""
    timed = tc.ckpt_minutes > 0 and time.monotonic() - saved_at >= 60.0 * tc.ckpt_minutes
    stop_now = stop.requested
    if accelerator.num_processes > 1:
        if step % STOP_CHECK_EVERY:
            stop_now = timed = False
        else:
            flags = torch.tensor([float(stop_now), float(timed)], device=accelerator.device)
            stop_now, timed = (bool(v > 0) for v in accelerator.reduce(flags, "sum").tolist())
    return stop_now, stop_now or timed or bool(tc.ckpt_every and step % tc.ckpt_every == 0)


def save(accelerator, ckpt_root: Path, state: RunState, n_exp: NExpTracker, config: RunConfig,
         placement: Placement) -> Path:
    """Checkpoint the run at its current step, every member in one layout whatever the
    placement (every rank calls this)."""
    trainer_state = dataclasses.replace(state, **placement.trainer_state(state.eps, n_exp)).to_json()
    return ckpt.save_checkpoint(accelerator, ckpt_root, state.global_step, trainer_state, config,
                                config.train.keep_last, placement.writer())
