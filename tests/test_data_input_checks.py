"""Data input checked at shard time: square patches only, one shard folder per array file,
shards verified once (re-hashed when a file changes), the reference's default data places."""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest

from fondtrain.data.shard_reader import VERIFIED
from fondtrain.data.shards import build_shards, ensure_shards, shard_folder
from fondtrain.data.sources import load_source
from fondtrain.errors import UserError


def _array(path, shape, seed=0):
    np.save(path, np.random.default_rng(seed).normal(size=shape).astype(np.float32))
    return path


@pytest.mark.parametrize("shape", [(50, 7), (50, 5, 3), (50, 2, 4, 4)])
def test_non_square_samples_are_refused_before_anything_is_written(tmp_path, shape):
    source = _array(tmp_path / "odd.npy", shape)
    with pytest.raises(UserError, match="square image patches"):
        build_shards("npy", tmp_path / "shards", path=source)
    assert not (tmp_path / "shards").exists() or not any((tmp_path / "shards").iterdir())


def test_singleton_channel_axis_is_accepted(tmp_path):
    data = load_source("npy", path=_array(tmp_path / "c.npy", (40, 1, 8, 8)))
    assert data.input_dim == 64 and data.meta["sample_shape"] == [8, 8]
    vh = load_source("vh16", path=_array(tmp_path / "processed.npy", (40, 1, 16, 16)))
    assert vh.input_dim == 256


def test_each_array_file_gets_its_own_shard_folder(tmp_path):
    a, b = _array(tmp_path / "a.npy", (60, 16), 1), _array(tmp_path / "b.npy", (60, 16), 2)
    folder_a = ensure_shards("npy", tmp_path / "shards", path=a)
    folder_b = ensure_shards("npy", tmp_path / "shards", path=b)
    assert folder_a != folder_b and folder_a == shard_folder(tmp_path / "shards", "npy", a)
    assert folder_a.name.startswith("npy-a-") and (folder_b / "manifest.json").is_file()
    assert ensure_shards("npy", tmp_path / "shards", path=a) == folder_a  # reused, not rebuilt


def test_shards_are_hashed_once_and_again_after_a_change(tmp_path):
    source = _array(tmp_path / "x.npy", (400, 16))
    folder = ensure_shards("npy", tmp_path / "shards", path=source)
    ensure_shards("npy", tmp_path / "shards", path=source)  # verifies in full, records the stamp
    assert (folder / VERIFIED).is_file()
    shard = sorted(folder.glob("train-*.tar"))[0]
    before = shard.stat()
    data = bytearray(shard.read_bytes())
    data[600] ^= 0xFF  # corrupt one byte, same size, same mtime: not re-hashed
    shard.write_bytes(bytes(data))
    os.utime(shard, ns=(before.st_atime_ns, before.st_mtime_ns))
    ensure_shards("npy", tmp_path / "shards", path=source)
    os.utime(shard, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))  # a change: re-hashed
    with pytest.raises(UserError, match="sha256"):
        ensure_shards("npy", tmp_path / "shards", path=source)


def _idx(path, array):
    code = {np.uint8: 0x08}[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.tobytes())


def test_vh16_and_mnist_default_to_the_reference_places(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(UserError, match=f"{tmp_path}/Datasets/DOVES/vH16/processed.npy .where the reference"):
        load_source("vh16")
    (tmp_path / "Datasets/DOVES/vH16").mkdir(parents=True)
    _array(tmp_path / "Datasets/DOVES/vH16/processed.npy", (30, 16, 16))
    assert load_source("vh16").input_dim == 256
    with pytest.raises(UserError, match="Datasets/MNIST/processed"):
        load_source("mnist")
    raw, processed = tmp_path / "Datasets/MNIST/raw", tmp_path / "Datasets/MNIST/processed"
    raw.mkdir(parents=True)
    processed.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 12), ("t10k", 5)):
        _idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        _idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n, dtype=np.uint8))
    data = load_source("mnist")
    assert data.x_train.shape == (12, 784) and data.x_val.shape == (5, 784)
