"""Sharded, atomic, resumable checkpoints: `runs/<name>/ckpt/step-N/`.

A checkpoint directory holds what `accelerator.save_state` writes (model weights as
safetensors, optimiser, RNG states of every rank), fondtrain's `trainer_state.json`
(global step, epoch, batches consumed in the epoch, n_exp statistics: everything the
loop needs to continue the same run), the resolved `config.yaml`, and a `COMPLETE`
marker written last. Everything is written into `ckpt/.tmp-step-N` and renamed, so a
crash leaves either the previous complete checkpoint or a new complete one; a directory
without the marker (or a leftover temporary) is ignored and cleaned up.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from fondtrain.config import RunConfig
from fondtrain.run_files import COMPLETE, PREFIX, TRAINER_STATE, list_checkpoints, step_dir


def save_checkpoint(accelerator, ckpt_root: Path, step: int, trainer_state: dict[str, Any],
                    config: RunConfig, keep_last: int) -> Path:
    """Write checkpoint step-N atomically from every rank (all ranks must call this)."""
    from fondtrain.config import save_yaml

    final = step_dir(ckpt_root, step)
    tmp = ckpt_root / f".tmp-{final.name}"
    if accelerator.is_main_process:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=1))
        save_yaml(config, tmp / "config.yaml")
        (tmp / COMPLETE).write_text(f"{step}\n")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        prune_checkpoints(ckpt_root, keep_last)
    accelerator.wait_for_everyone()
    return final


def prune_checkpoints(ckpt_root: Path, keep_last: int) -> None:
    """Keep the newest `keep_last` complete checkpoints; drop partial leftovers."""
    for leftover in ckpt_root.glob(".tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    complete = list_checkpoints(ckpt_root)
    for old in complete[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for partial in ckpt_root.glob(f"{PREFIX}*"):
        if partial.is_dir() and not (partial / COMPLETE).is_file():
            shutil.rmtree(partial, ignore_errors=True)
