"""Image preparation for patch data sets: grayscale, 1/f whitening, patch sampling.

The recipe follows Olshausen & Field (1996/1997): natural images have an amplitude
spectrum falling roughly as 1/|f|, so multiplying the spectrum by |f| flattens it
("whitening"); a steep low-pass roll-off exp(-(|f|/f0)^4) removes the noisy, aliased
corner frequencies. Frequencies are measured in cycles/pixel (Nyquist = 0.5), so
`f0 = f0_fraction * 0.5`; with the default f0_fraction = 0.4 that is 0.4 * Nyquist, the
same as 0.4 * N/2 cycles/picture for an N x N picture, and it is defined the same way for
non-square pictures.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

NYQUIST = 0.5  # cycles/pixel

# A patch counts as "near-flat" when its variance is below this fraction of its (whitened)
# image's typical patch variance, the MEAN variance of all its patches: sky, blurred
# background, the black surround of a photographed object. The mean, not the median: where
# half of a photo is out-of-focus background (sklearn's flower: 59% of its patches are
# below 1% of the mean) the median patch is itself near-flat, and a rule relative to it
# keeps the background. Near-flat patches carry no structure to learn, and their per-sample
# R^2 (SS_tot ~ 0) is not defined well enough to average: a trained ipvae reconstructs
# the validation patches below 1% of the mean with per-sample R^2 -1.3 on average (as low
# as -29), those between 10% and 20% with 0.74 (docs/science.md, section 6). Sparse-coding
# data preparation discards them.
FLAT_FRACTION = 0.1


def to_gray(image: np.ndarray) -> np.ndarray:
    """Convert an image to float64 grayscale.

    Args:
        image: [H, W] or [H, W, C] with C in {1, 3, 4} (alpha is dropped); integer images
            are scaled by their dtype's maximum, booleans to {0, 1}.

    Returns:
        [H, W] float64 (luminance weights 0.2125 R + 0.7154 G + 0.0721 B, as skimage).

    Raises:
        ValueError: for any other shape.
    """
    img = np.asarray(image)
    if img.dtype == bool:
        img = img.astype(np.float64)
    elif np.issubdtype(img.dtype, np.integer):
        img = img.astype(np.float64) / float(np.iinfo(img.dtype).max)
    else:
        img = img.astype(np.float64)
    if img.ndim == 3 and img.shape[2] in (1, 3, 4):
        if img.shape[2] == 1:
            img = img[..., 0]
        else:
            img = img[..., :3] @ np.array([0.2125, 0.7154, 0.0721])
    if img.ndim != 2:
        raise ValueError(f"expected a [H, W] or [H, W, 1|3|4] image, got shape {img.shape}")
    return img


def whiten_image(image: np.ndarray, f0_fraction: float = 0.4, pad: int = 32) -> np.ndarray:
    """Whiten one grayscale image with the filter |f| * exp(-(|f| / f0)^4).

    The image is mean-subtracted and mirror-padded by `pad` pixels before the FFT so that
    the circular convolution does not see a jump at the borders; the result is cropped back
    and scaled to unit variance (the overall scale is set later by the train-set
    standardisation, this only keeps images comparable).

    Args:
        image: [H, W] float grayscale.
        f0_fraction: roll-off frequency as a fraction of Nyquist.
        pad: mirror padding in pixels on each side.

    Returns:
        [H, W] float64 whitened image with mean ~0 and std 1 (all zeros if the image is
        constant).
    """
    img = np.asarray(image, dtype=np.float64)
    img = img - img.mean()
    padded = np.pad(img, pad, mode="symmetric")
    fy = np.fft.fftfreq(padded.shape[0])[:, None]
    fx = np.fft.rfftfreq(padded.shape[1])[None, :]
    freq = np.sqrt(fx**2 + fy**2)
    f0 = f0_fraction * NYQUIST
    filt = freq * np.exp(-((freq / f0) ** 4))
    out = np.fft.irfft2(np.fft.rfft2(padded) * filt, s=padded.shape)
    out = out[pad : pad + img.shape[0], pad : pad + img.shape[1]]
    std = out.std()
    return out / std if std > 0 else out


def mean_patch_variance(image: np.ndarray, patch_size: int) -> float:
    """The mean variance of all patch_size x patch_size patches of image [H, W] (each about
    its own mean), exactly, from box sums: mean over windows of E_w[x^2] - E_w[x]^2."""
    img = np.asarray(image, dtype=np.float64)
    img = img - img.mean()  # box sums of a zero-mean image lose less to cancellation

    def window_means(a: np.ndarray) -> np.ndarray:
        c = np.pad(a, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
        p = patch_size
        return (c[p:, p:] - c[:-p, p:] - c[p:, :-p] + c[:-p, :-p]) / (p * p)

    return float(np.mean(window_means(img * img) - window_means(img) ** 2))


def flat_patch_rule(flat_fraction: float) -> str:
    """The patch rule in words, as a shard manifest records it (`meta.flat_patch_rule`):
    shards whose manifest says otherwise were cut by another rule (see
    `fondtrain.data.shards.ensure_shards`)."""
    return f"skip if var < {flat_fraction} * mean patch var of its image"


def sample_patches(
    image: np.ndarray,
    n_patches: int,
    patch_size: int,
    rng: np.random.Generator,
    flat_fraction: float = FLAT_FRACTION,
) -> tuple[np.ndarray, float]:
    """Cut patches at uniformly random positions, skipping near-flat ones.

    A candidate is skipped when its variance is below `flat_fraction` times the image's
    mean patch variance (`mean_patch_variance`; why the mean: see FLAT_FRACTION).

    Args:
        image: [H, W] (whitened) image with H, W >= patch_size.
        n_patches: number of patches to return.
        patch_size: side P of the square patches.
        rng: numpy Generator (the only source of randomness: deterministic given its seed).
        flat_fraction: threshold as a fraction of the mean patch variance.

    Returns:
        (patches [n_patches, P * P] float64, fraction of the drawn candidates that were
        near-flat and skipped).

    Raises:
        ValueError: if the image is smaller than a patch, constant, or too few patches pass.
    """
    img = np.asarray(image, dtype=np.float64)
    if img.shape[0] < patch_size or img.shape[1] < patch_size:
        raise ValueError(f"image of shape {img.shape} is smaller than a {patch_size}-px patch")
    windows = sliding_window_view(img, (patch_size, patch_size))  # [Y, X, P, P] view
    n_y, n_x = windows.shape[:2]
    typical = mean_patch_variance(img, patch_size)
    if typical <= 0.0:
        raise ValueError("every patch of this image is constant")
    threshold = flat_fraction * typical
    kept: list[np.ndarray] = []
    n_kept = n_skipped = n_drawn = 0
    for _ in range(100):
        if n_kept >= n_patches:
            break
        n_draw = max(2 * (n_patches - n_kept), 256)
        cand = windows[rng.integers(0, n_y, n_draw), rng.integers(0, n_x, n_draw)]
        ok = cand.var(axis=(1, 2)) >= threshold
        n_skipped += int((~ok).sum())
        n_drawn += n_draw
        good = cand[ok][: n_patches - n_kept]
        kept.append(good.reshape(len(good), patch_size * patch_size))
        n_kept += len(good)
    if n_kept < n_patches:
        raise ValueError(f"only {n_kept} of {n_patches} patches are not near-flat")
    return np.concatenate(kept, axis=0), n_skipped / n_drawn


def dead_leaves(
    size: int,
    rng: np.random.Generator,
    r_min: float = 1.0,
    r_max: float = 64.0,
    supersample: int = 2,
    max_disks: int = 200_000,
) -> np.ndarray:
    """One dead-leaves image: opaque disks of uniform random gray, occluding each other.

    Radii follow p(r) ~ r^-3 on [r_min, r_max] (pixels), the scale-invariant law that gives
    the model a power spectrum close to 1/|f|^2 (amplitude ~1/|f|), like natural images
    (Ruderman 1997; Lee, Mumford & Huang 2001). Disks are laid front to back: each one
    only paints the pixels no nearer disk covers, until the picture is covered (or
    `max_disks` were laid; a pixel still uncovered keeps gray 0.5). The picture is drawn
    at `supersample` times the resolution and box-averaged down, which antialiases edges.

    Args:
        size: side of the square output in pixels.
        rng: numpy Generator (the only source of randomness).
        r_min, r_max: radius range in output pixels.
        supersample: drawing resolution factor.
        max_disks: cap on the number of disks.

    Returns:
        [size, size] float64 in [0, 1].
    """
    s = supersample
    n = size * s
    canvas = np.full((n, n), np.nan)
    uncovered = n * n
    # inverse-CDF sampling of p(r) ~ r^-3: r = (r_min^-2 - u (r_min^-2 - r_max^-2))^-1/2
    a, b = r_min**-2.0, r_max**-2.0
    for _ in range(max_disks // 4096):
        block = 4096
        radius = s * (a - rng.random(block) * (a - b)) ** -0.5
        # centres may lie off the canvas so that edges are as likely as the middle
        cy, cx = rng.uniform(-radius, n + radius), rng.uniform(-radius, n + radius)
        gray = rng.random(block)
        for r, y, x, g in zip(radius, cy, cx, gray, strict=True):
            y0, y1 = max(int(y - r), 0), min(int(np.ceil(y + r)) + 1, n)
            x0, x1 = max(int(x - r), 0), min(int(np.ceil(x + r)) + 1, n)
            if y0 >= y1 or x0 >= x1:
                continue
            yy = np.arange(y0, y1)[:, None] + 0.5 - y
            xx = np.arange(x0, x1)[None, :] + 0.5 - x
            window = canvas[y0:y1, x0:x1]
            paint = (yy**2 + xx**2 <= r * r) & np.isnan(window)
            count = int(paint.sum())
            if count:
                window[paint] = g
                uncovered -= count
                if uncovered == 0:
                    break
        if uncovered == 0:
            break
    canvas[np.isnan(canvas)] = 0.5
    return canvas.reshape(size, s, size, s).mean(axis=(1, 3))
