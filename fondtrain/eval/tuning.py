"""The bar-of-light experiment: orientation tuning of single units (SPEC 7).

Stimuli (P x P patches, P the model's patch side), seen through a soft circular
aperture (radius P/2, so that the square's diagonals favour no orientation), each made
zero-mean inside the aperture and scaled to RMS `contrast` over the patch (the data are
standardised to unit variance per pixel, so contrast 1 is a typical patch's energy):

- `bar`: a thin bright or dark line (Gaussian profile, FWHM `bar_width` px) through the
  whole aperture at `n_orientations` orientations in [0, 180) degrees and
  `n_positions` offsets perpendicular to it, both polarities (the flashed bar of light;
  a "phase" is one (offset, polarity) pair);
- `grating`: sinusoidal gratings cos(2 pi f d + phi) at the spatial frequencies
  `frequencies` (cycles / px) and `n_phases` phases phi (a "phase" is one (f, phi) pair).

Orientation theta is the direction of the bar's long axis (of the grating's stripes),
counter-clockwise from horizontal as the patch is displayed (row 0 at the top).

Each stimulus is flashed (held constant) for n_steps inference steps from u_init at the
evaluation temperature, `n_repeats` (>= 2) times with independent sampling noise; the
response of a unit is its mean activity over the last `window` steps, averaged over
repeats. The evoked response is that minus the response to a blank (all-zero) patch. A
unit's tuning curve R(theta) is its largest evoked response over phases at each
orientation, rectified at 0 (position / phase invariant, like a complex cell's; simple
cells peak at one phase anyway). Selectivity:

- OSI = 1 - circular variance = |sum R e^{2 i theta}| / sum R (0 untuned, 1 one orientation);
- preferred orientation (vector average) = half the angle of sum R e^{2 i theta};
- pref/orth index = (R_pref - R_orth) / (R_pref + R_orth).

A unit is *responsive* when its peak evoked response exceeds its noise: it is at least
NOISE_FACTOR (5) times the unit's noise, the standard error of one evoked response
estimated from the spread over repeats (sqrt(2 s^2 / n_repeats), s^2 the unit's variance
across repeats pooled over all stimuli and the blank). The peak is the largest of
n_orientations x n_phases evoked responses; were they noise alone, it would be ~3 noise
units (the maximum of ~200 standard normals), and 5 is reached by chance with
probability ~1e-4 per unit. So a collapsed model, whose units answer every stimulus with
their sampling noise, has no responsive (hence no tuned) units, however its noise shapes
a "tuning curve". Spike-count (Poisson) units must also reach MIN_EVOKED_SPIKES (5)
evoked spikes over the measuring window (a rate of 5 / window per step): the spread of
a few chance spikes over 4 repeats is no estimate of the noise. Gaussian units (igvae,
igrelu) have no spikes: their responses are activity a(z) in the latent's own units.
Every unit must also reach 1% of the largest peak of all units. Summaries are over
responsive units; *selective* means responsive with OSI > 0.3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from fondtrain import stats as Mx
from fondtrain.eval.convergence import latent_responses
from fondtrain.model.vae import IterativeVAE

SELECTIVE_OSI = 0.3
MIN_EVOKED_SPIKES = 5.0  # per window, above the blank: fewer is chance firing
NOISE_FACTOR = 5.0  # peak evoked response / its noise: ~3 is what noise alone reaches


def _coords(side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel-centre coordinates x (right), y (up) about the patch centre, and the soft
    circular aperture (1 inside radius side/2 - 1, cosine fall-off over 1 px)."""
    c = (side - 1) / 2.0
    rows, cols = np.mgrid[0:side, 0:side].astype(np.float64)
    x, y = cols - c, c - rows
    radius = np.hypot(x, y)
    r_in = side / 2.0 - 1.0
    aperture = np.clip((side / 2.0 - radius) / (side / 2.0 - r_in), 0.0, 1.0)
    aperture = 0.5 - 0.5 * np.cos(np.pi * aperture)
    return x, y, aperture


def _finish(raw: np.ndarray, aperture: np.ndarray, contrast: float) -> np.ndarray:
    weighted_mean = (raw * aperture).sum() / aperture.sum()
    stim = (raw - weighted_mean) * aperture
    rms = math.sqrt(float(np.mean(stim**2)))
    return stim * (contrast / rms) if rms > 0 else stim


