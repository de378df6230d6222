"""Shards: WebDataset layout, manifest, atomic writes, verification, ensure_shards."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile

import numpy as np
import pytest
import webdataset as wds

from fondtrain.data import shards
from fondtrain.data.shard_reader import load_manifest, read_split, verify_shards
from fondtrain.data.shards import default_samples_per_shard, ensure_shards, write_shards
from fondtrain.errors import UserError


def _ids_data(n: int, m: int = 4):
    """x [n, m] with x[:, 0] = row id, y = row id: lets tests track every sample."""
    x = np.random.default_rng(0).standard_normal((n, m)).astype(np.float32)
    x[:, 0] = np.arange(n)
    return x, np.arange(n, dtype=np.int64)


@pytest.fixture
def small(tmp_path):
    x, y = _ids_data(1000)
    out = write_shards(
        tmp_path / "ds", "toy", {"train": (x, y), "val": (x[:130], y[:130])},
        {"seed": 3, "sample_shape": [2, 2], "normalization": {"mean": 1.5, "std": 2.0},
         "source": "unit test"},
        samples_per_shard=300, block_size=64,
    )
    return out, x, y


def test_layout_and_manifest(small):
    out, x, y = small
    names = sorted(os.listdir(out))
    assert names == ["manifest.json", "train-000000.tar", "train-000001.tar",
                     "train-000002.tar", "train-000003.tar", "val-000000.tar"]
    m = load_manifest(out)
    assert m["dataset"] == "toy" and m["seed"] == 3 and m["source"] == "unit test"
    assert m["input_dim"] == 4 and m["sample_shape"] == [2, 2] and m["dtype"] == "float32"
    assert m["label_dtype"] == "int64" and m["normalization"] == {"mean": 1.5, "std": 2.0}
    assert m["fondtrain_version"] and m["created"].endswith("+00:00")
    train = m["splits"]["train"]
    assert train["n_samples"] == 1000 and [s["n_samples"] for s in train["shards"]] == [
        300, 300, 300, 100]
    assert [s["n_blocks"] for s in train["shards"]] == [5, 5, 5, 2]
    assert m["splits"]["val"]["n_samples"] == 130
    for s in train["shards"]:
        data = (out / s["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == s["sha256"] and len(data) == s["bytes"]


def test_tar_is_a_webdataset_of_blocks(small):
    out, x, y = small
    with tarfile.open(out / "train-000000.tar") as tar:
        names = tar.getnames()
    assert names[:2] == ["block_000000.labels.npy", "block_000000.npy"]
    samples = list(wds.WebDataset(str(out / "train-000003.tar"), shardshuffle=False).decode())
    assert [s["__key__"] for s in samples] == ["block_000015", "block_000016"]
    assert samples[0]["npy"].shape == (64, 4) and samples[1]["npy"].shape == (36, 4)
    xb = samples[0]["npy"]
    np.testing.assert_array_equal(samples[0]["labels.npy"], xb[:, 0].astype(np.int64))


def test_read_split_returns_the_same_rows_shuffled(small):
    out, x, y = small
    got_x, got_y = read_split(out, "train")
    assert sorted(got_y.tolist()) == list(range(1000))
    assert not np.array_equal(got_y, y)  # train rows are stored in a seeded permutation
    np.testing.assert_array_equal(got_x, x[got_y])
    val_x, val_y = read_split(out, "val")
    np.testing.assert_array_equal(val_y, y[:130])  # val keeps its order


def test_same_input_gives_identical_bytes(tmp_path):
    x, y = _ids_data(500)
    metas = []
    for name in ("a", "b"):
        out = write_shards(tmp_path / name, "toy", {"train": (x, y)}, {"seed": 1},
                           samples_per_shard=200)
        metas.append([s["sha256"] for s in load_manifest(out)["splits"]["train"]["shards"]])
    assert metas[0] == metas[1]
    out = write_shards(tmp_path / "c", "toy", {"train": (x, y)}, {"seed": 2},
                       samples_per_shard=200)
    assert [s["sha256"] for s in load_manifest(out)["splits"]["train"]["shards"]] != metas[0]


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    x, y = _ids_data(1000)
    real = shards._write_split

    def failing(folder, split, *args):
        if split == "val":  # train is already on disk when this fails
            assert any(folder.iterdir())
            raise RuntimeError("disk full")
        return real(folder, split, *args)

    monkeypatch.setattr(shards, "_write_split", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        write_shards(tmp_path / "ds", "toy", {"train": (x, y), "val": (x, y)}, {},
                     samples_per_shard=300)
    assert os.listdir(tmp_path) == []  # no final folder, no hidden partial folder


def test_failed_overwrite_keeps_the_old_folder(small, monkeypatch):
    out, x, y = small
    before = load_manifest(out)

    def failing(*args, **kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(shards, "_write_split", failing)
    with pytest.raises(RuntimeError):
        write_shards(out, "toy", {"train": (x, y)}, {}, overwrite=True)
    assert verify_shards(out)["created"] == before["created"]
    assert sorted(os.listdir(out.parent)) == ["ds"]


def test_existing_folder_needs_overwrite(small):
    out, x, y = small
    with pytest.raises(UserError, match="already exists"):
        write_shards(out, "toy", {"train": (x, y)}, {})
    write_shards(out, "toy2", {"train": (x[:10], y[:10])}, {}, overwrite=True)
    assert load_manifest(out)["dataset"] == "toy2"
    assert sorted(os.listdir(out.parent)) == ["ds"]


# ------------------------------------------------------------------ verification


def test_verify_accepts_good_shards(small):
    out, _, _ = small
    assert verify_shards(out)["splits"]["train"]["n_samples"] == 1000


def test_verify_detects_truncation(small):
    out, _, _ = small
    path = out / "train-000001.tar"
    path.write_bytes(path.read_bytes()[:-700])
    with pytest.raises(UserError, match=r"train-000001\.tar has \d+ bytes.*truncated"):
        verify_shards(out)


def test_verify_detects_corruption(small):
    out, _, _ = small
    path = out / "train-000002.tar"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"train-000002\.tar fails its sha256 check"):
        verify_shards(out)


def test_verify_detects_missing_shard_and_manifest(small):
    out, _, _ = small
    (out / "val-000000.tar").unlink()
    with pytest.raises(UserError, match=r"val-000000\.tar is missing"):
        verify_shards(out)
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(UserError, match=r"manifest\.json is not valid JSON"):
        verify_shards(out)
    (out / "manifest.json").unlink()
    with pytest.raises(UserError, match=r"manifest\.json is missing"):
        verify_shards(out)
    with pytest.raises(UserError, match="does not exist"):
        verify_shards(out / "nope")


def _rewrite_shard(out, name, blocks):
    """Replace shard `name` by `blocks` [(key, x, y)] and fix its size / sha in the manifest."""
    path = out / name
    with open(path, "wb") as fh:
        writer = wds.TarWriter(fh)
        for key, xb, yb in blocks:
            writer.write({"__key__": key, "npy": xb, "labels.npy": yb})
        writer.close()
    m = json.loads((out / "manifest.json").read_text())
    for s in m["splits"]["train"]["shards"]:
        if s["file"] == name:
            s["bytes"] = path.stat().st_size
            s["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (out / "manifest.json").write_text(json.dumps(m))


def test_verify_detects_wrong_shape(small):
    out, _, _ = small
    _rewrite_shard(out, "train-000003.tar", [
        ("block_000015", np.zeros((64, 5), np.float32), np.zeros(64, np.int64)),
        ("block_000016", np.zeros((36, 5), np.float32), np.zeros(36, np.int64)),
    ])
    with pytest.raises(UserError, match=r"train-000003\.tar block 15 has shape \(64, 5\)"):
        verify_shards(out)


def test_verify_detects_count_mismatch(small):
    out, _, _ = small
    _rewrite_shard(out, "train-000003.tar", [
        ("block_000015", np.zeros((64, 4), np.float32), np.zeros(64, np.int64)),
    ])
    with pytest.raises(UserError, match=r"train-000003\.tar holds 64 samples.*says 100"):
        verify_shards(out)


def test_verify_reports_unreadable_tar(small):
    out, _, _ = small
    path = out / "train-000000.tar"
    path.write_bytes(b"\x00garbage" * 100)
    m = json.loads((out / "manifest.json").read_text())
    entry = m["splits"]["train"]["shards"][0]
    entry["bytes"], entry["sha256"] = path.stat().st_size, hashlib.sha256(
        path.read_bytes()).hexdigest()
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UserError, match=r"train-000000\.tar"):
        verify_shards(out)


# ------------------------------------------------------------------ ensure_shards


def test_ensure_shards_builds_once_and_checks_options(tmp_path):
    root = tmp_path / "shards"
    out = ensure_shards("digits", root, seed=0)
    assert out == root / "digits"
    m = verify_shards(out)
    assert m["splits"]["train"]["n_samples"] == 1437 and m["input_dim"] == 64
    assert m["source_kwargs"] == {"seed": 0, "val_fraction": 0.2}
    stamp = (out / "manifest.json").stat().st_mtime_ns
    assert ensure_shards("digits", root, seed=0) == out  # no-op
    assert (out / "manifest.json").stat().st_mtime_ns == stamp
    with pytest.raises(UserError, match=r"val_fraction=0\.2 \(asked 0\.3\)"):
        ensure_shards("digits", root, val_fraction=0.3)
    with pytest.warns(UserWarning, match="built with seed 0, not 1"):
        assert ensure_shards("digits", root, seed=1) == out  # kept, with a warning
    assert (out / "manifest.json").stat().st_mtime_ns == stamp
    ensure_shards("digits", root, seed=1, overwrite=True)
    assert load_manifest(out)["seed"] == 1


def test_ensure_shards_keeps_another_path_apart(tmp_path):
    for name in ("a.npy", "b.npy"):
        np.save(tmp_path / name, np.zeros((50, 4), np.float32))
    out = ensure_shards("npy", tmp_path / "sh", path=tmp_path / "a.npy")
    assert ensure_shards("npy", tmp_path / "sh", path=tmp_path / "a.npy") == out
    other = ensure_shards("npy", tmp_path / "sh", path=tmp_path / "b.npy")
    assert other != out and load_manifest(other)["source_kwargs"]["path"].endswith("b.npy")


def test_ensure_shards_labels_round_trip(tmp_path):
    out = ensure_shards("digits", tmp_path)
    x, y = read_split(out, "val")
    assert x.shape == (360, 64) and y.dtype == np.int64 and set(y.tolist()) == set(range(10))


def test_default_samples_per_shard():
    assert default_samples_per_shard(100_000) == 2048  # 49 shards
    assert default_samples_per_shard(100_000, block_size=256) == 1792  # 56 shards
    assert default_samples_per_shard(100) == 1024
    assert default_samples_per_shard(10_000_000) == 8192
    assert default_samples_per_shard(100_000, block_size=100) % 100 == 0


def test_write_rejects_bad_arrays(tmp_path):
    with pytest.raises(ValueError):
        write_shards(tmp_path / "a", "t", {"train": (np.zeros(5), None)}, {})
    with pytest.raises(ValueError):
        write_shards(tmp_path / "b", "t", {"train": (np.zeros((5, 2)), np.zeros(4))}, {})
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_unlabelled_blocks_have_no_label_member(tmp_path):
    x = np.ones((10, 3), np.float32)
    out = write_shards(tmp_path / "u", "t", {"train": (x, None)}, {})
    with tarfile.open(out / "train-000000.tar") as tar:
        assert tar.getnames() == ["block_000000.npy"]
        member = tar.extractfile("block_000000.npy").read()
    np.testing.assert_array_equal(np.load(io.BytesIO(member)), x)
    assert read_split(out)[1] is None
