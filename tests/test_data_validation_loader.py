"""A validation split smaller than processes x batch size still validates: every sample
once, the same number of batches on every rank (real digits shards)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fondtrain.data.loader import ShardLoader, validation_loader
from fondtrain.data.shard_reader import read_split
from fondtrain.errors import UserError


@pytest.mark.parametrize("in_memory", [True, False])
@pytest.mark.parametrize("world,batch", [(2, 200), (3, 50), (1, 1000), (2, 7)])
def test_validation_covers_every_sample_once_in_step(digits_shards, world, batch, in_memory):
    folder = digits_shards / "digits"
    x_all, _ = read_split(folder, "val")
    loaders = [validation_loader(folder, batch, rank=r, world_size=world, in_memory=in_memory)
               for r in range(world)]
    counts = {loader.batches_per_epoch for loader in loaders}
    assert len(counts) == 1
    batches = [[b["x"] for b in loader.epoch(0)] for loader in loaders]
    assert all(len(b) == loaders[0].batches_per_epoch for b in batches)
    assert all(x.shape[0] <= batch for rank in batches for x in rank)
    gathered = torch.cat([torch.cat(rank) for rank in batches])  # rank order, as gather gives
    padded = loaders[0].n_padded
    assert padded < world * loaders[0].batches_per_epoch
    once = gathered[: gathered.shape[0] - padded].numpy()
    assert once.shape[0] == x_all.shape[0] == 360
    assert np.array_equal(np.sort(once, axis=0), np.sort(x_all, axis=0))


def test_the_training_style_loader_refuses_the_small_split(digits_shards):
    """The fault: a drop-last loader of 360 samples on 2 x 200 has no batch at all."""
    with pytest.raises(UserError, match="fewer than"):
        ShardLoader(digits_shards / "digits", "val", batch_size=200, world_size=2, shuffle=False)
