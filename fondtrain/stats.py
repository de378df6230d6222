"""The scalar metrics of SPEC 7, as small pure functions of tensors.

Everything here works on torch tensors (CPU or GPU) and is checked against numpy hand
computations in tests/test_eval_metrics.py. Conventions (x [N, M] inputs, x_hat [N, M]
reconstructions, a [N, K] latent activity):

- R^2 three ways. Per sample, SS_res = sum_m (x - x_hat)^2 and SS_tot = sum_m
  (x - mean_m x)^2 (about the sample's *own* mean, as the reference's `compute_r2`):
  * `r2_mean`: mean over samples of 1 - SS_res / (SS_tot + float32 eps), the paper's R^2
    (the reference's `compute_r2` averaged over inputs); it is meaningful only on data
    without near-flat patches (SS_tot ~ 0 drives a sample's R^2 to -100s), which the
    built-in photo data sets skip (`fondtrain.data.whiten.FLAT_FRACTION`);
  * `r2_pooled`: 1 - sum SS_res / sum SS_tot (robust);
  * `r2_median`: median over samples of the per-sample R^2 (robust).
  R2_LABELS names each in one line, for every place that reports them.
- Sparseness (Treves-Rolls / Vinje-Gallant form, the reference's `sparse_score`):
  S = (1 - (sum z)^2 / (m sum z^2)) / (1 - 1/m), summed over samples for *lifetime*
  sparseness (one value per unit, m = N) and over units for *population* sparseness (one
  value per sample, m = K); S = 1 where nothing fires (sum z^2 = 0). 0 means every entry
  equal, 1 means one entry carries everything.
- The fraction of zero latents is the share of exact zeros of the activity a(z).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

FLOAT32_EPS = torch.finfo(torch.float32).eps

# Which R^2 is which, one line each: printed beside the numbers and kept in metrics.json.
R2_LABELS = {
    "r2_mean": "R^2 paper (mean over samples of 1 - SS_res/SS_tot per sample, the reference's)",
    "r2_pooled": "R^2 pooled (1 - sum SS_res / sum SS_tot over all samples)",
    "r2_median": "R^2 median (median over samples of 1 - SS_res/SS_tot per sample)",
}
# The same, short, for legends and table columns.
R2_SHORT = {"r2_mean": "R^2 paper (per-sample mean)", "r2_pooled": "R^2 pooled",
            "r2_median": "R^2 median"}


def log_grid(n_steps: int, extra: tuple[int, ...] | list[int] = ()) -> list[int]:
    """1-based inference steps to report: 1, 2, 3, 5, 7, 10, 20, 30, 50, 70, 100, ... up
    to n_steps, plus n_steps itself and any `extra` steps (e.g. the training horizon)."""
    if n_steps < 1:
        raise ValueError(f"n_steps must be at least 1, got {n_steps}")
    steps = set()
    decade = 1
    while decade <= n_steps:
        for mult in (1, 2, 3, 5, 7):
            if mult * decade <= n_steps:
                steps.add(mult * decade)
        decade *= 10
    steps.add(n_steps)
    steps.update(int(s) for s in extra if 1 <= int(s) <= n_steps)
    return sorted(steps)


def sum_squares(x: Tensor, x_hat: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample (SS_res, SS_tot), each [N]: SS_tot about each sample's own mean."""
    ss_res = (x - x_hat).pow(2).sum(-1)
    ss_tot = (x - x.mean(-1, keepdim=True)).pow(2).sum(-1)
    return ss_res, ss_tot


def r2_per_sample(x: Tensor, x_hat: Tensor) -> Tensor:
    """The reference's per-sample R^2, 1 - SS_res / (SS_tot + float32 eps), [N]."""
    ss_res, ss_tot = sum_squares(x, x_hat)
    return 1.0 - ss_res / (ss_tot + FLOAT32_EPS)


def r2_pooled(ss_res: Tensor | float, ss_tot: Tensor | float) -> float:
    """1 - sum SS_res / sum SS_tot over all samples (pass per-sample values or sums)."""
    res = float(torch.as_tensor(ss_res, dtype=torch.float64).sum())
    tot = float(torch.as_tensor(ss_tot, dtype=torch.float64).sum())
    return 1.0 - res / tot if tot > 0 else float("nan")


