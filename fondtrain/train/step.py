"""One training step: a batch's n_iters_outer TBPTT windows of t_train inference steps,
each window one backward, clip and optimiser step over grad_accum micro-batches (SPEC 6).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from fondtrain.config import RunConfig
from fondtrain.schedules import ScheduleValues
from fondtrain.train.backends import clip_and_step, clip_and_step_members


@dataclass
class StepResult:
    """What the rest of the loop needs from a step: the last micro-batch's output of the
    last window (CycleOutput, for the logged metrics), the gradient norm of the last
    optimiser step, and the largest rate at each inference step t over the micro-batches,
    [t_total] (a population's [P, t_total]; None for Gaussian posteriors)."""

    out: object
    grad_norm: torch.Tensor | float
    max_rates: torch.Tensor | None
    compile_s: float = 0.0  # seconds this step spent compiling (kept out of samples/s)


def make_inputs(config: RunConfig, x: torch.Tensor, seed: int) -> torch.Tensor:
    """The batch as the model sees it over t_total steps: x [B, M] itself (stationary) or
    the feeder's frames [t_total, B, M], drawn with `seed`."""
    if config.data.feeder == "stationary":
        return x
    from fondtrain.data.feeders import make_feeder

    feeder = make_feeder(config.data.feeder, x, config.model.t_total, seed=seed)
    return torch.stack([feeder[t] for t in range(config.model.t_total)])


def tbptt_step(model, core, optimizer, accelerator, inputs: torch.Tensor, values: ScheduleValues,
               config: RunConfig, compiled=None) -> StepResult:
    """Train on one batch: inputs [B, M] or [t_total, B, M] with B = batch_size x grad_accum
    (a population, `core.n_members` P: [B, M], [P, B, M] or [t_total, P, B, M], values
    `PopulationValues` [P], a `PopulationAdamax`, each member clipped to its own norm).

    model: what `accelerator.prepare` returned (called for a cycle); core: the unwrapped
    IterativeVAE. Each micro-batch keeps its own posterior state across the windows; the
    state is re-attached to u_init between windows (gradients do not cross a window).
    compiled: a `CompiledCycle` (--compile): the same windows as one captured graph each;
    once it fails it returns None and the eager windows below take over.
    """
    if compiled is not None:
        done = compiled.train_batch(inputs, lr=values.lr, beta=values.beta, eps=values.eps,
                                    temp=values.temp, max_norm=values.max_norm)
        if done is not None:
            return StepResult(done.out, done.grad_norm, done.max_rates, done.compile_s)
    m, grad_accum = config.model, config.train.grad_accum
    population = core.n_members is not None
    if population:
        getattr(optimizer, "optimizer", optimizer).set_lr(values.lr)  # under accelerate's wrapper
    else:
        for group in optimizer.param_groups:
            group["lr"] = values.lr
    micro_inputs = inputs.chunk(grad_accum, dim=-2)
    states = [core.init_state(mi.shape[-2]) for mi in micro_inputs]
    batch_rates = []
    for outer in range(m.n_iters_outer):
        t0 = outer * m.t_train
        window_rates = []
        for j, mi in enumerate(micro_inputs):
            window = mi[t0:t0 + m.t_train] if core.is_sequence(mi) else mi
            # Gradients are synchronised only on the last micro-batch of a window.
            last_micro = j == len(micro_inputs) - 1
            with nullcontext() if last_micro else accelerator.no_sync(model):
                out = model(window, states[j], t0, m.t_train, values.temp, values.beta, values.eps)
                # a population's loss is [P]: the sum gives each member its own gradient
                accelerator.backward(out.loss.sum() / grad_accum)
            states[j] = core.reattach_to_init(out.state)
            if out.max_rate is not None:
                window_rates.append(out.max_rate)
        step_fn = clip_and_step_members if population else clip_and_step
        grad_norm = step_fn(accelerator, model, optimizer, values.max_norm)
        if window_rates:
            batch_rates.append(torch.stack(window_rates).amax(0))
    rates = torch.cat(batch_rates) if batch_rates else None  # [t_total] or [t_total, P]
    return StepResult(out, grad_norm, rates.T if population and rates is not None else rates)
