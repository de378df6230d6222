"""Optional torch.compile of the deterministic parts of an inference step.

The update (free-energy gradient and clamped steps) and the outputs (decode, NLL, KL,
loss) are compiled, forward and backward, as fused kernels (Triton on GPU, C++/OpenMP
on CPU). The samplers stay eager: their random draws keep the generator's stream, and
on CPU the relaxed Poisson sampler's working set shrinks as entries finish, which
fixed-shape kernels cannot follow.

Guarded: where torch.compile is unavailable, or compiling or running a compiled part
fails, a warning says so and the step stays (or goes back to) eager. eps, temp and beta
enter as 0-dim tensors so that their schedules do not trigger recompiles.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch


class CompiledStep:
    """The compiled update and outputs of one model.

    update(model, x, components, z, eps, temp, prior) -> new components;
    outputs(model, x, components, prior, z, beta, temp) -> (x_hat, recon, kl, loss):
    the same signatures as the plain functions they compile. A call returns None when
    the compiled part fails (after a warning): the caller then runs the plain one and
    drops this object for good.
    """

    def __init__(self, update: Callable, outputs: Callable, mode: str | None = None, **options):
        self._update = torch.compile(update, mode=mode, **options)
        self._outputs = torch.compile(outputs, mode=mode, **options)

    def update(self, model, x, components, z, eps, temp, prior):
        return _call(self._update, model, x, components, z, eps, temp, prior)

    def outputs(self, model, x, components, prior, z, beta, temp):
        return _call(self._outputs, model, x, components, prior, z, beta, temp)


def compile_step(update: Callable, outputs: Callable, mode: str | None = None,
                 **options) -> CompiledStep | None:
    """A CompiledStep of the two plain functions, or None (with a warning) where
    torch.compile is missing or refuses. mode: torch.compile's (e.g. "reduce-overhead"
    for CUDA graphs on GPU; None = default)."""
    if not hasattr(torch, "compile"):
        return None
    try:
        return CompiledStep(update, outputs, mode, **options)
    except Exception as exc:  # noqa: BLE001 - any failure means: stay eager
        warnings.warn(f"torch.compile unavailable ({exc}); the step stays eager", stacklevel=3)
        return None


def _call(fn: Callable, model, x, components, *rest):
    """fn with the Python scalars of `rest` as 0-dim tensors; None if it fails."""
    ref = components[0]
    rest = tuple(torch.as_tensor(v, dtype=ref.dtype, device=ref.device)
                 if isinstance(v, int | float) else v for v in rest)
    try:
        return fn(model, x, components, *rest)
    except Exception as exc:  # noqa: BLE001 - compiler missing or broken: stay eager
        warnings.warn(f"compiled step failed ({type(exc).__name__}: {exc}); using the "
                      "eager step from now on", stacklevel=4)
        return None
