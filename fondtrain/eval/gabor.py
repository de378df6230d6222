"""Gabor fits of dictionary elements: how V1-like is a learned dictionary?

Each used element (a column of W reshaped to its P x P patch) is fitted by least squares
with a 2-D Gabor

    g(x, y) = A exp(-(x'^2 / (2 sx^2) + y'^2 / (2 sy^2))) cos(2 pi f x' + phi)
    x' =  (x - x0) cos(theta) + (y - y0) sin(theta)
    y' = -(x - x0) sin(theta) + (y - y0) cos(theta)

(x = column, y = row, in pixels; theta is the direction of the carrier's wave vector, so
the stripes run along y'). Restarts start from the element's strongest Fourier components
and from two centres (the centre of mass of its energy and its largest pixel).

Reported per unit: variance explained (1 - SSE / total sum of squares about the mean),
position (x0, y0), orientation (direction of the stripes, degrees in [0, 180), measured
from the +x axis towards +y, i.e. clockwise on the displayed image), spatial frequency
(cycles / pixel), envelope widths across (sx) and along (sy) the stripes, size sqrt(sx sy)
and aspect ratio sy / sx. A fit counts as good when its variance explained >= GOOD_R2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

GOOD_R2 = 0.8
FIELDS = ("r2", "x0", "y0", "orientation_deg", "frequency", "sigma_x", "sigma_y", "size",
          "aspect", "phase", "amplitude")
NYQUIST_CAP = 0.5  # cycles / pixel: no carrier above Nyquist
_FFT_PAD = 4  # zero-pad factor for the FFT-peak initial guess (finer frequency grid)


def gabor(params: np.ndarray, side: int) -> np.ndarray:
    """The Gabor above on a side x side grid.

    Args:
        params: [8] (x0, y0, theta, f, phi, sx, sy, A).
        side: patch side P.

    Returns:
        [P * P] float64, row-major (y, x) like a reshaped dictionary column.
    """
    x0, y0, theta, f, phi, sx, sy, amp = params
    y, x = np.mgrid[0:side, 0:side].astype(np.float64)
    dx, dy = x - x0, y - y0
    c, s = np.cos(theta), np.sin(theta)
    xr, yr = dx * c + dy * s, -dx * s + dy * c
    env = np.exp(-(xr**2 / (2 * sx**2) + yr**2 / (2 * sy**2)))
    return (amp * env * np.cos(2 * np.pi * f * xr + phi)).ravel()


def _initial_guesses(patch: np.ndarray, n_peaks: int = 2) -> list[np.ndarray]:
    """Starting points from the FFT peaks x {energy centre of mass, largest pixel} x 2 phases."""
    side = patch.shape[0]
    n = _FFT_PAD * side
    spec = np.abs(np.fft.rfft2(patch, s=(n, n)))
    spec[0, 0] = 0.0
    fy = np.fft.fftfreq(n)[:, None] * np.ones((1, spec.shape[1]))
    fx = np.fft.rfftfreq(n)[None, :] * np.ones((n, 1))
    peaks = np.argsort(spec.ravel())[::-1]
    chosen: list[tuple[float, float]] = []
    for idx in peaks:  # the strongest distinct components (skip the neighbours of a peak)
        kx, ky = float(fx.ravel()[idx]), float(fy.ravel()[idx])
        if all(np.hypot(kx - a, ky - b) > 1.0 / side for a, b in chosen):
            chosen.append((kx, ky))
        if len(chosen) == n_peaks:
            break
    energy = patch**2
    total = energy.sum()
    y, x = np.mgrid[0:side, 0:side].astype(np.float64)
    cy, cx = (energy * y).sum() / total, (energy * x).sum() / total
    spread = np.sqrt(((energy * ((x - cx) ** 2 + (y - cy) ** 2)).sum() / total) / 2)
    sigma = float(np.clip(np.sqrt(2.0) * spread, 1.0, side / 2))  # energy = envelope^2
    py, px = np.unravel_index(np.argmax(np.abs(patch)), patch.shape)
    amp = float(np.abs(patch).max())
    guesses = []
    for kx, ky in chosen:
        f, theta = float(np.hypot(kx, ky)), float(np.arctan2(ky, kx))
        for cx0, cy0 in ((cx, cy), (float(px), float(py))):
            for phi in (0.0, np.pi / 2):
                guesses.append(np.array([cx0, cy0, theta, f, phi, sigma, sigma, amp]))
    return guesses


def _wrap_params(p: np.ndarray) -> np.ndarray:
    """Canonical form: A > 0, theta in [0, pi) (the carrier is even in its wave vector
    up to the sign of the phase), phi in [0, 2 pi)."""
    x0, y0, theta, f, phi, sx, sy, amp = p
    if amp < 0:
        amp, phi = -amp, phi + np.pi
    k = np.floor(theta / np.pi)
    theta -= k * np.pi
    if int(k) % 2:  # theta -> theta + pi flips x', i.e. the phase's sign
        phi = -phi
    return np.array([x0, y0, theta, f, np.mod(phi, 2 * np.pi), sx, sy, amp])


def fit_gabor(element: np.ndarray, side: int | None = None) -> tuple[np.ndarray, float]:
    """Least-squares Gabor fit of one element, best of several restarts.

    Args:
        element: [P * P] or [P, P] dictionary element.
        side: P (default: sqrt of the element's size).

    Returns:
        (params [8] (x0, y0, theta, f, phi, sx, sy, A) in canonical form, variance explained).
        A constant element gives (NaNs, 0).
    """
    w = np.asarray(element, dtype=np.float64).ravel()
    side = side or int(round(np.sqrt(w.size)))
    if side * side != w.size:
        raise ValueError(f"an element of {w.size} values is not a square patch")
    centred = w - w.mean()
    total = float((centred**2).sum())
    if not total > 0:
        return np.full(8, np.nan), 0.0
    scale = float(np.abs(w).max())
    w = w / scale  # unit scale: the bounds and tolerances below are in these units
    lower = np.array([-2.0, -2.0, -4 * np.pi, 0.0, -4 * np.pi, 0.4, 0.4, -np.inf])
    upper = np.array([side + 1.0, side + 1.0, 4 * np.pi, NYQUIST_CAP, 4 * np.pi,
                      float(side), float(side), np.inf])
    best, best_sse = None, np.inf
    for guess in _initial_guesses(w.reshape(side, side)):
        start = np.clip(guess, lower + 1e-9, upper - 1e-9)
        fit = least_squares(lambda p: gabor(p, side) - w, start, bounds=(lower, upper),
                            method="trf", x_scale="jac", max_nfev=400)
        sse = float((fit.fun**2).sum())
        if sse < best_sse:
            best, best_sse = fit.x, sse
    params = _wrap_params(best)
    params[7] *= scale
    return params, float(1.0 - best_sse * scale**2 / total)



@dataclass
class GaborFits:
    """Gabor fits of the used units of a dictionary.

    Attributes:
        units: [U] indices (columns of W) that were fitted.
        params: [U, 8] canonical (x0, y0, theta, f, phi, sx, sy, A).
        r2: [U] variance explained.
        side: patch side P.
        n_units: K, all columns of W.
    """

    units: np.ndarray
    params: np.ndarray
    r2: np.ndarray
    side: int
    n_units: int

    @property
    def good(self) -> np.ndarray:
        """[U] bool, variance explained >= GOOD_R2."""
        return self.r2 >= GOOD_R2

    def table(self) -> dict[str, np.ndarray]:
        """Per-unit quantities named in FIELDS, each [U]."""
        x0, y0, theta, f, phi, sx, sy, amp = self.params.T if len(self.params) else [np.zeros(0)] * 8
        return {"r2": self.r2, "x0": x0, "y0": y0,
                "orientation_deg": np.mod(np.degrees(theta) + 90.0, 180.0),
                "frequency": f, "sigma_x": sx, "sigma_y": sy, "size": np.sqrt(sx * sy),
                "aspect": sy / sx, "phase": phi, "amplitude": amp}

    def summary(self) -> dict[str, float | int | None]:
        """Counts, the good-fit fraction, and medians over the good fits (JSON-ready)."""
        tab, good = self.table(), self.good
        out: dict[str, float | int | None] = {
            "n_units": self.n_units, "n_used": int(len(self.units)), "n_good": int(good.sum()),
            "frac_good": float(good.mean()) if len(good) else None,
            "r2_median": float(np.median(self.r2)) if len(self.r2) else None,
            "good_r2": GOOD_R2,
        }
        for key in ("frequency", "size", "aspect"):
            out[f"{key}_median"] = float(np.median(tab[key][good])) if good.any() else None
        out["orientation_spread"] = _orientation_spread(tab["orientation_deg"][good])
        return out


def _orientation_spread(degrees: np.ndarray) -> float | None:
    """1 - |mean of exp(2i theta)|: 0 when all share one orientation, ~1 when uniform."""
    if len(degrees) == 0:
        return None
    return float(1.0 - np.abs(np.exp(2j * np.radians(degrees)).mean()))


def fit_dictionary(weight: np.ndarray, usage: np.ndarray | None = None,
                   side: int | None = None) -> GaborFits:
    """Fit every used column of W.

    Args:
        weight: [M, K] dictionary, M = P * P.
        usage: [K] mean activity per unit; units whose usage is not 0 are fitted (a
            silent Poisson or ReLU unit has usage 0; a Gaussian unit's mean may have
            either sign), None: all.
        side: patch side P (default sqrt(M)).

    Returns:
        GaborFits over the used units.
    """
    weight = np.asarray(weight, dtype=np.float64)
    m, k = weight.shape
    side = side or int(round(np.sqrt(m)))
    if side * side != m:
        raise ValueError(f"input size {m} is not a square patch; the Gabor fit needs one")
    units = np.arange(k) if usage is None else np.flatnonzero(np.asarray(usage) != 0)
    params = np.zeros((len(units), 8))
    r2 = np.zeros(len(units))
    for i, unit in enumerate(units):
        params[i], r2[i] = fit_gabor(weight[:, unit], side)
    return GaborFits(units=units, params=params, r2=r2, side=side, n_units=k)
