"""The Gaussian posterior of iG-VAE / iGrelu-VAE and the decoder likelihood (SPEC 4-5)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def gaussian_sample(mu: Tensor, xi: Tensor, temp: float, noise: Tensor) -> Tensor:
    """Reparameterised Gaussian sample z = mu + tau exp(xi) noise, [B, K]."""
    return mu + temp * torch.exp(xi) * noise


def gaussian_kl(mu: Tensor, xi: Tensor, mu_prior: Tensor, xi_prior: Tensor,
                temp: float = 1.0) -> Tensor:
    """KL(N(mu, (tau sigma)^2) || N(mu0, (tau sigma0)^2)) per latent, [B, K] (SPEC 5)."""
    scale = temp * torch.exp(xi)
    scale_prior = temp * torch.exp(xi_prior)
    ratio = scale / scale_prior
    return 0.5 * (((mu - mu_prior) / scale_prior) ** 2 + ratio**2 - 2.0 * torch.log(ratio) - 1.0)


def gaussian_nll(x: Tensor, loc: Tensor, log_sigma: Tensor) -> Tensor:
    """-sum_m log N(x_m; loc_m, exp(log_sigma_m)) per sample: [B, M] -> [B]."""
    z = (x - loc) * torch.exp(-log_sigma)
    return (0.5 * z * z + log_sigma + 0.5 * math.log(2 * math.pi)).sum(-1)
