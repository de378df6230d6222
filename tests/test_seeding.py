"""One seed per run: every stream derived by fondtrain.seeding.stream_seed."""

from __future__ import annotations

import pytest
import torch

from fondtrain.config import DataConfig, ModelConfig, RunConfig
from fondtrain.seeding import PURPOSES, stream_seed
from fondtrain.train.batch import make_inputs


def test_streams_are_deterministic_and_distinct_by_purpose_and_key():
    seeds = {(p, k): stream_seed(3, p, k, 7) for p in PURPOSES if p != "model_init" for k in range(4)}
    assert len(set(seeds.values())) == len(seeds), "no two (purpose, key) pairs share a stream"
    assert all(0 <= s < 2**63 for s in seeds.values())
    assert stream_seed(3, "sampler", 1, 7) == seeds[("sampler", 1)]
    assert stream_seed(4, "sampler", 1, 7) != seeds[("sampler", 1)]
    assert stream_seed(3, "model_init") == 3  # the reference's torch.manual_seed(seed)
    with pytest.raises(ValueError, match="unknown random stream"):
        stream_seed(0, "smapler")


def test_jitter_feeder_differs_across_ranks_and_follows_the_seed():
    """Issue 13 item 10: the feeder was seeded by the step alone (every rank the same
    jitter path, --seed ignored)."""
    config = RunConfig(model=ModelConfig(n_latents=4, t_train=6), data=DataConfig(feeder="jitter"))
    x = torch.randn(8, 256, generator=torch.Generator().manual_seed(0))
    frames = {(seed, rank): make_inputs(config, x, stream_seed(seed, "feeder", rank, 5))
              for seed in (0, 1) for rank in (0, 1)}
    assert frames[(0, 0)].shape == (6, 1, 8, 256)  # steps, members (shared), batch, pixels
    assert not torch.equal(frames[(0, 0)], frames[(0, 1)])
    assert not torch.equal(frames[(0, 0)], frames[(1, 0)])
    torch.testing.assert_close(make_inputs(config, x, stream_seed(0, "feeder", 0, 5)), frames[(0, 0)],
                               rtol=0, atol=0)
