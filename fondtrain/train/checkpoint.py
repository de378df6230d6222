"""Sharded, atomic, resumable checkpoints: `runs/<name>/ckpt/step-N/`.

A checkpoint directory holds every member's weights (model.safetensors) and optimiser
state (optimizer.bin) in one layout whatever the placement (`placement.Placement.writer`,
in the files Accelerate's save_state writes; a DeepSpeed engine adds its own folder),
fondtrain's `trainer_state.json`
(global step, epoch, batches consumed in the epoch, n_exp statistics: everything the
loop needs to continue the same run), the resolved `config.yaml`, `checksums.json` (the
SHA-256 of every other file, so that a corrupt file is found before it is loaded) and a
`COMPLETE` marker written last. Everything is written into `ckpt/.tmp-step-N` and renamed, so a
crash leaves either the previous complete checkpoint or a new complete one; a directory
without the marker (or a leftover temporary) is ignored and cleaned up.

Before a save the oldest checkpoints beyond keep_last - 1 are deleted (never the newest
one), so that a save needs room for max(keep_last, 2) checkpoints and a lower --keep_last
frees room at the next save. A save that fails on the disk (full, read-only, a file where
a folder must be) removes its temporary folder, keeps the checkpoints left and stops the
run with one sentence: the folder, the error, the free space and the room keep_last needs.

A checkpoint whose weights are not all finite (a diverged run) is never written: every
rank checks the models its back end holds before anything is pruned or written, and every
rank stops with one sentence naming the last finite checkpoint, which is kept.

A checkpoint that fails its checks when a run resumes is set aside (`set_aside`:
renamed step-N.corrupt) so that it is neither used nor mistaken for a finished save.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fondtrain.config import RunConfig
from fondtrain.errors import UserError
from fondtrain.runs.files import (  # noqa: F401  (checksums, verify_checksums: this module's API too)
    CHECKSUMS,
    COMPLETE,
    PREFIX,
    TRAINER_STATE,
    checksums,
    list_checkpoints,
    step_dir,
    verify_checksums,
)
from fondtrain.runs.permissions import apply_umask


def save_checkpoint(accelerator, ckpt_root: Path, step: int, trainer_state: dict[str, Any],
                    config: RunConfig, keep_last: int, write_state: Callable[[str], None] | None = None) -> Path:
    """Write checkpoint step-N atomically from every rank (all ranks must call this).

    write_state(folder), called on every rank, writes the model, optimiser and back-end
    files (default: `accelerator.save_state`; the trainer passes its placement's writer,
    which gathers every member into one layout, `placement.Placement.writer`).

    Raises UserError (every rank) when a rank cannot write it or its weights are not
    finite; see the module docstring.
    """
    from fondtrain.config import save_yaml

    final = step_dir(ckpt_root, step)
    tmp = ckpt_root / f".tmp-{final.name}"
    main = accelerator.is_main_process

    def make_tmp() -> None:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        prune_checkpoints(ckpt_root, max(keep_last - 1, 1), keep=final)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()

    def check_weights() -> None:
        bad = nonfinite_weights(held_models(accelerator))
        if bad:
            raise NonFiniteWeights(bad)

    def finish() -> None:
        (tmp / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=1))
        save_yaml(config, tmp / "config.yaml")
        (tmp / CHECKSUMS).write_text(json.dumps(checksums(tmp), indent=1))
        (tmp / COMPLETE).write_text(f"{step}\n")
        apply_umask(tmp)  # safetensors writes 0600 whatever the umask
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)

    # Each stage runs where it must, then all ranks agree that it worked (one all-reduce,
    # which also keeps them in step), so that a failing rank cannot leave the others waiting.
    if write_state is None:
        def write_state(folder: str) -> None:
            accelerator.save_state(folder, safe_serialization=True)

    stages = ((check_weights, True), (make_tmp, main), (lambda: write_state(str(tmp)), True), (finish, main))
    for action, here in stages:
        error = _attempt(action) if here else None
        failed = _failed_anywhere(accelerator, error)
        if failed:
            break
    else:
        if main:
            prune_checkpoints(ckpt_root, keep_last)
        accelerator.wait_for_everyone()
        return final
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
    if failed == NON_FINITE:
        raise UserError(_nonfinite_message(ckpt_root, final.name, error), quiet=not main, agreed=True)
    raise UserError(_disk_error_message(ckpt_root, final.name, error, keep_last), quiet=not main, agreed=True)


class NonFiniteWeights(Exception):
    """The weights about to be checkpointed hold NaN or infinity (args[0]: which)."""


DISK, NON_FINITE = 1, 2  # what stopped a save, agreed across ranks


def held_models(accelerator) -> list[torch.nn.Module]:
    """The models a back end saves: the DeepSpeed engine's module, or every model an
    Accelerator prepared (a population split across ranks: this rank's members)."""
    engine = getattr(accelerator, "engine", None)
    if engine is not None:
        return [engine.module]
    return list(getattr(accelerator, "_models", []))


def nonfinite_weights(models: list[torch.nn.Module]) -> str | None:
    """The names of the models' floating-point weights that hold NaN or infinity ("W,
    log_lr"), or None (one host sync per tensor: only at a save)."""
    bad = [name for model in models for name, value in model.state_dict().items()
           if value.is_floating_point() and not bool(torch.isfinite(value).all())]
    return ", ".join(dict.fromkeys(name.removeprefix("module.") for name in bad)) or None


def _nonfinite_message(ckpt_root: Path, name: str, error: Exception | None) -> str:
    which = f" ({error.args[0]})" if isinstance(error, NonFiniteWeights) else ""
    existing = list_checkpoints(ckpt_root) if ckpt_root.is_dir() else []
    last = f"the last finite checkpoint is {existing[-1]}" if existing else "no checkpoint was kept"
    return (f"not writing checkpoint {name} in {ckpt_root}: its weights are not finite{which}, the "
            f"training diverged; {last}: lower --lr or --grad_clip.")


# How the writers report a failed write without an OSError: safetensors ("I/O error: No
# space left on device (os error 28)") and torch.save's zip writer ("unexpected pos", its
# words for a short write on a full disk).
WRITE_FAILURES = {"No space left": errno.ENOSPC, "unexpected pos": errno.ENOSPC,
                  "Read-only file system": errno.EROFS, "I/O error": errno.EIO}


def _attempt(action) -> Exception | None:
    """Run one stage of a save; a failed write comes back as an OSError, non-finite weights
    as NonFiniteWeights, a bug is raised."""
    try:
        action()
    except (OSError, NonFiniteWeights) as err:
        return err
    except Exception as err:
        code = next((c for text, c in WRITE_FAILURES.items() if text in str(err)), None)
        if code is None:
            raise
        return OSError(code, os.strerror(code))
    return None


def _failed_anywhere(accelerator, error: Exception | None) -> int:
    """0, DISK or NON_FINITE: whether (and how) a stage failed on any rank."""
    mine = 0 if error is None else NON_FINITE if isinstance(error, NonFiniteWeights) else DISK
    if accelerator.num_processes == 1:
        return mine
    flags = torch.tensor([float(mine == DISK), float(mine == NON_FINITE)], device=accelerator.device)
    disk, non_finite = (v > 0 for v in accelerator.reduce(flags, "sum").tolist())
    return NON_FINITE if non_finite else DISK if disk else 0


def save_room(keep_last: int) -> int:
    """How many checkpoints exist at once during a save with --keep_last `keep_last`."""
    return max(keep_last, 2)


def _disk_error_message(ckpt_root: Path, name: str, error: Exception | None, keep_last: int) -> str:
    """One sentence: where, why, the free space and the room keep_last needs."""
    why = (error.strerror or str(error)) if isinstance(error, OSError) else "it failed on another process"
    existing = list_checkpoints(ckpt_root) if ckpt_root.is_dir() else []
    need, advice = "", "free space or make the folder writable"
    if existing:
        one = folder_bytes(existing[-1])
        need = f" (about {_size(one * save_room(keep_last))}, {_size(one)} each)"
    if keep_last > 2:
        advice += (", or lower --keep_last (with --keep_last 2 a save needs room for 2; the older "
                   "checkpoints are deleted before the next save)")
    place = next((p for p in [ckpt_root, *ckpt_root.parents] if p.is_dir()), Path("/"))
    free = _size(shutil.disk_usage(place).free)
    kept = f"the {len(existing)} previous checkpoint(s) are kept" if existing else "no checkpoint was kept"
    return (f"cannot write checkpoint {name} in {ckpt_root}: {why}; {free} free there, and "
            f"--keep_last {keep_last} needs room for {save_room(keep_last)} checkpoints during a save{need}: "
            f"{advice} ({kept}).")


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def prune_checkpoints(ckpt_root: Path, keep_last: int, keep: Path | None = None) -> None:
    """Keep the newest `keep_last` complete checkpoints (and `keep`, the one about to be
    replaced: its step is written again); drop partial leftovers."""
    for leftover in ckpt_root.glob(".tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    complete = [c for c in list_checkpoints(ckpt_root) if c != keep]
    for old in complete[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for partial in ckpt_root.glob(f"{PREFIX}*"):
        if partial.is_dir() and partial.name[len(PREFIX):].isdigit() and not (partial / COMPLETE).is_file():
            shutil.rmtree(partial, ignore_errors=True)


def set_aside(checkpoint: Path) -> Path:
    """Rename a checkpoint that failed its checks to step-N.corrupt (step-N.corrupt-2, ...
    when that exists): kept for inspection, never listed, loaded or counted again."""
    target = checkpoint.with_name(f"{checkpoint.name}.corrupt")
    n = 1
    while target.exists():
        n += 1
        target = checkpoint.with_name(f"{checkpoint.name}.corrupt-{n}")
    checkpoint.rename(target)
    return target
