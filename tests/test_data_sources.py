"""Data sources: built-in photos and digits, vH16, MNIST IDX, npy/npz, image folders."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from fondtrain.data import photo_sources
from fondtrain.data.sources import load_source, read_idx, vh16_split
from fondtrain.data.whiten import sample_patches, whiten_image
from fondtrain.errors import UserError

# --------------------------------------------------------------------- natural16


@pytest.fixture(scope="module")
def nat_small():
    return load_source("natural16", seed=0, n_train=3000, n_val=600)


def test_natural16_shapes_and_standardisation(nat_small):
    d = nat_small
    assert d.x_train.shape == (3000, 256) and d.x_val.shape == (600, 256)
    assert d.x_train.dtype == np.float32 and d.x_val.dtype == np.float32
    assert d.y_train is None and d.y_val is None
    assert abs(float(d.x_train.mean())) < 1e-4
    assert abs(float(d.x_train.std()) - 1.0) < 1e-4
    # val uses the train statistics, so it is only roughly standardised
    assert 0.5 < float(d.x_val.std()) < 2.0
    assert d.meta["sample_shape"] == [16, 16]
    assert set(d.meta["normalization"]) == {"mean", "std"}
    assert d.meta["source_kwargs"]["n_train"] == 3000


def test_natural16_val_from_held_out_images(nat_small):
    train_names = set(nat_small.meta["train_images"])
    val_names = set(nat_small.meta["val_images"])
    assert train_names == set(photo_sources.TRAIN_IMAGES)
    assert val_names == set(photo_sources.VAL_IMAGES)
    assert not train_names & val_names
    assert sum(v["n_patches"] for v in nat_small.meta["val_images"].values()) == 600
    # no val row equals a train row
    train_rows = {row.tobytes() for row in nat_small.x_train}
    assert not any(row.tobytes() in train_rows for row in nat_small.x_val)


def test_natural16_deterministic_given_seed(nat_small):
    again = load_source("natural16", seed=0, n_train=3000, n_val=600)
    np.testing.assert_array_equal(again.x_train, nat_small.x_train)
    np.testing.assert_array_equal(again.x_val, nat_small.x_val)
    other = load_source("natural16", seed=1, n_train=3000, n_val=600)
    assert not np.array_equal(other.x_train, nat_small.x_train)


def _band_amplitude(img: np.ndarray, lo: float, hi: float) -> float:
    amp = np.abs(np.fft.fft2(img - img.mean()))
    fy = np.fft.fftfreq(img.shape[0])[:, None]
    fx = np.fft.fftfreq(img.shape[1])[None, :]
    f = np.sqrt(fx**2 + fy**2)
    return float(amp[(f >= lo) & (f < hi)].mean())


def test_whitening_flattens_a_natural_spectrum():
    img = photo_sources._builtin_image("camera")
    raw_ratio = _band_amplitude(img, 0.01, 0.03) / _band_amplitude(img, 0.08, 0.15)
    white = whiten_image(img)
    white_ratio = _band_amplitude(white, 0.01, 0.03) / _band_amplitude(white, 0.08, 0.15)
    assert raw_ratio > 3.0  # 1/f: low frequencies dominate
    assert white_ratio < 2.5 and white_ratio < raw_ratio / 3  # much flatter after |f|
    assert white.shape == img.shape and abs(white.std() - 1) < 1e-9


def test_whitening_rolls_off_above_f0():
    # pad=0: the filter acts as a pure circular filter, so the spectrum can be read exactly
    noise = np.random.default_rng(0).standard_normal((128, 128))
    white = whiten_image(noise, f0_fraction=0.4, pad=0)
    mid = _band_amplitude(white, 0.1, 0.15)
    top = _band_amplitude(white, 0.42, 0.5)
    assert top < 1e-2 * mid


def test_sample_patches_skips_flat_patches():
    rng = np.random.default_rng(0)
    img = rng.standard_normal((64, 64))
    img[:, :20] = 0.0  # a flat third of the picture
    patches, flat_rate = sample_patches(img, 500, 8, np.random.default_rng(1))
    variances = patches.reshape(500, -1).var(axis=1)
    assert patches.shape == (500, 64)
    assert variances.min() > 0.01 * 0.5  # no flat patch survived
    assert flat_rate > 0.05  # and flat candidates were seen and skipped
    kept_all, rate0 = sample_patches(img, 500, 8, np.random.default_rng(1), flat_fraction=0.0)
    assert rate0 == 0.0 and kept_all.var(axis=1).min() == 0.0


def test_sample_patches_gives_up_on_a_flat_image():
    with pytest.raises(ValueError):
        sample_patches(np.zeros((32, 32)), 10, 8, np.random.default_rng(0))


# ------------------------------------------------------------------------ digits


def test_digits_split_labels_and_standardisation():
    d = load_source("digits", seed=0)
    assert d.x_train.shape == (1437, 64) and d.x_val.shape == (360, 64)
    assert d.y_train.dtype == np.int64 and set(np.unique(d.y_val)) == set(range(10))
    assert abs(float(d.x_train.mean())) < 1e-5 and abs(float(d.x_train.std()) - 1) < 1e-5
    # stratified: each class's val share is within one sample of 20 %
    for c in range(10):
        n_c = (d.y_train == c).sum() + (d.y_val == c).sum()
        assert abs((d.y_val == c).sum() - 0.2 * n_c) <= 1
    again = load_source("digits", seed=0)
    np.testing.assert_array_equal(again.x_val, d.x_val)
    assert not np.array_equal(load_source("digits", seed=1).y_val, d.y_val)


# -------------------------------------------------------------------------- vh16


def _expected_vh16_indices(n: int):
    """Hand-written reference split: 10 blocks of n // 10 (last gets the rest), last 20 %."""
    size, train, val = n // 10, [], []
    for b in range(10):
        start, end = b * size, (n if b == 9 else (b + 1) * size)
        n_val = int(np.round((end - start) * 0.2))
        train += list(range(start, end - n_val))
        val += list(range(end - n_val, end))
    return np.array(train), np.array(val)


