"""Errors that one rank finds and every rank must stop on.

Some checks run on the main process alone while the other ranks wait for it (the run
folder's lock, the settings of the checkpoint to resume, building the shards). If the
main process simply raised, the others would wait in a collective until gloo or NCCL
reported the lost peer with a traceback of their own. `stop_everywhere` replaces that
wait: the ranks agree (one all-reduce) and, when any rank failed, every rank raises a
UserError; the rank that failed says it, the others stop quietly (exit 2, no output).
"""

from __future__ import annotations

import torch

from fondtrain.errors import UserError


def stop_everywhere(accelerator, error: UserError | None) -> None:
    """A barrier that also raises `error` on its rank and a quiet UserError on every other
    rank when any rank passed one (all ranks must call it)."""
    if accelerator.num_processes == 1:
        if error is not None:
            raise error
        return
    flag = torch.tensor([0.0 if error is None else 1.0], device=accelerator.device)
    if accelerator.reduce(flag, "sum").item() == 0:
        return
    if error is not None:
        error.agreed = True
        raise error
    raise UserError("stopped: another process reported the error", quiet=True)
