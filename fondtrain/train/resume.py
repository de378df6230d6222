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
* The RNG state. Each rank's sampler noise comes from its own saved RNG state; a rank that
  did not exist when the checkpoint was written has none and is reseeded (and says so).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fondtrain.seeding import stream_seed
from fondtrain.train.backends import DEEPSPEED_DIR, rng_file


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


def reseed_if_rng_missing(checkpoint: Path, rank: int, seed: int, step: int) -> str | None:
    """Reseed this rank's torch RNG when the checkpoint has no RNG state for it."""
    if rng_file(checkpoint, rank).is_file():
        return None
    torch.manual_seed(stream_seed(seed, "sampler", rank, step))
    return (f"rank {rank}: {checkpoint.name} has no RNG state for this rank (it was written by fewer "
            "processes); reseeded its sampler noise")


def checkpoint_backend(checkpoint: Path) -> str:
    """'deepspeed' or 'accelerate': which back end wrote a checkpoint."""
    return "deepspeed" if (Path(checkpoint) / DEEPSPEED_DIR).is_dir() else "accelerate"


def check_backend(checkpoint: Path, backend: str) -> None:
    """Stop with one sentence when a checkpoint was written by the other back end."""
    from fondtrain.errors import UserError

    written_by = checkpoint_backend(checkpoint)
    if written_by != backend:
        raise UserError(f"{checkpoint} was written by the {written_by} back end: resume it with "
                        f"--backend {written_by}, or start a new run (another --name).")
