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

from fondtrain.config import RunConfig, load_yaml
from fondtrain.errors import UserError

COMPLETE = "COMPLETE"
TRAINER_STATE = "trainer_state.json"
MODEL_FILE = "model.safetensors"
PREFIX = "step-"


def step_dir(ckpt_root: Path, step: int) -> Path:
    return ckpt_root / f"{PREFIX}{step:08d}"


def list_checkpoints(ckpt_root: str | Path) -> list[Path]:
    """Complete checkpoints under ckpt_root, oldest first."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir()
             if p.is_dir() and p.name.startswith(PREFIX) and (p / COMPLETE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(ckpt_root: str | Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = list_checkpoints(ckpt_root)
    return found[-1] if found else None


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


def read_trainer_state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / TRAINER_STATE).read_text())


def resolve_checkpoint(path: str | Path) -> Path:
    """A run directory (newest complete checkpoint), a checkpoint directory, or a file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist: give a run directory, a checkpoint or a model file.")
    if path.is_file():
        return path
    if (path / COMPLETE).is_file():
        return path
    newest = latest_checkpoint(path / "ckpt")
    if newest is None:
        raise UserError(
            f"{path} has no complete checkpoint (looked in {path / 'ckpt'}): train first or "
            "give a checkpoint directory."
        )
    return newest


def load_model(path: str | Path):
    """Load a trained model for evaluation or export.

    path: a run directory, a checkpoint directory `ckpt/step-N`, a `model.safetensors`
    (with `config.yaml` beside it or in the run directory), or a reference `.pt` file.
    Returns (IterativeVAE in eval mode, RunConfig or None for reference checkpoints).
    """
    from safetensors.torch import load_file

    from fondtrain.model.upstream import load_upstream_checkpoint
    from fondtrain.model.vae import IterativeVAE

    target = resolve_checkpoint(path)
    if target.is_file() and target.suffix == ".pt":
        return load_upstream_checkpoint(target).eval(), None
    weights = target if target.is_file() else target / MODEL_FILE
    if not weights.is_file():
        raise UserError(f"{target} holds no {MODEL_FILE}: it is not a fondtrain checkpoint.")
    config_path = next((p for p in (weights.parent / "config.yaml",
                                    weights.parent.parent.parent / "config.yaml")
                        if p.is_file()), None)
    if config_path is None:
        raise UserError(f"no config.yaml next to {weights}: keep the checkpoint's config with it.")
    config = RunConfig.from_dict(load_yaml(config_path))
    model = IterativeVAE(config.model)
    try:
        model.load_state_dict(load_file(str(weights)))
    except (RuntimeError, KeyError) as err:
        raise UserError(f"{weights} does not match its config.yaml ({err.__class__.__name__}).") from err
    return model.eval(), config
