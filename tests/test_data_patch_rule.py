"""The near-flat patch rule of the photo data sets: what its threshold means, that no
kept patch lies below it, and that shards cut by an older rule are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from fondtrain.data import photo_sources
from fondtrain.data.shard_reader import load_manifest
from fondtrain.data.shards import ensure_shards
from fondtrain.data.sources import load_source
from fondtrain.data.whiten import FLAT_FRACTION, flat_patch_rule, mean_patch_variance, sample_patches
from fondtrain.errors import UserError
from fondtrain.eval.data import load_eval_data

SMALL_LEAVES = {"n_train": 600, "n_val": 200, "n_images": 4, "image_size": 64}


def _all_patch_variances(img: np.ndarray, p: int) -> np.ndarray:
    return sliding_window_view(img, (p, p)).var(axis=(2, 3))


def test_mean_patch_variance_is_the_mean_over_every_patch():
    img = np.random.default_rng(0).standard_normal((30, 41)) * np.linspace(0.1, 3, 41) + 5.0
    for p in (1, 4, 16):
        assert mean_patch_variance(img, p) == pytest.approx(_all_patch_variances(img, p).mean(), rel=1e-10)


def _mostly_background() -> np.ndarray:
    """A picture like sklearn's flower: three quarters out-of-focus background (tiny
    variance), one quarter texture. Its median patch is background."""
    rng = np.random.default_rng(1)
    img = 1e-3 * rng.standard_normal((96, 96))
    img[:48, :48] += rng.standard_normal((48, 48))
    return img


def test_threshold_is_a_fraction_of_the_mean_patch_variance_not_the_median():
    img = _mostly_background()
    variances = _all_patch_variances(img, 8)
    mean = mean_patch_variance(img, 8)
    assert np.median(variances) < 1e-4 * mean  # a median-based rule would keep the background
    patches, flat_rate = sample_patches(img, 400, 8, np.random.default_rng(2))
    kept = patches.var(axis=1)
    assert kept.min() >= FLAT_FRACTION * mean  # the threshold's meaning, exactly
    assert kept.min() > 1e3 * np.median(variances)  # so no background patch is kept
    assert 0.5 < flat_rate < 0.9  # most candidates (the background) were skipped
    everything, none_skipped = sample_patches(img, 400, 8, np.random.default_rng(2), flat_fraction=0.0)
    assert none_skipped == 0.0 and everything.var(axis=1).min() < 1e-5


def test_sample_patches_is_deterministic_given_the_generator():
    img = _mostly_background()
    a, _ = sample_patches(img, 50, 8, np.random.default_rng(5))
    b, _ = sample_patches(img, 50, 8, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)


def test_no_natural16_validation_patch_is_near_flat():
    data = load_source("natural16", seed=0, n_train=800, n_val=300)
    assert data.meta["flat_patch_rule"] == flat_patch_rule(FLAT_FRACTION)
    # patch variances in the whitened photos' units (the scalar standardisation scales them)
    var = data.x_val.astype(np.float64).var(axis=1) * data.meta["normalization"]["std"] ** 2
    floor = min(mean_patch_variance(photo_sources._whitened_builtin(name, 0.4), 16)
                for name in photo_sources.VAL_IMAGES)
    assert var.min() >= FLAT_FRACTION * floor * (1 - 1e-5)  # float32 storage
    # the flower photo is mostly out-of-focus background: the rule skips most of it
    assert data.meta["val_images"]["flower"]["flat_rate"] > 0.5
    assert data.meta["val_images"]["gravel"]["flat_rate"] < 0.01


def _age(folder, rule: str) -> None:
    """Make a shard folder look as if an older fondtrain had cut it by `rule`."""
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["meta"]["flat_patch_rule"] = rule
    path.write_text(json.dumps(manifest))


def test_shards_cut_by_an_older_rule_are_refused_until_rebuilt(tmp_path):
    root = tmp_path / "shards"
    folder = ensure_shards("deadleaves16", root, **SMALL_LEAVES)
    assert load_manifest(folder)["meta"]["flat_patch_rule"] == flat_patch_rule(FLAT_FRACTION)
    assert ensure_shards("deadleaves16", root, **SMALL_LEAVES) == folder  # the current rule: used
    _age(folder, "skip if var < 0.01 * median patch var of its image")
    with pytest.raises(UserError, match=r"cut with an older patch rule .* --overwrite") as caught:
        ensure_shards("deadleaves16", root, **SMALL_LEAVES)
    assert str(caught.value).count(". ") == 0  # one sentence
    with pytest.raises(UserError, match="older patch rule"):
        load_eval_data("deadleaves16", None, root)  # evaluation does not read it either
    ensure_shards("deadleaves16", root, overwrite=True, **SMALL_LEAVES)
    assert load_manifest(folder)["meta"]["flat_patch_rule"] == flat_patch_rule(FLAT_FRACTION)
    assert load_eval_data("deadleaves16", None, root).x_val.shape == (200, 256)


def test_data_sets_without_the_rule_are_not_checked(tmp_path):
    folder = ensure_shards("digits", tmp_path)
    assert "flat_patch_rule" not in load_manifest(folder)["meta"]
    assert ensure_shards("digits", tmp_path) == folder