def oriented_stimuli(side: int, kind: str = "bar", n_orientations: int = 16, n_positions: int = 7,
                     bar_width: float = 1.5, frequencies: tuple[float, ...] = (0.1, 0.2),
                     n_phases: int = 4, contrast: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Stimuli [n_orientations, n_phase_like, side * side] float32 and the orientations
    [n_orientations] in degrees (see the module docstring)."""
    x, y, aperture = _coords(side)
    orientations = np.arange(n_orientations) * 180.0 / n_orientations
    out = []
    for theta in np.deg2rad(orientations):
        # d: signed distance across the bar / stripes (along the normal of theta)
        d = -x * np.sin(theta) + y * np.cos(theta)
        row = []
        if kind == "bar":
            sigma = bar_width / (2.0 * math.sqrt(2.0 * math.log(2.0)))
            offsets = np.linspace(-0.35 * side, 0.35 * side, n_positions) if n_positions > 1 else [0.0]
            for polarity in (1.0, -1.0):
                for off in offsets:
                    raw = polarity * np.exp(-0.5 * ((d - off) / sigma) ** 2)
                    row.append(_finish(raw, aperture, contrast))
        elif kind == "grating":
            for f in frequencies:
                for phase in np.arange(n_phases) * 2.0 * np.pi / n_phases:
                    row.append(_finish(np.cos(2.0 * np.pi * f * d + phase), aperture, contrast))
        else:
            raise ValueError(f"unknown stimulus kind {kind!r}: use 'bar' or 'grating'")
        out.append(np.stack(row).reshape(len(row), side * side))
    return np.stack(out).astype(np.float32), orientations


@dataclass
class TuningResult:
    """responses [n_orient, n_phase, K] (raw), blank [K], tuning [K, n_orient] (evoked,
    rectified, max over phases), osi / pref_orth / preferred [K], noise [K] the standard
    error of one evoked response, responsive [K] bool; spikes: whether activity is a
    spike count (Poisson) or a Gaussian latent's a(z); threshold: the least peak evoked
    rate (per step) any unit needs besides its noise criterion, window: its steps;
    n_repeats: repeats of every stimulus."""

    kind: str
    orientations: np.ndarray
    stimuli: np.ndarray
    responses: np.ndarray
    blank: np.ndarray
    tuning: np.ndarray
    osi: np.ndarray
    pref_orth: np.ndarray
    preferred: np.ndarray
    noise: np.ndarray
    responsive: np.ndarray
    spikes: bool
    threshold: float
    window: int
    n_repeats: int

    @property
    def activity_unit(self) -> str:
        """What a response counts, in words."""
        return "spikes" if self.spikes else "activity a(z) of a Gaussian latent"

    @property
    def noise_level(self) -> np.ndarray:
        """[K] the peak evoked response a unit must reach to be responsive by its noise."""
        return NOISE_FACTOR * self.noise

    def rule(self) -> str:
        """The responsive criterion in words, in this model's units."""
        floor = (f" and >= {MIN_EVOKED_SPIKES:g} evoked spikes per {self.window}-step window"
                 if self.spikes else "")
        return (f"peak evoked response >= {NOISE_FACTOR:g} x its noise (standard error over "
                f"{self.n_repeats} repeats){floor}")

    def summary(self) -> dict:
        r = self.responsive
        osi = self.osi[r]
        return {
            "n_units": int(len(r)),
            "n_responsive": int(r.sum()),
            "responsive_rule": self.rule(),
            "activity_unit": self.activity_unit,
            "responsive_noise_factor": NOISE_FACTOR,
            "responsive_min_spikes": MIN_EVOKED_SPIKES if self.spikes else None,
            "responsive_window": self.window,
            "responsive_threshold": float(self.threshold),
            "noise_median": Mx.safe_float(np.median(self.noise)) if len(r) else None,
            "osi_mean": Mx.safe_float(np.mean(osi)) if r.any() else None,
            "osi_median": Mx.safe_float(np.median(osi)) if r.any() else None,
            "frac_selective": Mx.safe_float(np.mean(osi > SELECTIVE_OSI)) if r.any() else None,
            "pref_orth_median": Mx.safe_float(np.median(self.pref_orth[r])) if r.any() else None,
            "n_orientations": int(len(self.orientations)),
            "n_phases": int(self.stimuli.shape[1]),
            "n_repeats": self.n_repeats,
        }

    def most_selective(self, n: int) -> np.ndarray:
        """Indices of the n responsive units with the highest OSI (ties: larger peak),
        among those whose peak is at least the median peak of responsive units."""
        idx = np.flatnonzero(self.responsive)
        if len(idx) == 0:
            return idx
        peak = self.tuning.max(1)
        strong = idx[peak[idx] >= np.median(peak[idx])]
        order = np.lexsort((-peak[strong], -np.nan_to_num(self.osi[strong])))
        return strong[order][:n]


@torch.no_grad()
def bar_of_light(model: IterativeVAE, kind: str = "bar", n_steps: int = 1000, window: int = 100,
                 n_orientations: int = 16, n_repeats: int = 4, contrast: float = 1.0,
                 device: torch.device | str = "cpu", seed: int = 0, eps: float | torch.Tensor = 1.0,
                 **stimulus_kwargs) -> list[TuningResult]:
    """Flash oriented stimuli at the model and measure every unit's orientation tuning:
    every member's responses from one batched inference, one TuningResult per member."""
    from fondtrain.images import patch_side

    if n_repeats < 2:
        raise ValueError(f"n_repeats must be at least 2 (a unit's noise is its spread over repeats), got {n_repeats}")
    side = patch_side(model.config.input_dim)
    stimuli, orientations = oriented_stimuli(side, kind, n_orientations, contrast=contrast,
                                             **stimulus_kwargs)
    m = stimuli.shape[-1]
    flat = np.concatenate([stimuli.reshape(-1, m), np.zeros((1, m), np.float32)])
    batch = torch.from_numpy(np.repeat(flat, n_repeats, axis=0))
    resp = latent_responses(model, batch, n_steps, window, device=device, seed=seed,
                            batch_size=4096, eps=eps).double()
    return [tuning_from_responses(r, kind, stimuli, orientations, n_repeats, n_steps, window,
                                  spikes=model.is_poisson)
            for r in resp]


def tuning_from_responses(resp: torch.Tensor, kind: str, stimuli: np.ndarray,
                          orientations: np.ndarray, n_repeats: int, n_steps: int,
                          window: int, spikes: bool) -> TuningResult:
    """One member's tuning from its responses resp [(n_orient n_phase + 1) n_repeats, K]
    (float64; every stimulus `n_repeats` times in a row, the blank last); spikes: the
    activity is a spike count (Poisson)."""
    n_orient, n_phase, _ = stimuli.shape
    repeats = resp.reshape(-1, n_repeats, resp.shape[-1])
    resp = repeats.mean(1)
    # evoked = mean of n_repeats minus mean of n_repeats: variance 2 s^2 / n_repeats
    noise = (2.0 * repeats.var(1, unbiased=True).mean(0) / n_repeats).sqrt()
    blank = resp[-1]
    responses = resp[:-1].reshape(n_orient, n_phase, -1)
    evoked = (responses - blank).amax(1).clamp(min=0).T.contiguous()  # [K, n_orient]
    theta = torch.from_numpy(orientations)
    osi, preferred = Mx.circular_selectivity(evoked, theta)
    pref_orth = Mx.pref_orth_index(evoked, theta)
    peak = evoked.amax(1)
    window = max(1, min(window, n_steps))
    floor = MIN_EVOKED_SPIKES / window if spikes else 0.0
    threshold = max(floor, 0.01 * float(peak.max()) if peak.numel() else 0.0)
    responsive = (peak >= threshold) & (peak > 0) & (peak >= NOISE_FACTOR * noise)
    return TuningResult(
        kind=kind, orientations=orientations, stimuli=stimuli,
        responses=responses.float().numpy(), blank=blank.float().numpy(),
        tuning=evoked.float().numpy(), osi=osi.numpy(), pref_orth=pref_orth.numpy(),
        preferred=preferred.numpy(), noise=noise.float().numpy(), responsive=responsive.numpy(),
        spikes=spikes, threshold=threshold, window=window, n_repeats=n_repeats,
    )
