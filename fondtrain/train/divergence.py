"""Divergence: a loss, gradient or weight that is not finite stops the run with one sentence.

Reading `torch.isfinite(loss)` on the host after every step would sync it with the device
on every step (DESIGN: no host syncs in the hot loop). Instead `observe` folds each step's
loss and gradient norm into on-device flags: the first step at which each quantity stopped
being finite, per member of a population (the same code for one model: P = 1). The flags,
and the weights themselves, are read only where the loop reads the device anyway: every
log_every steps, at validation, n_exp refresh and ckpt_every steps, at the last step
(`observe` checks on those steps) and before any other save (`check`). The ranks gather
their flags, so every rank stops at the same step with the same sentence: the step, which
quantity (and member), the last finite checkpoint and what to try. Nothing after that step
is saved, and `checkpoint.save_checkpoint` refuses non-finite weights whoever calls it.

Under fp16 mixed precision a non-finite gradient norm is the loss scaler's business (it
skips that step and lowers the scale), so only the loss and the weights are watched there;
so under DeepSpeed, which reports a gradient norm it did not compute as NaN (ZeRO with
compute_grad_norm false).

Non-finite steps are never skipped: skipping needs the verdict before the optimiser step
(a host sync per step, or a masked update inside every optimiser and back end), and a run
that produced NaN once has a learning rate or clip norm that will produce it again.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fondtrain.errors import UserError
from fondtrain.runs import files as run_files

NEVER = torch.iinfo(torch.int64).max  # "has stayed finite" in the first-step flags
QUANTITIES = ("loss", "gradient norm", "weights")


def finite_per_member(value, n_members: int) -> torch.Tensor:
    """[P] booleans: whether member p's entries of `value` (a tensor of any shape whose
    leading axis is the member axis, or one number for every member) are all finite."""
    value = torch.as_tensor(value).detach()
    if value.dim() == 0:  # one number for every member
        return torch.isfinite(value).reshape(1).expand(n_members)
    return torch.isfinite(value).reshape(n_members, -1).all(1)


class DivergenceWatch:
    """Watches one rank's model (`core`, the unwrapped IterativeVAE) in a run that ends at
    `last_step`. `members`: every member of the run (a plain run's one, named ""),
    `offset` the index of the first one `core` holds (members split across ranks: its
    block's start)."""

    def __init__(self, accelerator, core, config, last_step: int, ckpt_root: Path, members: list,
                 offset: int = 0):
        tc = config.train
        self.accelerator, self.core, self.train_config = accelerator, core, tc
        self.ckpt_root, self.last_step = ckpt_root, last_step
        self.n_members = core.n_members
        self.names = [m.name for m in members]
        self.offset = offset
        self.watch_gradient = tc.mixed_precision != "fp16" and tc.backend != "deepspeed"
        self.cadence = [every for every in (tc.log_every, tc.eval_every, tc.ckpt_every) if every]
        self.refresh_every = tc.n_exp_refresh_every if core.is_poisson else 0
        device = next(core.parameters()).device
        self.first = torch.full((2, self.n_members), NEVER, dtype=torch.int64, device=device)
        self.checked_at = -1

    def observe(self, step: int, result) -> None:
        """After the batch that made global step `step` (BatchResult `result`): fold its loss
        and gradient norm into the flags on the device; on the steps where the loop syncs
        anyway, `check`."""
        device = self.first.device
        grad_norm = result.grad_norm if self.watch_gradient else 0.0  # see the module docstring
        finite = torch.stack([finite_per_member(result.out.loss, self.n_members).to(device),
                              finite_per_member(grad_norm, self.n_members).to(device)])
        self.first = torch.minimum(self.first, torch.where(finite, NEVER, step))
        if self.due(step):
            self.check(step)

    def due(self, step: int) -> bool:
        return (any(step % every == 0 for every in self.cadence) or step >= self.last_step
                or bool(self.refresh_every and (step - 1) % self.refresh_every == 0))

    def check(self, step: int) -> None:
        """Read the flags and the weights (every rank calls this at the same steps); raise
        UserError on every rank when anything has not been finite."""
        if step == self.checked_at:
            return
        self.checked_at = step
        weights = torch.stack([finite_per_member(p, self.n_members) for p in self.core.parameters()]).all(0)
        first = torch.cat([self.first, torch.where(weights, NEVER, step)[None].to(self.first.device)])
        first = self._everywhere(first)  # [3, P of the whole run]
        if int(first.min()) == NEVER:
            return
        at = int(first.min())
        quantity, member = (int(i) for i in (first == at).nonzero()[0])
        raise UserError(self.message(at, QUANTITIES[quantity], member),
                        quiet=not self.accelerator.is_main_process, agreed=True)

    def _everywhere(self, first: torch.Tensor) -> torch.Tensor:
        """This rank's [3, P_own] flags as the earliest over every rank, [3, P]."""
        accelerator = self.accelerator
        if accelerator.num_processes == 1:
            return first.cpu()
        n_total = len(self.names)
        whole = torch.full((3, n_total), NEVER, dtype=torch.int64, device=first.device)
        whole[:, self.offset:self.offset + first.shape[1]] = first
        gathered = accelerator.gather(whole)  # [world x 3, P]
        return gathered.reshape(-1, 3, n_total).amin(0).cpu()

    def message(self, step: int, quantity: str, member: int) -> str:
        tc = self.train_config
        who = f" of member {self.names[member]}" if self.names[member] else ""
        last = run_files.latest_checkpoint(self.ckpt_root)
        what = "are" if quantity == "weights" else "is"
        then = ("continue from it with --resume force, or start again with --name NEW" if last else
                "train again")
        kept = f"the last finite checkpoint is {last}" if last else "no checkpoint was written before it"
        return (f"training diverged at step {step}: the {quantity}{who} {what} not finite (NaN or "
                f"infinite); nothing after it was saved and {kept}: lower --lr (now {tc.lr:g}) or "
                f"--grad_clip (now {tc.grad_clip:g}) and {then}.")
