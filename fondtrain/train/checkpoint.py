"""Sharded, atomic, resumable checkpoints: `runs/<name>/ckpt/step-N/`.

A checkpoint directory holds what `accelerator.save_state` writes (model weights as
safetensors, optimiser, RNG states of every rank), fondtrain's `trainer_state.json`
(global step, epoch, batches consumed in the epoch, n_exp statistics: everything the
loop needs to continue the same run), the resolved `config.yaml`, `checksums.json` (the
SHA-256 of every other file, so that a corrupt file is found before it is loaded) and a
`COMPLETE` marker written last. Everything is written into `ckpt/.tmp-step-N` and renamed, so a
crash leaves either the previous complete checkpoint or a new complete one; a directory
without the marker (or a leftover temporary) is ignored and cleaned up.

A save that fails on the disk (full, read-only, a file where a folder must be) removes its
temporary folder, keeps the previous checkpoints and stops the run with one sentence: the
folder, the error, the free space and the room keep_last needs (keep_last + 1 checkpoints
exist for a moment during a save, before the oldest is pruned).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fondtrain.config import RunConfig
from fondtrain.errors import UserError
from fondtrain.permissions import apply_umask
from fondtrain.run_files import COMPLETE, PREFIX, TRAINER_STATE, list_checkpoints, step_dir

CHECKSUMS = "checksums.json"


def save_checkpoint(accelerator, ckpt_root: Path, step: int, trainer_state: dict[str, Any],
                    config: RunConfig, keep_last: int, write_state: Callable[[str], None] | None = None) -> Path:
    """Write checkpoint step-N atomically from every rank (all ranks must call this).

    write_state(folder), called on every rank, writes the model, optimiser and back-end
    files (default: `accelerator.save_state`; the trainer passes its placement's writer,
    which gathers every member into one layout, `placement.Placement.writer`).

    Raises UserError (every rank) when a rank cannot write it; see the module docstring.
    """
    from fondtrain.config import save_yaml

    final = step_dir(ckpt_root, step)
    tmp = ckpt_root / f".tmp-{final.name}"
    main = accelerator.is_main_process

    def make_tmp() -> None:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()

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

    stages = ((make_tmp, main), (lambda: write_state(str(tmp)), True), (finish, main))
    for action, here in stages:
        error = _attempt(action) if here else None
        if _failed_anywhere(accelerator, error):
            break
    else:
        if main:
            prune_checkpoints(ckpt_root, keep_last)
        accelerator.wait_for_everyone()
        return final
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
    raise UserError(_disk_error_message(ckpt_root, final.name, error, keep_last))


# How the writers report a failed write without an OSError: safetensors ("I/O error: No
# space left on device (os error 28)") and torch.save's zip writer ("unexpected pos", its
# words for a short write on a full disk).
WRITE_FAILURES = {"No space left": errno.ENOSPC, "unexpected pos": errno.ENOSPC,
                  "Read-only file system": errno.EROFS, "I/O error": errno.EIO}


def _attempt(action) -> OSError | None:
    """Run one stage of a save; a failed write comes back as an OSError, a bug is raised."""
    try:
        action()
    except OSError as err:
        return err
    except Exception as err:
        code = next((c for text, c in WRITE_FAILURES.items() if text in str(err)), None)
        if code is None:
            raise
        return OSError(code, os.strerror(code))
    return None


def _failed_anywhere(accelerator, error: OSError | None) -> bool:
    if accelerator.num_processes == 1:
        return error is not None
    flag = torch.tensor([0.0 if error is None else 1.0], device=accelerator.device)
    return bool(accelerator.reduce(flag, "sum").item() > 0)


def _disk_error_message(ckpt_root: Path, name: str, error: OSError | None, keep_last: int) -> str:
    """One sentence: where, why, the free space and the room keep_last needs."""
    why = (error.strerror or str(error)) if error is not None else "it failed on another process"
    existing = list_checkpoints(ckpt_root) if ckpt_root.is_dir() else []
    need = ""
    if existing:
        one = folder_bytes(existing[-1])
        need = f" (about {_size(one * (keep_last + 1))}, {_size(one)} each)"
    place = next((p for p in [ckpt_root, *ckpt_root.parents] if p.is_dir()), Path("/"))
    free = _size(shutil.disk_usage(place).free)
    kept = f"the {len(existing)} previous checkpoint(s) are kept" if existing else "no checkpoint was kept"
    return (f"cannot write checkpoint {name} in {ckpt_root}: {why}; {free} free there, and "
            f"--keep_last {keep_last} needs room for {keep_last + 1} checkpoints during a save{need}: "
            f"free space, make the folder writable or lower --keep_last ({kept}).")


def checksums(folder: Path) -> dict[str, str]:
    """{relative path: SHA-256} of every file in a checkpoint folder but the marker files."""
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        if name in (CHECKSUMS, COMPLETE):
            continue
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        out[name] = digest.hexdigest()
    return out


def verify_checksums(checkpoint: Path) -> str | None:
    """None when every file matches checksums.json (or there is none), else which do not."""
    listed = checkpoint / CHECKSUMS
    if not listed.is_file():
        return None
    try:
        expected = json.loads(listed.read_text())
    except ValueError:
        return f"{CHECKSUMS} is corrupt"
    found = checksums(checkpoint)
    bad = [name for name, digest in expected.items() if found.get(name) != digest]
    return f"{', '.join(bad)} differ(s) from {CHECKSUMS}" if bad else None


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


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
