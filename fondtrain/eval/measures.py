"""Reconstruction and sparsity measures (SPEC 7), on torch tensors.

x, x_hat: [N, M]; z: [N, K] latent samples.
"""

from __future__ import annotations

import torch

FLOAT32_EPS = torch.finfo(torch.float32).eps


def r2_scores(x: torch.Tensor, x_hat: torch.Tensor) -> dict[str, torch.Tensor]:
    """R^2 three ways; SS_tot of each sample is about its own mean (the reference's).

    'mean': mean over samples of 1 - SS_res / (SS_tot + eps) (the reference's number;
    near-flat samples make it jumpy); 'pooled': 1 - sum SS_res / sum SS_tot; 'median':
    median over samples. Returns 0-d tensors.
    """
    ss_res = ((x - x_hat) ** 2).sum(-1)
    ss_tot = ((x - x.mean(-1, keepdim=True)) ** 2).sum(-1)
    per_sample = 1.0 - ss_res / (ss_tot + FLOAT32_EPS)
    return {
        "mean": per_sample.mean(),
        "pooled": 1.0 - ss_res.sum() / ss_tot.sum().clamp(min=FLOAT32_EPS),
        "median": per_sample.median(),
    }


def _sparseness(z: torch.Tensor, dim: int) -> torch.Tensor:
    """(1 - (sum z)^2 / (m sum z^2)) / (1 - 1/m) along `dim` (m entries); 1 where all zero."""
    m = z.shape[dim]
    total = z.sum(dim)
    squares = (z * z).sum(dim)
    ratio = total**2 / (m * squares.clamp(min=torch.finfo(z.dtype).tiny))
    value = (1.0 - ratio) / (1.0 - 1.0 / m)
    return torch.where(squares > 0, value, torch.ones_like(value))


def population_sparseness(z: torch.Tensor) -> torch.Tensor:
    """Per sample, across the K latents: [N, K] -> [N]."""
    return _sparseness(z, dim=-1)


def lifetime_sparseness(z: torch.Tensor) -> torch.Tensor:
    """Per latent, across the N samples: [N, K] -> [K]."""
    return _sparseness(z, dim=0)
