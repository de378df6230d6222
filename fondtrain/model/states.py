"""What the iterative VAEs pass around: a posterior state, one step's outputs, one TBPTT
cycle's outputs. Every shape has the member axis P first (a plain run: P = 1)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class State:
    """Posterior state of a batch: `components` is (u,) or (mu, xi), each [P, B, K]."""

    components: tuple[Tensor, ...]

    def detach(self) -> State:
        return State(tuple(c.detach() for c in self.components))

    @property
    def batch_size(self) -> int:
        return self.components[0].shape[-2]


@dataclass
class StepOutput:
    """What one inference step produces.

    state: posterior after the step; z: fresh sample from it [P, B, K]; x_hat = W a(z)
    [P, B, M]; recon: -log N(x; x_hat, sigma_dec) summed over pixels [P, B]; kl:
    KL(q(new) || q(prior)) per latent [P, B, K]; loss: mean_b(recon + beta sum_k kl) * 256 / M
    of each member [P];
    grad_samples: the samples the state updates used, one per inner iteration; prior:
    the state at the start of the step (the KL's reference).
    """

    state: State
    z: Tensor
    x_hat: Tensor
    recon: Tensor
    kl: Tensor
    loss: Tensor
    grad_samples: tuple[Tensor, ...]
    prior: State


@dataclass
class CycleOutput:
    """A TBPTT cycle's loss of each member [P] (with graph) and detached per-step
    statistics [n_steps, P].

    max_rate: each member's largest posterior rate at each step (Poisson; None for
    Gaussian), feeding the n_exp refresh; last_z, last_x_hat, last_x: the final step's
    sample [P, B, K], reconstruction [P, B, M] and input ([B, M] or [P, B, M]), for logging
    R^2 and sparsity; compile_s: seconds a compiled cycle spent building its graph (0 when
    it reused one), to keep out of samples/s.
    """

    loss: Tensor
    state: State
    step_losses: Tensor
    recon: Tensor
    kl: Tensor
    max_rate: Tensor | None
    last_z: Tensor
    last_x_hat: Tensor
    last_x: Tensor
    compile_s: float = 0.0
