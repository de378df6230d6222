"""Resuming a checkpoint on a different number of processes (or with another batch size).

Under DDP (the accelerate back end) nothing in a checkpoint is sharded: the weights and
the Adamax state are whole, so any number of processes can load them. Two things do
depend on the world size and are adapted here:

* The data position. An epoch has N // (world x batch) batches per rank, so "batch k of
  epoch e" means a different place in the data on another world size. The run continues
  in the same epoch at the same *fraction* of it, and the global step (the schedules'
  clock) is recomputed as epoch x batches_per_epoch + batch, so that the learning rate,
  beta, eps and temperature continue from the same fraction of training and the run still
  ends after the configured number of epochs. (Samples of the interrupted epoch may be
  seen twice or not at all; an exact continuation needs the same world size.)
(No RNG state depends on the world size: every member's sampler noise is re-seeded at each
global step from its seed, the data rank and the step.)

`load_latest` picks the checkpoint to resume: the newest complete one that loads. One that
fails to load (a corrupt model, optimiser or trainer state) is reported in one line, set
aside (renamed step-N.corrupt, so that the retrained step is saved again instead of being
taken for done) and the one before it is tried; all ranks agree on the checkpoint they use.
`newest_sound` does the same with the checksums alone, on the main process before the
run's settings are compared with the newest checkpoint's config.yaml.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fondtrain.errors import UserError
from fondtrain.runs.files import TRAINER_STATE, checkpoint_problem, list_checkpoints
from fondtrain.train.backends import DEEPSPEED_DIR
from fondtrain.train.checkpoint import set_aside

TRAINER_STATE_KEYS = ("global_step", "epoch", "batch_in_epoch")


def _warn(message: str) -> None:
    print(f"fondtrain: {message}", file=sys.stderr, flush=True)


def load_latest(accelerator, ckpt_root: Path, backend: str, warn: Callable[[str], None] = _warn,
                load_state: Callable[[str], None] | None = None) -> tuple[Path, dict[str, Any]] | None:
    """Load the newest complete checkpoint under ckpt_root that loads, on every rank
    (through `load_state(folder)`, by default `accelerator.load_state`).

    Each one that fails is reported (main process) in one line and the previous one is
    tried; returns (checkpoint, its trainer_state.json) or None when there is none. Raises
    UserError when checkpoints exist but none loads (or one was written by the other back
    end). All ranks must call this.
    """
    candidates = list_checkpoints(ckpt_root)[::-1]
    for checkpoint in candidates:
        check_backend(checkpoint, backend)
        state, error = _try_load(load_state or accelerator.load_state, checkpoint)
        if _failed_anywhere(accelerator, error is not None):
            if accelerator.is_main_process:
                aside = set_aside(checkpoint)
                warn(f"cannot load {checkpoint} ({error or 'failed on another rank'}); "
                     f"moved it to {aside.name} and trying the checkpoint before it")
            continue
        return checkpoint, state
    if candidates:
        raise UserError(f"none of the {len(candidates)} checkpoints in {ckpt_root} loads (see above): "
                        f"delete {ckpt_root.parent} to start the run again, or give another --name.",
                        quiet=not accelerator.is_main_process, agreed=True)
    return None


def newest_sound(ckpt_root: Path, warn: Callable[[str], None] = _warn) -> Path | None:
    """The newest complete checkpoint that passes its checks (`run_files.checkpoint_problem`:
    checksums, a readable config.yaml); each newer one is reported and set aside. Main
    process only, while it holds the run's lock."""
    for checkpoint in list_checkpoints(ckpt_root)[::-1]:
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            return checkpoint
        aside = set_aside(checkpoint)
        warn(f"cannot load {checkpoint} ({problem}); moved it to {aside.name} and trying the "
             "checkpoint before it")
    return None


def _try_load(load_state: Callable[[str], None], checkpoint: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(trainer state, None) after loading everything, or (None, why it failed)."""
    corrupt = checkpoint_problem(checkpoint)
    if corrupt:
        return None, corrupt
    try:
        state = json.loads((checkpoint / TRAINER_STATE).read_text())
        missing = [k for k in TRAINER_STATE_KEYS if k not in state]
        if missing:
            return None, f"{TRAINER_STATE} lacks {', '.join(missing)}"
        load_state(str(checkpoint))
    except UserError:
        raise
    except Exception as err:  # any reading error: corrupt, truncated or unreadable files
        first_line = (str(err).strip().splitlines() or [""])[0][:160]
        return None, f"{err.__class__.__name__}: {first_line}"
    return state, None


def _failed_anywhere(accelerator, failed: bool) -> bool:
    if accelerator.num_processes == 1:
        return failed
    flag = torch.tensor([1.0 if failed else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(flag, "sum").item() > 0)


def adapt_position(saved: dict[str, Any], steps_per_epoch: int, world_size: int,
                   epochs: int) -> tuple[dict[str, Any], str | None]:
    """Map a trainer state saved with another world size / epoch length onto this run.

    saved: trainer_state.json (global_step, epoch, batch_in_epoch, world_size and
    steps_per_epoch, or total_steps for older checkpoints); returns (state, a message, or
    None when nothing changed).
    """
    old_world = int(saved.get("world_size", world_size))
    old_spe = int(saved.get("steps_per_epoch") or saved.get("total_steps", 0) // max(epochs, 1)
                  or steps_per_epoch)
    if old_world == world_size and old_spe == steps_per_epoch:
        return saved, None
    state = dict(saved)
    epoch, batch = int(saved["epoch"]), int(saved["batch_in_epoch"])
    new_batch = min(steps_per_epoch, round(batch * steps_per_epoch / old_spe))
    state.update(batch_in_epoch=new_batch, global_step=epoch * steps_per_epoch + new_batch,
                 world_size=world_size, steps_per_epoch=steps_per_epoch)
    message = (f"checkpoint written by {old_world} process(es) with {old_spe} batches per epoch; "
               f"now {world_size} with {steps_per_epoch}: continuing epoch {epoch} at batch "
               f"{new_batch} (was {batch}), global step {saved['global_step']} -> {state['global_step']}")
    return state, message


def checkpoint_backend(checkpoint: Path) -> str:
    """'deepspeed' or 'accelerate': which back end wrote a checkpoint."""
    return "deepspeed" if (Path(checkpoint) / DEEPSPEED_DIR).is_dir() else "accelerate"


def check_backend(checkpoint: Path, backend: str) -> None:
    """Stop with one sentence when a checkpoint was written by the other back end."""
    written_by = checkpoint_backend(checkpoint)
    if written_by != backend:
        raise UserError(f"{checkpoint} was written by the {written_by} back end: resume it with "
                        f"--backend {written_by}, or start a new run (another --name).")