def r2_three_ways(x: Tensor, x_hat: Tensor) -> dict[str, float]:
    """{'r2_mean', 'r2_pooled', 'r2_median'} of reconstructions x_hat [N, M] of x [N, M]."""
    ss_res, ss_tot = sum_squares(x.double(), x_hat.double())
    per_sample = 1.0 - ss_res / (ss_tot + FLOAT32_EPS)
    return {
        "r2_mean": float(per_sample.mean()),
        "r2_pooled": r2_pooled(ss_res, ss_tot),
        "r2_median": median(per_sample),
    }


def median(values: Tensor) -> float:
    """The median of all values (the mean of the two middle ones for even length, like
    numpy; torch.median would return the lower one). NaN for no values."""
    flat = values.detach().reshape(-1).double().cpu().numpy()
    return float(np.median(flat)) if flat.size else float("nan")


def sparseness_from_sums(sum_z: Tensor, sum_z2: Tensor, m: int) -> Tensor:
    """(1 - sum_z^2 / (m sum_z2)) / (1 - 1/m), elementwise; 1 where sum_z2 = 0.

    sum_z and sum_z2 are sums of z and z^2 over the m entries being compared (samples
    for lifetime, units for population sparseness). NaN when m = 1 (undefined).
    """
    sum_z, sum_z2 = sum_z.double(), sum_z2.double()
    if m < 2:
        return torch.full_like(sum_z, float("nan"))
    silent = sum_z2 <= 0
    ratio = sum_z.pow(2) / (m * torch.where(silent, torch.ones_like(sum_z2), sum_z2))
    score = (1.0 - ratio) / (1.0 - 1.0 / m)
    return torch.where(silent, torch.ones_like(score), score)


def lifetime_sparseness(a: Tensor) -> Tensor:
    """Sparseness of each unit's activity over samples: a [N, K] -> [K]."""
    a = a.double()
    return sparseness_from_sums(a.sum(0), a.pow(2).sum(0), a.shape[0])


def population_sparseness(a: Tensor) -> Tensor:
    """Sparseness of each sample's activity over units: a [N, K] -> [N]."""
    a = a.double()
    return sparseness_from_sums(a.sum(-1), a.pow(2).sum(-1), a.shape[-1])


def fraction_zeros(a: Tensor) -> float:
    """Share of exact zeros in the activity a [N, K]."""
    return float((a == 0).double().mean())


def circular_selectivity(responses: Tensor, orientations_deg: Tensor) -> tuple[Tensor, Tensor]:
    """Orientation selectivity 1 - circular variance and the preferred orientation.

    responses [..., n_orient] (non-negative, e.g. evoked responses rectified at 0);
    orientations in degrees in [0, 180). Returns (OSI [...] in [0, 1], NaN where all
    responses are 0; preferred orientation [...] in degrees in [0, 180)):
    OSI = |sum_j R_j exp(2 i theta_j)| / sum_j R_j.
    """
    theta = torch.deg2rad(orientations_deg.double()) * 2.0
    r = responses.double()
    re = (r * torch.cos(theta)).sum(-1)
    im = (r * torch.sin(theta)).sum(-1)
    total = r.sum(-1)
    osi = torch.where(total > 0, torch.sqrt(re**2 + im**2) / torch.where(total > 0, total, 1.0),
                      torch.full_like(total, float("nan")))
    preferred = torch.rad2deg(torch.atan2(im, re)) / 2.0 % 180.0
    return osi, preferred


def pref_orth_index(responses: Tensor, orientations_deg: Tensor) -> Tensor:
    """(R_pref - R_orth) / (R_pref + R_orth) with R_pref the largest response and R_orth
    the response at the orientation closest to 90 degrees away. [..., n_orient] -> [...]."""
    r = responses.double()
    pref = r.argmax(-1)
    theta = orientations_deg.double()
    target = (theta[pref] + 90.0) % 180.0
    diff = (theta.reshape(*([1] * (r.dim() - 1)), -1) - target.unsqueeze(-1)).abs()
    diff = torch.minimum(diff, 180.0 - diff)
    orth = diff.argmin(-1)
    r_pref = r.gather(-1, pref.unsqueeze(-1)).squeeze(-1)
    r_orth = r.gather(-1, orth.unsqueeze(-1)).squeeze(-1)
    total = r_pref + r_orth
    return torch.where(total > 0, (r_pref - r_orth) / torch.where(total > 0, total, 1.0),
                       torch.full_like(total, float("nan")))


def safe_float(value) -> float | None:
    """A JSON-friendly float: None for NaN / inf."""
    value = float(value)
    return value if math.isfinite(value) else None