@pytest.mark.parametrize("flat", [False, True])
def test_vh16_standardises_globally_and_splits_by_blocks(tmp_path, flat):
    n = 1003
    rng = np.random.default_rng(0)
    raw = (rng.standard_normal((n, 16, 16)) * 3 + 2).astype(np.float32)
    np.save(tmp_path / "processed.npy", raw.reshape(n, 256) if flat else raw)
    d = load_source("vh16", path=tmp_path / "processed.npy")
    tr, va = _expected_vh16_indices(n)
    assert len(va) == 9 * 20 + 21  # the last block has 103 samples -> 21 for val
    flat_raw = raw.reshape(n, 256).astype(np.float64)
    expected = (flat_raw - flat_raw.mean()) / flat_raw.std()  # over the WHOLE array
    np.testing.assert_allclose(d.x_train, expected[tr], rtol=0, atol=1e-5)
    np.testing.assert_allclose(d.x_val, expected[va], rtol=0, atol=1e-5)
    assert d.meta["normalization"]["mean"] == pytest.approx(flat_raw.mean())
    got_tr, got_va = vh16_split(n)
    np.testing.assert_array_equal(got_tr, tr)
    np.testing.assert_array_equal(got_va, va)
    # a folder holding processed.npy works too
    np.testing.assert_array_equal(load_source("vh16", path=tmp_path).x_val, d.x_val)


def test_vh16_bad_inputs_name_the_file(tmp_path):
    bad = tmp_path / "processed.npy"
    np.save(bad, np.zeros((100, 8, 8), np.float32))
    with pytest.raises(UserError, match=r"processed\.npy.*shape \(100, 8, 8\)"):
        load_source("vh16", path=bad)
    garbage = tmp_path / "garbage.npy"
    garbage.write_bytes(b"this is not numpy")
    with pytest.raises(UserError, match="garbage.npy"):
        load_source("vh16", path=garbage)
    with pytest.raises(UserError, match="missing.npy does not exist"):
        load_source("vh16", path=tmp_path / "missing.npy")
    with pytest.raises(UserError, match="needs --path"):
        load_source("vh16")


# ------------------------------------------------------------------------- mnist


def _idx_bytes(arr: np.ndarray, code: int) -> bytes:
    header = bytes([0, 0, code, arr.ndim]) + np.array(arr.shape, dtype=">u4").tobytes()
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def _write_mnist(folder, n_train=50, n_test=20, gz_train=True, seed=0):
    rng = np.random.default_rng(seed)
    data = {}
    for prefix, n, gz in (("train", n_train, gz_train), ("t10k", n_test, not gz_train)):
        img = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        lab = rng.integers(0, 10, n, dtype=np.uint8)
        for kind, arr in (("images-idx3-ubyte", img), ("labels-idx1-ubyte", lab)):
            raw = _idx_bytes(arr, 0x08)
            name = f"{prefix}-{kind}"
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
            else:
                (folder / name).write_bytes(raw)
        data[prefix] = (img, lab)
    return data


@pytest.mark.parametrize("gz_train", [True, False])
def test_mnist_reads_idx_files(tmp_path, gz_train):
    data = _write_mnist(tmp_path, gz_train=gz_train)
    d = load_source("mnist", path=tmp_path)
    img, lab = data["train"]
    assert d.x_train.shape == (50, 784) and d.x_val.shape == (20, 784)
    np.testing.assert_allclose(d.x_train, img.reshape(50, 784) / 255.0, atol=1e-7)
    np.testing.assert_array_equal(d.y_train, lab.astype(np.int64))
    np.testing.assert_array_equal(d.y_val, data["t10k"][1])
    assert d.x_train.min() >= 0 and d.x_train.max() <= 1 and d.y_train.dtype == np.int64
    assert d.meta["sample_shape"] == [28, 28]


