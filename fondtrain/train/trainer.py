"""The trainer: TBPTT over inference steps, driven by Accelerate or DeepSpeed (SPEC 6).

`train` reads top to bottom: set up (back end, data, model, optimiser, resume), then for
each batch: schedule values, `tbptt_step`, n_exp tracking, logging, validation,
checkpoints and stop signals. One code path serves one CPU, many GPUs and many nodes.

Conventions: `batch_size` is per process; the effective batch is batch_size x processes x
grad_accum (micro-batches of one batch share each optimiser step); a population whose
members are split across ranks (`population_ranks`) gives each member batch_size x
grad_accum, as one process does. A global step is one batch; the schedules are functions
of it.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from fondtrain import run_files
from fondtrain.config import RunConfig, save_yaml
from fondtrain.errors import UserError
from fondtrain.model.vae import IterativeVAE
from fondtrain.schedules import schedule_for
from fondtrain.seeding import stream_seed
from fondtrain.sweep import members_from_sweep
from fondtrain.train import checkpoint as ckpt
from fondtrain.train.agreement import stop_everywhere
from fondtrain.train.backends import make_backend
from fondtrain.train.divergence import DivergenceWatch
from fondtrain.train.log_faults import open_log
from fondtrain.train.metrics import validate
from fondtrain.train.n_exp import NExpTracker
from fondtrain.train.population import (
    MemberOrderLoader,
    PopulationLog,
    build_population,
    population_inputs,
    population_schedule,
    seed_member_generators,
)
from fondtrain.train.population_ranks import RankShare, rank_share
from fondtrain.train.resume import adapt_position, check_backend, load_latest, newest_sound, reseed_if_rng_missing
from fondtrain.train.run_identity import check_resume, default_run_name
from fondtrain.train.run_lock import RunLock
from fondtrain.train.run_log import RunLog
from fondtrain.train.signals import StopRequest, die_with_parent, requeue_slurm_job
from fondtrain.train.state import RunState
from fondtrain.train.step import make_inputs, tbptt_step

STOP_CHECK_EVERY = 5


@dataclass
class TrainResult:
    """What `train` leaves: the run directory, the trained model (this rank's copy; a
    population split across ranks: this rank's members), the global step reached, whether
    a stop signal ended it early, and the last validation (a population's: one dict per
    member, every member)."""

    run_dir: Path
    model: IterativeVAE
    step: int
    stopped: bool
    validation: dict[str, float] | list[dict[str, float]]


def train(config: RunConfig) -> TrainResult:
    """Train (or resume) the run `runs/<name>` described by `config`."""
    die_with_parent()  # a worker whose launcher is killed must not train on alone
    stop = StopRequest()  # before the back end starts: a SIGTERM during rendezvous is kept
    log = lock = None
    try:
        accelerator = make_backend(config)  # an Accelerator, or DeepSpeed behind the same calls
        tc, world = config.train, accelerator.num_processes
        share = rank_share(config, accelerator)  # members split across ranks, else None
        data_rank, data_world = (0, 1) if share else (accelerator.process_index, world)
        tc.name = tc.name or default_run_name(config)
        run_dir = Path(tc.runs_root) / tc.name
        ckpt_root = run_dir / "ckpt"
        train_loader, val_loader = prepare_data(config, accelerator, data_rank, data_world)
        config.model = dataclasses.replace(config.model, input_dim=train_loader.input_dim)
        members = members_from_sweep(config, tc.sweep) if tc.sweep else None  # a population
        own = share.members(members) if share else members  # the members this rank trains
        if members is not None and tc.member_data_order == "own":
            train_loader = MemberOrderLoader(train_loader, own, config.data.seed)
        model, optimizer, compiled = build_model(config, accelerator, own, share)
        core: IterativeVAE = accelerator.unwrap_model(model)
        steps_per_epoch = train_loader.batches_per_epoch
        total_steps = tc.epochs * steps_per_epoch
        schedule = schedule_for(config, total_steps) if members is None else \
            population_schedule(own, total_steps, accelerator.device)
        last_step = min(total_steps, tc.max_steps) if tc.max_steps > 0 else total_steps
        n_exp = NExpTracker(config.model.t_total, tc.n_exp_refresh_every, accelerator.device, core.n_members)
        state = RunState(world_size=data_world, steps_per_epoch=steps_per_epoch, total_steps=total_steps)
        lock, notes = claim_run_folder(accelerator, config, run_dir)
        resumed_from, resume_notes = resume_or_start(accelerator, config, ckpt_root, state, n_exp, share)
        notes += resume_notes + ([share.placement_note(members)] if share else [])
        if accelerator.is_main_process:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_yaml(config, run_dir / "config.yaml")
        log_args = (run_dir, accelerator.is_main_process, tc.name, state.global_step, last_step,
                    tc.log_every, tc.batch_size * tc.grad_accum * data_world)
        # a full disk met by TensorBoard: a sentence, or a stop after a checkpoint (log_faults)
        log = open_log(lambda: RunLog(*log_args) if members is None else PopulationLog(*log_args, members, share),
                       stop, accelerator, run_dir / "tb")
        log.banner(resumed_from, state.global_step, world, config, steps_per_epoch, total_steps)
        for note in notes:
            log.say(f"note: {note}")
        watch = DivergenceWatch(accelerator, core, config, last_step, ckpt_root, members,
                                share.own.start if share else 0)
        saved_at, stopped, validation, validated_at = time.monotonic(), False, {}, -1
        while state.global_step < last_step and not stopped:
            if state.batch_in_epoch >= steps_per_epoch:
                state.next_epoch()
                n_exp.reset()
            for batch in train_loader.epoch(state.epoch, skip_batches=state.batch_in_epoch):
                values = schedule.at(state.global_step)
                x = batch["x"].to(accelerator.device, non_blocking=True)
                inputs = batch_inputs(config, core, own, x, data_rank, state.global_step)
                result = tbptt_step(model, core, optimizer, accelerator, inputs, values, config, compiled)
                state.advance(values.eps)
                step = state.global_step
                watch.observe(step, result)  # on the device; stops a diverged run where the loop syncs
                n_exp.observe(result.max_rates)
                if core.is_poisson:
                    n_exp.refresh(core, step, values.warming_up, share.local if share else accelerator)
                log.train_step(step, result, core, values, accelerator)
                if tc.eval_every and step % tc.eval_every == 0:
                    validation, validated_at = validate_run(core, val_loader, config, accelerator, values,
                                                            own, share), step
                    log.validation(validation, core, step)
                stopped, save_now = agree_stop_and_save(accelerator, step, stop, tc, saved_at)
                if save_now:
                    watch.check(step)
                    save(accelerator, ckpt_root, state, n_exp, config, share)
                    saved_at = time.monotonic()
                if stopped or step >= last_step:
                    break
        if stopped:
            stop.stopped(accelerator, state.global_step, ckpt_root)  # a fault that asked for it: its sentence
            log.say(f"stopped by signal at step {state.global_step}; checkpoint saved in {ckpt_root}")
            if accelerator.is_main_process and stop.signum == signal.SIGUSR1:
                requeue_slurm_job()
        else:
            validation = finish(accelerator, config, core, val_loader, schedule, own, share, state,
                                n_exp, log, validation if validated_at == state.global_step else None)
    finally:
        stop.restore()
        if log is not None:
            log.close()
        if lock is not None:
            lock.release()
    return TrainResult(run_dir, core, state.global_step, stopped, validation)


def batch_inputs(config: RunConfig, core: IterativeVAE, members, x: torch.Tensor, rank: int,
                 step: int) -> torch.Tensor:
    """The batch as the model sees it at global step `step` (feeder frames drawn from the
    run's seed, rank and step); a population also reseeds its members' sampler streams."""
    feeder_seed = stream_seed(config.data.seed, "feeder", rank, step)
    if members is None:
        return make_inputs(config, x, feeder_seed)
    seed_member_generators(core, members, rank, step)
    return population_inputs(config, x, feeder_seed)


def validate_run(core, val_loader, config: RunConfig, accelerator, values, members, share: RankShare | None):
    """`validate` of this rank's model (a population: of its `members`); members split
    across ranks validate on this rank alone and every rank returns every member's."""
    if share is None:
        return validate(core, val_loader, config, accelerator, values, members=members)
    return share.gather_all(validate(core, val_loader, config, share.local, values, members=members))


def finish(accelerator, config: RunConfig, core, val_loader, schedule, members, share, state: RunState,
           n_exp: NExpTracker, log, validation):
    """The end of a run that reached its last step: the final checkpoint (unless ckpt_every
    just wrote it), the final validation (unless `validation` is that of this very step),
    the summary. Returns the validation."""
    ckpt_root = Path(config.train.runs_root) / config.train.name / "ckpt"
    final = run_files.step_dir(ckpt_root, state.global_step)
    if not (final / run_files.COMPLETE).is_file():
        final = save(accelerator, ckpt_root, state, n_exp, config, share)
    logged = validation is not None
    if not logged:
        validation = validate_run(core, val_loader, config, accelerator,
                                  schedule.at(max(state.global_step - 1, 0)), members, share)
    log.finish(config, final, core, validation, state.global_step, state.total_steps, logged=logged)
    accelerator.wait_for_everyone()
    return validation


def prepare_data(config: RunConfig, accelerator, rank: int, world: int):
    """Build the shards on the main process if missing (the others wait), then the loaders
    of data rank `rank` of `world` (members split across ranks: each reads it all, 0 of 1)."""
    from fondtrain.data.loader import ShardLoader, validation_loader
    from fondtrain.data.shards import ensure_shards, shard_folder

    d, t = config.data, config.train
    error = None
    if accelerator.is_main_process:
        try:
            ensure_shards(d.dataset, d.shards_root, path=d.path, seed=d.seed)
        except UserError as err:
            error = err
    stop_everywhere(accelerator, error)  # the others wait here, and stop quietly with it
    shard_dir = shard_folder(d.shards_root, d.dataset, d.path)
    common = dict(rank=rank, world_size=world,
                  seed=d.seed, num_workers=d.num_workers, in_memory=d.in_memory,
                  pin_memory=accelerator.device.type == "cuda")  # so non_blocking copies overlap
    own_orders = t.member_data_order == "own"  # gathered per member from one in-memory copy
    train_loader = ShardLoader(shard_dir, "train", batch_size=t.batch_size * t.grad_accum,
                               **(common | {"in_memory": d.in_memory or own_orders}))
    val_loader = validation_loader(shard_dir, t.batch_size, **common)
    if train_loader.batches_per_epoch < 1:
        raise UserError(f"the {d.dataset} training split has fewer samples than one batch "
                        f"per process: lower --batch_size (now {t.batch_size}).")
    return train_loader, val_loader


def build_model(config: RunConfig, accelerator, members: list | None = None, share: RankShare | None = None):
    """The model (initial weights from config.model.seed), its Adamax, both prepared, and
    with --compile the compiled TBPTT cycle (None where it does not apply: then eager); a
    sweep's `members`: the population and its PopulationAdamax (trained eagerly), this
    rank's alone when `share` splits them across ranks."""
    if share is not None:
        return (*share.build(config, members), None)
    if members is not None:
        return (*build_population(config, members, accelerator), None)
    tc = config.train
    model = IterativeVAE(config.model)
    optimizer = torch.optim.Adamax(model.parameters(), lr=tc.lr, betas=tuple(tc.betas),
                                   eps=1e-8, weight_decay=tc.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)
    return model, optimizer, compiled_cycle(config, accelerator, model, optimizer) if tc.compile else None


def compiled_cycle(config: RunConfig, accelerator, model, optimizer):
    """--compile: each TBPTT window (forward, backward, clip, Adamax) as one graph
    (`fondtrain.model.compiled_cycle`), for one process of the Accelerate back end in float32;
    anything else warns in one line and trains eagerly."""
    from fondtrain.model.compiled_cycle import CompiledCycle

    tc = config.train
    try:
        if accelerator.num_processes > 1 or tc.backend != "accelerate" or tc.mixed_precision != "no":
            raise ValueError("the compiled cycle runs one process of the accelerate back end in float32")
        return CompiledCycle(accelerator.unwrap_model(model), getattr(optimizer, "optimizer", optimizer),
                             tc.grad_accum)
    except ValueError as err:
        if accelerator.is_main_process:
            print(f"fondtrain: --compile: {err}; training eagerly", file=sys.stderr, flush=True)
        return None


def resume_or_start(accelerator, config: RunConfig, ckpt_root: Path, state: RunState,
                    n_exp: NExpTracker, share: RankShare | None = None) -> tuple[Path | None, list[str]]:
    """Continue from the newest complete checkpoint (weights, optimiser, RNG states, the
    position and the n_exp sums into `state` / `n_exp`), or seed a new run's sampler noise.
    Members split across ranks (`share`) take their slices of the whole population's
    checkpoint and read the data as one process (the population's noise is keyed by
    member and step: no RNG state to restore). Returns (the checkpoint or None, notes)."""
    tc, rank = config.train, accelerator.process_index
    world = 1 if share else accelerator.num_processes  # the data's world size
    found = load_latest(accelerator, ckpt_root, tc.backend, load_state=share.load_state if share else None)
    if found is None:
        torch.manual_seed(stream_seed(tc.seed, "sampler", rank))  # every rank its own noise
        return None, []
    checkpoint, saved = found
    # Another world size (or batch size) moves the data position and schedule clock.
    saved, moved = adapt_position(saved, state.steps_per_epoch, world, tc.epochs)
    loaded = RunState.from_json(saved)
    state.global_step, state.epoch, state.batch_in_epoch = loaded.global_step, loaded.epoch, loaded.batch_in_epoch
    state.eps = share.members(loaded.eps) if share and isinstance(loaded.eps, list) else loaded.eps
    if loaded.rate_sum:
        n_exp.load_state_dict({"rate_sum": loaded.rate_sum, "rate_count": loaded.rate_count},
                              0 if share else rank, world, share.own if share else None)
    reseeded = None if share else reseed_if_rng_missing(checkpoint, rank, tc.seed, state.global_step)
    if reseeded:
        print(f"fondtrain: {reseeded}", file=sys.stderr, flush=True)
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
         share: RankShare | None = None) -> Path:
    """Checkpoint the run at its current step (every rank calls this); members split
    across ranks are gathered into one process's checkpoint (population_ranks)."""
    members = n_exp.state_dict(accelerator) if share is None else share.trainer_state(state, n_exp)
    trainer_state = dataclasses.replace(state, **members).to_json()
    return ckpt.save_checkpoint(accelerator, ckpt_root, state.global_step, trainer_state, config,
                                config.train.keep_last, share.write_state if share else None)
