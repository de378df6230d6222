"""Feeders: turn one batch of images into a sequence of inputs over T inference steps.

    feeder = make_feeder("jitter", x, n_steps=16, seed=0)   # x: [B, M], M = S * S
    for t in range(len(feeder)):
        x_t = feeder[t]                                     # [B, M], on x's device

* `stationary`: the same input at every step (feeder[t] is x itself).
* `jitter`: fixational eye movements. Each sample's crop window follows a discrete
  Ornstein-Uhlenbeck walk: p[0] = 0, p[t+1] = p[t] - restoring * p[t] + N(0, diffusion)
  per axis (so diffusion is the per-step displacement variance in px^2; defaults 0.6 and
  0.03 as the reference JitterFeeder). The position is rounded to whole pixels and
  clipped to +-max_shift; the image is reflect-padded by max_shift and the S x S window at
  that offset is cropped, so frame 0 is the original image. Trajectories are independent
  per sample and deterministic given `seed`.
* `rotate`: rotation about the image centre by start_degrees + degrees_per_step * t
  (the content turns counter-clockwise as displayed with row 0 at the top), bilinear
  interpolation, reflection at the border (corners that rotate in from outside the
  square reuse mirrored pixels rather than zeros).

The noise for jitter is drawn on the CPU from a torch.Generator seeded with `seed`, so a
feeder gives the same sequence on any device.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
import torch.nn.functional as F

from fondtrain.errors import UserError


class Feeder:
    """Base class: a length-`n_steps` sequence of [B, M] frames made from x [B, M]."""

    name = "base"

    def __init__(self, x: torch.Tensor, n_steps: int, seed: int = 0):
        if not isinstance(x, torch.Tensor) or x.ndim != 2:
            shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
            raise UserError(f"feeder {self.name!r} needs x as a [B, M] tensor, got {shape}.")
        if n_steps < 1:
            raise UserError(f"feeder {self.name!r} needs n_steps >= 1, got {n_steps}.")
        self.x, self.n_steps, self.seed = x, int(n_steps), int(seed)
        self.batch_size, self.input_dim = x.shape

    def __len__(self) -> int:
        return self.n_steps

    def __getitem__(self, t: int) -> torch.Tensor:
        if not 0 <= t < self.n_steps:
            raise IndexError(f"step {t} is outside 0..{self.n_steps - 1}")
        return self.frame(int(t))

    def __iter__(self):
        return (self[t] for t in range(self.n_steps))

    def frame(self, t: int) -> torch.Tensor:
        """The input at step t: [B, M]."""
        raise NotImplementedError

    def _side(self) -> int:
        side = math.isqrt(self.input_dim)
        if side * side != self.input_dim:
            raise UserError(
                f"feeder {self.name!r} needs square images, but M = {self.input_dim} is not a "
                "square; use the stationary feeder."
            )
        return side


class StationaryFeeder(Feeder):
    """The same input at every step: feeder[t] is x."""

    name = "stationary"

    def frame(self, t: int) -> torch.Tensor:
        return self.x


class JitterFeeder(Feeder):
    """Brownian drift with a harmonic pull back to the centre; reflect-pad and crop.

    Args:
        x: [B, S * S] images.
        n_steps: T.
        seed: seeds the walk.
        diffusion: per-step displacement variance per axis (px^2).
        restoring: fraction of the current offset pulled back each step (0 = free walk).
        max_shift: largest offset in px (also the padding; default S // 4, < S).

    Attributes:
        shifts: [T, B, 2] int64 (dy, dx) offsets of the crop window.
    """

    name = "jitter"

    def __init__(self, x: torch.Tensor, n_steps: int, seed: int = 0, diffusion: float = 0.6,
                 restoring: float = 0.03, max_shift: int | None = None):
        super().__init__(x, n_steps, seed)
        side = self._side()
        max_shift = side // 4 if max_shift is None else int(max_shift)
        if not 0 <= max_shift < side or diffusion < 0:
            raise UserError(
                f"jitter needs 0 <= max_shift < {side} and diffusion >= 0, got {max_shift} "
                f"and {diffusion}."
            )
        gen = torch.Generator().manual_seed(self.seed)
        noise = torch.randn(n_steps, self.batch_size, 2, generator=gen, dtype=torch.float64)
        pos = torch.zeros(n_steps, self.batch_size, 2, dtype=torch.float64)
        for t in range(1, n_steps):
            pos[t] = pos[t - 1] * (1.0 - restoring) + math.sqrt(diffusion) * noise[t]
        self.shifts = pos.round().clamp(-max_shift, max_shift).long().to(x.device)
        self.side, self.pad = side, max_shift
        img = x.reshape(self.batch_size, 1, side, side)
        if max_shift > 0:
            img = F.pad(img, (max_shift,) * 4, mode="reflect")
        self._padded = img[:, 0]  # [B, S + 2p, S + 2p]
        self._grid = torch.arange(side, device=x.device)
        self._batch_index = torch.arange(self.batch_size, device=x.device)[:, None, None]

    def frame(self, t: int) -> torch.Tensor:
        dy, dx = self.shifts[t, :, 0], self.shifts[t, :, 1]
        rows = self.pad + dy[:, None] + self._grid[None, :]  # [B, S]
        cols = self.pad + dx[:, None] + self._grid[None, :]
        crop = self._padded[self._batch_index, rows[:, :, None], cols[:, None, :]]  # [B, S, S]
        return crop.reshape(self.batch_size, -1)


class RotateFeeder(Feeder):
    """Rotation about the centre at a constant angular velocity, bilinear.

    Args:
        x: [B, S * S] images.
        n_steps: T.
        seed: seeds the random start angles (only with random_start).
        degrees_per_step: angular velocity (default 8, as the reference).
        start_degrees: angle at t = 0 (default 0: frame 0 is x).
        random_start: draw each sample's start angle uniformly from [0, 360) instead.
    """

    name = "rotate"

    def __init__(self, x: torch.Tensor, n_steps: int, seed: int = 0,
                 degrees_per_step: float = 8.0, start_degrees: float = 0.0,
                 random_start: bool = False):
        super().__init__(x, n_steps, seed)
        self.side = self._side()
        self.degrees_per_step = float(degrees_per_step)
        if random_start:
            gen = torch.Generator().manual_seed(self.seed)
            start = torch.rand(self.batch_size, generator=gen, dtype=torch.float64) * 360.0
        else:
            start = torch.full((self.batch_size,), float(start_degrees), dtype=torch.float64)
        self.start_degrees = start
        self._img = x.reshape(self.batch_size, 1, self.side, self.side)

    def angles(self, t: int) -> torch.Tensor:
        """Rotation angle of every sample at step t in degrees: [B] float64."""
        return self.start_degrees + self.degrees_per_step * t

    def frame(self, t: int) -> torch.Tensor:
        rad = torch.deg2rad(self.angles(t))
        cos, sin, zero = torch.cos(rad), torch.sin(rad), torch.zeros_like(rad)
        theta = torch.stack(
            [torch.stack([cos, -sin, zero], -1), torch.stack([sin, cos, zero], -1)], -2
        ).to(device=self.x.device, dtype=self.x.dtype)  # [B, 2, 3]
        grid = F.affine_grid(theta, list(self._img.shape), align_corners=False)
        out = F.grid_sample(self._img, grid, mode="bilinear", padding_mode="reflection",
                            align_corners=False)
        return out.reshape(self.batch_size, -1)


FEEDERS: dict[str, type[Feeder]] = {
    "stationary": StationaryFeeder,
    "jitter": JitterFeeder,
    "rotate": RotateFeeder,
}


def make_feeder(name: str, x: torch.Tensor, n_steps: int, seed: int = 0, **kwargs: Any) -> Feeder:
    """Build feeder `name` (see FEEDERS) for x [B, M] over n_steps steps; feeder[t] -> [B, M]."""
    if name not in FEEDERS:
        raise UserError(f"unknown feeder {name!r}; choose one of {', '.join(FEEDERS)}.")
    cls = FEEDERS[name]
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self", "x", "n_steps", "seed"}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise UserError(
            f"feeder {name!r} has no option {', '.join(unknown)}; its options are "
            f"{', '.join(sorted(allowed)) or 'none'}."
        )
    return cls(x, n_steps, seed, **kwargs)
