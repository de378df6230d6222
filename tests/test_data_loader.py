"""ShardLoader: equal batches per rank, coverage, determinism, resume, both modes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fondtrain.data.loader import ShardLoader
from fondtrain.data.shards import write_shards
from fondtrain.data.stream import rank_pieces, rebatch
from fondtrain.errors import UserError

N = 1000
M = 4

# in-memory; streaming in-process with one shuffle window per rank, or with windows
# smaller than a rank's data; streaming through a DataLoader with 2 workers (small windows)
MODES = {
    "memory": dict(in_memory=True),
    "stream": dict(),
    "stream_window": dict(shuffle_buffer=130),
    "stream_w2": dict(num_workers=2, shuffle_buffer=130),
}


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    """1000 samples in shards of 300, 300, 300, 100 (blocks of 64); x[:, 0] = y = sample id."""
    x = np.random.default_rng(0).standard_normal((N, M)).astype(np.float32)
    x[:, 0] = np.arange(N)
    y = np.arange(N, dtype=np.int64)
    root = tmp_path_factory.mktemp("loader")
    return write_shards(root / "ds", "toy", {"train": (x, y), "val": (x[:90], y[:90])},
                        {"seed": 0}, samples_per_shard=300, block_size=64)


def _epoch_ids(loader: ShardLoader, epoch: int, skip: int = 0) -> list[list[int]]:
    out = []
    for batch in loader.epoch(epoch, skip_batches=skip):
        assert batch["x"].dtype == torch.float32 and batch["y"].dtype == torch.int64
        assert batch["x"].shape == (loader.batch_size, M)
        assert torch.equal(batch["x"][:, 0].long(), batch["y"])  # x and y stay aligned
        out.append(batch["y"].tolist())
    return out


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("drop_last", [True, False])
def test_every_rank_gets_the_same_batches_and_epoch_covers_data(shard_dir, mode, world,
                                                                 drop_last):
    batch = 64  # 1000 / (world * 64) is never whole: there is always a remainder
    loaders = [ShardLoader(shard_dir, batch_size=batch, rank=r, world_size=world,
                           drop_last=drop_last, **MODES[mode]) for r in range(world)]
    expected = N // (world * batch) if drop_last else -(-N // (world * batch))
    per_rank = [_epoch_ids(ld, 0) for ld in loaders]
    assert [len(b) for b in per_rank] == [expected] * world
    assert all(ld.batches_per_epoch == expected for ld in loaders)
    ids = [i for rank in per_rank for b in rank for i in b]
    assert len(ids) == world * expected * batch
    if drop_last:
        assert len(set(ids)) == len(ids)  # no duplicates
        assert loaders[0].n_dropped == N - len(ids) < world * batch
    else:
        assert set(ids) == set(range(N))  # everything, plus the documented padding
        assert len(ids) - len(set(ids)) == loaders[0].n_padded < world * batch


@pytest.mark.parametrize("mode", list(MODES))
def test_epochs_differ_and_seed_reproduces(shard_dir, mode):
    kw = dict(batch_size=50, rank=1, world_size=2, **MODES[mode])
    a = ShardLoader(shard_dir, seed=7, **kw)
    e0, e1 = _epoch_ids(a, 0), _epoch_ids(a, 1)
    assert e0 != e1 and sorted(map(sorted, e0)) != sorted(map(sorted, e1))
    assert _epoch_ids(ShardLoader(shard_dir, seed=7, **kw), 0) == e0
    assert _epoch_ids(a, 0) == e0  # re-iterating an epoch gives it again
    assert _epoch_ids(ShardLoader(shard_dir, seed=8, **kw), 0) != e0


@pytest.mark.parametrize("mode", list(MODES))
def test_skip_batches_continues_where_a_full_epoch_would(shard_dir, mode):
    loader = ShardLoader(shard_dir, batch_size=50, rank=0, world_size=2, seed=3, **MODES[mode])
    full = _epoch_ids(loader, 2)
    assert len(full) == 10
    for skip in (1, 4, 9):
        assert _epoch_ids(loader, 2, skip=skip) == full[skip:]


def test_skip_batches_out_of_range(shard_dir):
    loader = ShardLoader(shard_dir, batch_size=50, in_memory=True)
    assert list(loader.epoch(0, skip_batches=loader.batches_per_epoch)) == []
    with pytest.raises(UserError, match="skip_batches"):
        list(loader.epoch(0, skip_batches=loader.batches_per_epoch + 1))


@pytest.mark.parametrize("mode", ["memory", "stream"])
def test_no_shuffle_keeps_stored_order(shard_dir, mode):
    from fondtrain.data.shard_reader import read_split

    _, stored = read_split(shard_dir, "train")
    loader = ShardLoader(shard_dir, batch_size=100, shuffle=False, **MODES[mode])
    ids = [i for b in _epoch_ids(loader, 5) for i in b]
    assert ids == stored.tolist()


@pytest.mark.parametrize("mode", ["memory", "stream"])
def test_more_ranks_than_shards(shard_dir, mode):
    # 4 train shards, 6 ranks: every rank still gets data and the same batch count
    world = 6
    per_rank = [_epoch_ids(ShardLoader(shard_dir, batch_size=20, rank=r, world_size=world,
                                       **MODES[mode]), 0) for r in range(world)]
    assert [len(b) for b in per_rank] == [8] * world
    ids = [i for rank in per_rank for b in rank for i in b]
    assert len(set(ids)) == len(ids) == 960


def test_val_split_padding_for_evaluation(shard_dir):
    # 90 val samples, batch 40, 1 rank, no shuffle, no drop: 3 batches, last 30 wrap to the start
    loader = ShardLoader(shard_dir, split="val", batch_size=40, shuffle=False, drop_last=False)
    ids = _epoch_ids(loader, 0)
    assert loader.n_padded == 30 and len(ids) == 3
    assert ids[2] == list(range(80, 90)) + list(range(30))


def test_streaming_workers_match_modes_in_content(shard_dir):
    # different orders per mode, but each covers the same set per rank count
    sets = []
    for mode in MODES.values():
        loader = ShardLoader(shard_dir, batch_size=100, **mode)
        sets.append(sorted(i for b in _epoch_ids(loader, 0) for i in b))
    assert sets[0] == sets[1] == sets[2] == list(range(N))


def test_loader_attributes(shard_dir):
    loader = ShardLoader(shard_dir, batch_size=200, rank=2, world_size=4)
    assert loader.input_dim == M and loader.has_labels and loader.n_samples == N
    assert loader.batches_per_epoch == 1 == len(loader) and loader.n_dropped == 200


def test_bad_loader_arguments(shard_dir, tmp_path):
    with pytest.raises(UserError, match="fewer than world_size x batch_size"):
        ShardLoader(shard_dir, batch_size=600, world_size=2)
    with pytest.raises(UserError, match="rank 2 is not in"):
        ShardLoader(shard_dir, rank=2, world_size=2)
    with pytest.raises(UserError, match="no split 'test'"):
        ShardLoader(shard_dir, split="test")
    with pytest.raises(UserError, match="does not exist"):
        ShardLoader(tmp_path / "missing")


def test_rank_pieces_wraps_around():
    sizes = [300, 300, 300, 100]
    order = [3, 0, 2, 1]  # concatenated: 100 | 300 | 300 | 300
    assert rank_pieces(sizes, order, 50, 300) == [(3, 50, 100), (0, 0, 250)]
    assert rank_pieces(sizes, order, 950, 200) == [(1, 250, 300), (3, 0, 100), (0, 0, 50)]


@pytest.mark.parametrize("workers", [0, 1])
def test_truncated_shard_is_a_one_line_user_error_when_streaming(shard_dir, tmp_path, workers):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(shard_dir, copy)
    path = copy / "train-000000.tar"
    path.write_bytes(path.read_bytes()[: 10 * 1024])
    loader = ShardLoader(copy, batch_size=100, shuffle=False, num_workers=workers)
    with pytest.raises(UserError, match=r"^\S*train-000000\.tar cannot be read") as info:
        list(loader.epoch(0))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_block_that_does_not_decode_is_a_one_line_user_error_when_streaming(shard_dir, tmp_path, workers):
    """A same-size corruption of a block's .npy header (webdataset: DecodingError)."""
    import shutil
    import tarfile

    copy = tmp_path / "copy"
    shutil.copytree(shard_dir, copy)
    path = copy / "train-000000.tar"
    with tarfile.open(path) as tar:
        offset = next(m for m in tar.getmembers() if m.name.endswith(".npy")).offset_data
    data = bytearray(path.read_bytes())
    data[offset:offset + 16] = bytes(16)
    path.write_bytes(bytes(data))
    loader = ShardLoader(copy, batch_size=100, shuffle=False, num_workers=workers)
    with pytest.raises(UserError, match=r"^\S*train-000000\.tar cannot be read \(DecodingError\)") as info:
        list(loader.epoch(0))
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_training_that_meets_a_corrupt_block_mid_stream_stops_with_one_sentence(digits_shards, tmp_path):
    """`--in_memory false` reads the shards during training: a block of the second shard
    whose bytes changed after the start-up check (size and mtime kept, as verified.json
    sees them) is met mid-epoch."""
    import os
    import shutil
    import subprocess
    import sys
    import tarfile

    from tests.train_helpers import REPO, subprocess_env, tiny_flags

    shards = tmp_path / "shards"
    shutil.copytree(digits_shards, shards)
    flags = tiny_flags(shards, tmp_path / "runs", "tar", in_memory="false")

    def train(*extra):
        return subprocess.run([sys.executable, str(REPO / "launch" / "train.py"), *flags, *extra], cwd=tmp_path,
                              env=subprocess_env(), capture_output=True, text=True, timeout=600)

    assert train("--max_steps=1", "--name=first").returncode == 0  # verifies the shards once
    path = shards / "digits" / "train-000001.tar"
    stat = path.stat()
    with tarfile.open(path) as tar:
        offset = next(m for m in tar.getmembers() if m.name.endswith(".npy") and "labels" not in m.name).offset_data
    data = bytearray(path.read_bytes())
    data[offset:offset + 16] = bytes(16)
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    proc = train()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path} cannot be read (DecodingError)"), proc.stderr


def test_rebatch_cuts_any_chunk_sizes_into_full_batches():
    sizes = [3, 7, 5, 1, 4]  # 20 samples, B = 4
    start, chunks = 0, []
    for n in sizes:
        chunks.append({"x": torch.arange(start, start + n).float()[:, None],
                       "y": torch.arange(start, start + n)})
        start += n
    batches = list(rebatch(iter(chunks), 4))
    assert [b["y"].tolist() for b in batches] == [list(range(i, i + 4)) for i in range(0, 20, 4)]
    with pytest.raises(RuntimeError, match="left over"):
        list(rebatch(iter(chunks[:2]), 4))
