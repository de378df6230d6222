"""`fondtrain shard` / `fondtrain verify` through a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fondtrain.cli import run_or_exit
from fondtrain.data.shards import shard_folder
from fondtrain.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def fondtrain(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "fondtrain.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_help_lists_commands(tmp_path):
    res = fondtrain("--help", cwd=tmp_path)
    assert res.returncode == 0
    text = res.stdout + res.stderr
    assert "shard" in text and "verify" in text and "Convert a data set" in text


def _array_file(folder: Path) -> Path:
    """A small [500, 8, 8] float array: numpy-only sources keep the subprocesses quick."""
    path = folder / "arr.npy"
    np.save(path, np.random.default_rng(0).standard_normal((500, 8, 8)).astype(np.float32))
    return path


def test_shard_then_verify(tmp_path):
    _array_file(tmp_path)
    res = fondtrain("shard", "--dataset", "npy", "--path", "arr.npy", "--out", "sh",
                    "--seed", "2", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    folder = shard_folder("sh", "npy", tmp_path / "arr.npy")
    assert res.stdout.strip() == str(folder) and folder.name.startswith("npy-arr-")
    assert res.stderr.strip() == f"read arr.npy: 450 train / 50 validation samples -> {folder}"
    assert (tmp_path / folder / "manifest.json").is_file()
    res = fondtrain("verify", str(folder), cwd=tmp_path)
    assert res.returncode == 0 and res.stdout.startswith(f"ok: {folder}")
    assert "M=64, train 450, val 50" in res.stdout
    # a second shard without --overwrite is refused, with --overwrite it rebuilds
    res = fondtrain("shard", "--dataset", "npy", "--path", "arr.npy", "--out", "sh", cwd=tmp_path)
    assert res.returncode == 2 and "--overwrite" in res.stderr
    res = fondtrain("shard", "--dataset", "npy", "--path", "arr.npy", "--out", "sh",
                    "--overwrite", cwd=tmp_path)
    assert res.returncode == 0, res.stderr


def _one_error_line(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.stderr
    return lines[0]


def test_bad_path_exits_2_with_one_line_and_no_output(tmp_path):
    line = _one_error_line(fondtrain("shard", "--dataset", "vh16", "--path",
                                     "missing/processed.npy", "--out", "out", cwd=tmp_path))
    assert "missing/processed.npy" in line
    assert not (tmp_path / "out").exists()


def test_wrong_shape_file_exits_2_and_leaves_nothing(tmp_path):
    np.save(tmp_path / "processed.npy", np.zeros((20, 5), np.float32))
    line = _one_error_line(fondtrain("shard", "--dataset", "vh16", "--path", "processed.npy",
                                     "--out", "out", cwd=tmp_path))
    assert "processed.npy" in line and "(20, 5)" in line
    assert not (tmp_path / "out").exists()


def test_unknown_dataset_and_corrupt_shards(tmp_path):
    line = _one_error_line(fondtrain("shard", "--dataset", "cifar", cwd=tmp_path))
    assert "unknown dataset 'cifar'" in line
    _array_file(tmp_path)
    res = fondtrain("shard", "--dataset", "npy", "--path", "arr.npy", "--out", "sh", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    folder = shard_folder("sh", "npy", tmp_path / "arr.npy")
    shard = tmp_path / folder / "val-000000.tar"
    shard.write_bytes(shard.read_bytes()[:-1000])
    line = _one_error_line(fondtrain("verify", str(folder), cwd=tmp_path))
    assert "val-000000.tar" in line


def test_console_script_if_installed(tmp_path):
    script = Path(sys.executable).parent / "fondtrain"
    if not script.exists():
        pytest.skip("fondtrain is not installed in this environment (pip install -e .)")
    res = subprocess.run([str(script), "verify", "nowhere"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60)
    assert "nowhere" in _one_error_line(res)


def test_run_or_exit_helper(capsys):
    def bad():
        raise UserError("something is wrong;\nfix it.")

    with pytest.raises(SystemExit) as info:
        run_or_exit(bad)
    assert info.value.code == 2
    assert capsys.readouterr().err == "error: something is wrong; fix it.\n"
    assert run_or_exit(lambda a, b=0: a + b, 1, b=2) == 3


def test_shard_with_another_whitening_cutoff(tmp_path):
    """--f0_fraction reaches the photo source: the manifest records it, the patches differ
    from the default cut-off's; a data set without whitening or a cut-off outside (0, 1]
    is one sentence, and nothing is written."""
    import json

    from fondtrain.data.shard_reader import read_split

    def shard(out: str, *extra: str) -> subprocess.CompletedProcess:
        return fondtrain("shard", "--dataset", "natural16", "--n_train", "200", "--n_val", "20",
                         "--out", out, *extra, cwd=tmp_path)

    assert shard("f078", "--f0_fraction", "0.78").returncode == 0
    assert shard("f040").returncode == 0
    manifest = json.loads((tmp_path / "f078" / "natural16" / "manifest.json").read_text())
    assert manifest["source_kwargs"]["f0_fraction"] == 0.78
    assert manifest["meta"]["whitening"].endswith("f0 = 0.78 * Nyquist")
    sharp, default = (read_split(tmp_path / out / "natural16", "train")[0] for out in ("f078", "f040"))
    assert sharp.shape == default.shape == (200, 256) and not np.allclose(sharp, default)
    assert "(0, 1]" in _one_error_line(shard("bad", "--f0_fraction", "1.5"))
    line = _one_error_line(fondtrain("shard", "--dataset", "digits", "--f0_fraction", "0.5", "--out", "bad",
                                     cwd=tmp_path))
    assert "no option f0_fraction" in line
    assert not (tmp_path / "bad").exists()
