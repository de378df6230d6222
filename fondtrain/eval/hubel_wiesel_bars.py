"""The stimulus of the Hubel & Wiesel experiment (`fondtrain.eval.hubel_wiesel`): bright
bars sweeping across the patch at many orientations, as model inputs (anti-aliased P x P
frames) and as high-resolution display frames.

Pixel values are those of the standardised data: 0 is the data's mean (mid-grey when
shown), the bar is `contrast` above it.
"""

from __future__ import annotations

import math

import numpy as np
import torch

DISPLAY_SIDE = 128  # the high-resolution bar is drawn on at least this many pixels


class MovingBars:
    """The sweeping bars of all orientations at once, frame by frame (a feeder: [t] ->
    [B, P*P] float32, B = number of orientations), and their display frames."""

    def __init__(self, side: int, orientations, n_blank: int, n_sweep: int,
                 thickness: float = 0.2, contrast: float = 1.0):
        self.side, self.n_blank, self.n_sweep = side, n_blank, n_sweep
        self.orientations = np.asarray(orientations, np.float64)
        self.contrast = contrast
        self.super = max(1, math.ceil(DISPLAY_SIDE / side))
        self.width = thickness * side
        span = side / math.sqrt(2.0) + self.width / 2.0
        self.centres = np.linspace(-span, span, n_sweep)
        theta = np.deg2rad(self.orientations)
        self._normal = np.stack([-np.sin(theta), np.cos(theta)], 1)  # [B, 2] (x, y)
        # d of every model pixel centre [B, P*P], and of every display sub-pixel centre
        self._d_pixels = self._project(side, 1).reshape(len(theta), -1)
        self._d_display = self._project(side, self.super).astype(np.float32)  # [B, Ps, Ps]
        # |d| of a uniform point of a pixel about its centre is the sum of two uniforms
        # with widths p <= q: its CDF is piecewise quadratic (see `_pixel_cdf`)
        extent = np.sort(np.abs(self._normal), 1)
        self._p, self._q = extent[:, :1], extent[:, 1:]

    def _project(self, side: int, s: int) -> np.ndarray:
        """d = -x sin(theta) + y cos(theta) at the (sub-)pixel centres, [B, side*s, side*s]."""
        coords = (np.arange(side * s) + 0.5) / s - side / 2.0
        x, y = np.meshgrid(coords, -coords)
        return self._normal[:, 0, None, None] * x + self._normal[:, 1, None, None] * y

    def _pixel_cdf(self, u: np.ndarray) -> np.ndarray:
        """Fraction of each pixel where d - d_centre <= u, [B, M]."""
        p, q = self._p, self._q
        half_in, half_out = (q - p) / 2.0, (q + p) / 2.0
        pq = np.maximum(2.0 * p * q, 1e-12)
        rising = np.clip(u + half_out, 0.0, None) ** 2 / pq
        falling = 1.0 - np.clip(half_out - u, 0.0, None) ** 2 / pq
        flat = (u + half_in) / q + p / (2.0 * q)
        out = np.where(u < -half_in, rising, np.where(u > half_in, falling, flat))
        return np.clip(out, 0.0, 1.0)

    @property
    def n_frames(self) -> int:
        return self.n_blank + self.n_sweep

    @property
    def batch_size(self) -> int:
        return len(self.orientations)

    def display(self, t: int, rows=slice(None)) -> np.ndarray:
        """The high-resolution frame t, [b, P*S, P*S] (0 background, `contrast` bar)."""
        d = self._d_display[rows]
        if t < self.n_blank:
            return np.zeros_like(d)
        centre = self.centres[t - self.n_blank]
        return (np.abs(d - centre) <= self.width / 2.0).astype(np.float32) * self.contrast

    def __getitem__(self, t: int) -> torch.Tensor:
        b, m = self._d_pixels.shape
        if t < self.n_blank:
            return torch.zeros(b, m)
        offset = self.centres[t - self.n_blank] - self._d_pixels
        half = self.width / 2.0
        covered = self._pixel_cdf(offset + half) - self._pixel_cdf(offset - half)
        return torch.from_numpy((covered * self.contrast).astype(np.float32))

    def __len__(self) -> int:
        return self.n_frames