def test_read_idx_other_types(tmp_path):
    arr = np.arange(24, dtype=np.int32).reshape(2, 3, 4) - 5
    (tmp_path / "a.idx").write_bytes(_idx_bytes(arr, 0x0C))
    np.testing.assert_array_equal(read_idx(tmp_path / "a.idx"), arr)
    farr = np.linspace(-1, 1, 6, dtype=np.float32)
    (tmp_path / "f.idx").write_bytes(gzip.compress(_idx_bytes(farr, 0x0D)))
    np.testing.assert_array_equal(read_idx(tmp_path / "f.idx"), farr)


def test_mnist_bad_files_name_the_file(tmp_path):
    _write_mnist(tmp_path, gz_train=False)
    path = tmp_path / "train-images-idx3-ubyte"
    raw = path.read_bytes()
    path.write_bytes(raw[:-100])
    with pytest.raises(UserError, match="train-images-idx3-ubyte.*truncated"):
        load_source("mnist", path=tmp_path)
    path.write_bytes(b"\x12\x34" + raw[2:])
    with pytest.raises(UserError, match="train-images-idx3-ubyte is not an IDX file"):
        load_source("mnist", path=tmp_path)
    path.write_bytes(raw)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte.*missing"):
        load_source("mnist", path=tmp_path)


# ---------------------------------------------------------------------- npy / npz


def test_npy_array_with_val_fraction(tmp_path):
    arr = np.random.default_rng(0).standard_normal((100, 5, 5)).astype(np.float32) * 4 + 1
    np.save(tmp_path / "x.npy", arr)
    d = load_source("npy", path=tmp_path / "x.npy", val_fraction=0.2, standardize=False)
    assert d.x_train.shape == (80, 25) and d.x_val.shape == (20, 25)
    assert d.meta["sample_shape"] == [5, 5]
    rows = {r.tobytes() for r in arr.reshape(100, 25)}
    got = [r.tobytes() for r in np.concatenate([d.x_train, d.x_val])]
    assert set(got) == rows and len(set(got)) == 100  # a partition of the rows
    s = load_source("npy", path=tmp_path / "x.npy")
    assert abs(float(s.x_train.mean())) < 1e-5 and len(s.x_val) == 10


def test_npz_key_and_labels(tmp_path):
    x = np.arange(80, dtype=np.float32).reshape(20, 4)
    y = np.arange(20) % 4
    np.savez(tmp_path / "d.npz", data=x, target=y)
    with pytest.raises(UserError, match=r"d\.npz holds arrays.*key="):
        load_source("npz", path=tmp_path / "d.npz")
    d = load_source("npz", path=tmp_path / "d.npz", key="data", labels_key="target",
                    val_fraction=0.25, standardize=False)
    assert d.x_train.shape == (15, 4) and d.y_val.shape == (5,)
    np.testing.assert_array_equal(d.x_val[:, 0] // 4 % 4, d.y_val)  # rows keep their labels
    with pytest.raises(UserError, match="no array 'nope'"):
        load_source("npz", path=tmp_path / "d.npz", key="nope")
    np.savez(tmp_path / "one.npz", only=x)
    assert load_source("npz", path=tmp_path / "one.npz").input_dim == 4
    np.save(tmp_path / "vec.npy", np.zeros(10))
    with pytest.raises(UserError, match=r"vec\.npy holds an array of shape \(10,\)"):
        load_source("npy", path=tmp_path / "vec.npy")


# -------------------------------------------------------------------- image folder


def _write_pngs(folder, n=3, size=64):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(img).save(folder / f"img{i}.png")


def test_image_folder_patches_with_held_out_images(tmp_path):
    _write_pngs(tmp_path / "photos", n=3)
    d = load_source("images", path=tmp_path / "photos", n_train=400, n_val=90,
                    val_fraction=0.3, patch_size=8)
    assert d.x_train.shape == (400, 64) and d.x_val.shape == (90, 64)
    assert len(d.meta["val_images"]) == 1 and len(d.meta["train_images"]) == 2
    assert not set(d.meta["val_images"]) & set(d.meta["train_images"])
    again = load_source("images", path=tmp_path / "photos", n_train=400, n_val=90,
                        val_fraction=0.3, patch_size=8)
    np.testing.assert_array_equal(again.x_val, d.x_val)


def test_image_folder_bad_inputs(tmp_path):
    _write_pngs(tmp_path / "one", n=1)
    with pytest.raises(UserError, match="one holds 1 PNG/JPG images"):
        load_source("images", path=tmp_path / "one")
    _write_pngs(tmp_path / "bad", n=2)
    (tmp_path / "bad" / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(UserError, match="broken.png"):
        load_source("images", path=tmp_path / "bad")


# ------------------------------------------------------------------------ registry


def test_unknown_dataset_and_options():
    with pytest.raises(UserError, match="unknown dataset 'cifar'"):
        load_source("cifar")
    with pytest.raises(UserError, match="has no option n_train"):
        load_source("digits", n_train=5)
    with pytest.raises(UserError, match="takes no path"):
        load_source("natural16", path="/tmp")
    msg = None
    try:
        load_source("mnist", path="/no/such/folder")
    except UserError as exc:
        msg = str(exc)
    assert msg is not None and "\n" not in msg and "/no/such/folder" in msg
