"""One batch of training (SPEC 6): n_iters_outer TBPTT windows of t_train inference steps,
each window one backward, clip and optimiser step over grad_accum micro-batches, for every
member at once (a plain run is one member).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from fondtrain.config import RunConfig
from fondtrain.config.schedules import ScheduleValues
from fondtrain.model.states import CycleOutput
from fondtrain.train.backends import clip_and_step
from fondtrain.train.optim import set_lr


@dataclass
class BatchResult:
    """What the rest of the loop needs from a batch: the last micro-batch's cycle of the
    last window (for the logged metrics), each member's gradient norm before clipping of
    the last optimiser step [P], each member's largest rate at each inference step over
    the micro-batches [P, t_total] (None for Gaussian posteriors), and the seconds this
    batch spent compiling (kept out of samples/s)."""

    out: CycleOutput
    grad_norm: torch.Tensor
    max_rates: torch.Tensor | None
    compile_s: float = 0.0


def make_inputs(config: RunConfig, x: torch.Tensor, seed: int) -> torch.Tensor:
    """The batch as the model sees it over t_total steps: x [B, M] (every member the same)
    or [P, B, M] (each member its own order) itself when stationary, else the feeder's
    frames [t_total, 1 or P, B, M], drawn with `seed`."""
    if config.data.feeder == "stationary":
        return x
    from fondtrain.data.feeders import make_feeder

    def frames(rows: torch.Tensor) -> torch.Tensor:  # [B, M] -> [t_total, B, M]
        feeder = make_feeder(config.data.feeder, rows, config.model.t_total, seed=seed)
        return torch.stack([feeder[t] for t in range(config.model.t_total)])

    return torch.stack([frames(rows) for rows in (x[None] if x.dim() == 2 else x)], dim=1)


def per_member(values: torch.Tensor, device: torch.device) -> float | torch.Tensor:
    """A schedule value of every member ([P] on the host) as the model takes it: one float
    when the members agree (the usual case, and every plain run: scalar arithmetic, no
    broadcast tensors in the hot loop), else a [P] float32 tensor on the device."""
    first = float(values[0])
    if bool((values == first).all()):
        return first
    return values.to(device=device, dtype=torch.float32, non_blocking=True)


def train_batch(model, core, optimizer, backend, inputs: torch.Tensor, values: ScheduleValues,
                config: RunConfig, noise: Callable | None = None) -> BatchResult:
    """Train every member on one batch: inputs as `make_inputs` gives them, with
    B = batch_size x grad_accum; values: the schedule values of every member ([P]).

    model: what the back end prepared (called for a cycle: DDP sees one forward per
    backward); core: the IterativeVAE inside it. Each micro-batch keeps its own posterior
    state across the windows, re-attached to u_init between windows (gradients do not
    cross a window). The members' losses are summed for backward, so member i's gradient
    is its own loss's; each member is clipped to its own norm. noise(outer, j), for exact
    replay (tests): the noise of window `outer`, micro-batch j, as `IterativeVAE.forward`
    takes it.
    """
    m, grad_accum = config.model, config.train.grad_accum
    set_lr(optimizer, values.lr)
    device = core.W.device
    temp, beta, eps = (per_member(v, device) for v in (values.temp, values.beta, values.eps))
    max_norm = values.max_norm.to(device, non_blocking=True)
    micro_inputs = inputs.chunk(grad_accum, dim=-2)
    states = [core.init_state(mi.shape[-2]) for mi in micro_inputs]
    batch_rates, compile_s = [], 0.0
    for outer in range(m.n_iters_outer):
        t0 = outer * m.t_train
        window_rates = []
        for j, mi in enumerate(micro_inputs):
            window = mi[t0:t0 + m.t_train] if core.is_sequence(mi) else mi
            # gradients are synchronised only on the last micro-batch of a window
            last_micro = j == len(micro_inputs) - 1
            with nullcontext() if last_micro else backend.no_sync(model):
                out = model(window, states[j], t0, m.t_train, temp, beta, eps,
                            None if noise is None else noise(outer, j))
                backend.backward(out.loss.sum() / grad_accum)
            states[j] = core.reattach_to_init(out.state)
            compile_s += out.compile_s
            if out.max_rate is not None:
                window_rates.append(out.max_rate)
        grad_norm = clip_and_step(backend, model, optimizer, max_norm)
        if window_rates:
            batch_rates.append(torch.stack(window_rates).amax(0))  # [t_train, P]
    rates = torch.cat(batch_rates).T if batch_rates else None
    return BatchResult(out, grad_norm, rates, compile_s)
