"""The built-in dead-leaves data set: deterministic, scale-invariant, natural-image-like."""

from __future__ import annotations

import numpy as np
import pytest

from fondtrain.data.shard_reader import load_manifest
from fondtrain.data.shards import build_shards
from fondtrain.data.sources import load_source
from fondtrain.data.whiten import dead_leaves
from fondtrain.errors import UserError

SMALL = {"n_train": 2000, "n_val": 400, "n_images": 4, "image_size": 96}


def _radial_power_slope(img: np.ndarray) -> float:
    """Slope of log power against log |f| over 0.02..0.3 cycles/pixel."""
    power = np.abs(np.fft.fft2(img - img.mean())) ** 2
    fy = np.fft.fftfreq(img.shape[0])[:, None]
    fx = np.fft.fftfreq(img.shape[1])[None, :]
    freq = np.hypot(fx, fy).ravel()
    edges = np.geomspace(0.02, 0.3, 9)
    idx = np.digitize(freq, edges)
    mean_power = [power.ravel()[idx == i].mean() for i in range(1, len(edges))]
    centres = np.sqrt(edges[1:] * edges[:-1])
    return float(np.polyfit(np.log(centres), np.log(mean_power), 1)[0])


def test_dead_leaves_image_is_covered_and_scale_invariant():
    img = dead_leaves(256, np.random.default_rng(0))
    assert img.shape == (256, 256) and img.min() >= 0.0 and img.max() <= 1.0
    # occluding disks of uniform random gray: many distinct levels
    assert len(np.unique(np.round(img, 3))) > 200
    # natural images: power ~ 1/|f|^2 (amplitude ~ 1/|f|); white noise would give 0
    assert -2.4 < _radial_power_slope(img) < -1.5
    np.testing.assert_array_equal(img, dead_leaves(256, np.random.default_rng(0)))
    assert not np.array_equal(img, dead_leaves(256, np.random.default_rng(1)))


def test_deadleaves16_source_is_deterministic_and_held_out():
    a = load_source("deadleaves16", seed=3, **SMALL)
    b = load_source("deadleaves16", seed=3, **SMALL)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.x_val, b.x_val)
    assert a.x_train.shape == (2000, 256) and a.x_val.shape == (400, 256)
    assert a.x_train.dtype == np.float32
    assert abs(float(a.x_train.mean())) < 1e-4 and abs(float(a.x_train.std()) - 1) < 1e-4
    assert set(a.meta["train_images"]) == {f"leaves-{i}" for i in range(4)}
    assert set(a.meta["val_images"]) == {"leaves-4"}
    other = load_source("deadleaves16", seed=4, **SMALL)
    assert not np.array_equal(other.x_train, a.x_train)


def test_deadleaves16_bad_options_are_one_sentence():
    with pytest.raises(UserError, match="image_size >= 32"):
        load_source("deadleaves16", image_size=20)


def test_shard_builds_deadleaves16_deterministically(tmp_path):
    one = build_shards("deadleaves16", tmp_path / "a", seed=0, **SMALL)
    two = build_shards("deadleaves16", tmp_path / "b", seed=0, **SMALL)
    m1, m2 = load_manifest(one), load_manifest(two)
    assert m1["dataset"] == "deadleaves16" and m1["input_dim"] == 256
    for split in ("train", "val"):
        assert [s["sha256"] for s in m1["splits"][split]["shards"]] == \
            [s["sha256"] for s in m2["splits"][split]["shards"]]
