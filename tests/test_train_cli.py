"""User errors of `fondtrain train` / launch/train.py: one sentence, exit 2, nothing written."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fondtrain.cli.flags import resolve_config
from fondtrain.config import TrainConfig
from fondtrain.errors import UserError
from tests.train_helpers import REPO, subprocess_env

BAD_FLAGS = [
    (["--model", "vae"], "--model 'vae' is not one of ipvae, igvae, igrelu"),
    (["--n_latents", "0"], "n_latents must be a whole number of at least 1"),
    (["--batch_size", "ten"], "--batch_size got 'ten'"),
    (["--beta_outer", "-1"], "beta_outer must be zero or positive"),
    (["--no_such_option", "1"], "unknown option --no_such_option"),
    (["--dataset", "vh16", "--data_path", "/nonexistent/processed.npy"], "/nonexistent/processed.npy"),
    (["--config", "/nonexistent/run.yaml"], "config file /nonexistent/run.yaml does not exist"),
]


@pytest.mark.parametrize("flags,message", BAD_FLAGS)
def test_bad_input_is_one_sentence_and_writes_nothing(tmp_path, flags, message):
    cmd = [sys.executable, str(REPO / "launch" / "train.py"), *flags,
           "--runs_root", str(tmp_path / "runs"), "--shards_root", str(tmp_path / "shards")]
    proc = subprocess.run(cmd, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and message in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists() and not list((tmp_path / "shards").glob("*/*.tar"))


def test_a_size_the_data_set_decides_is_refused_after_the_shards_are_built(tmp_path):
    """--input_dim 256 on 8x8 samples: train says it built the shards, then refuses in one
    sentence before a run folder exists."""
    import numpy as np

    np.save(tmp_path / "arr.npy", np.random.default_rng(0).standard_normal((300, 8, 8)).astype(np.float32))
    cmd = [sys.executable, "-m", "fondtrain.cli", "train", "--dataset", "npy", "--path", "arr.npy",
           "--input_dim", "256", "--runs_root", "runs", "--shards_root", "shards"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.splitlines() == ["error: --input_dim 256 does not fit data set npy, whose samples have 64 "
                                        "values: leave --input_dim out (the data set decides it)."]
    built = [line for line in proc.stdout.splitlines() if line.startswith("built the missing shards: ")]
    assert len(built) == 1 and built[0].startswith("built the missing shards: read arr.npy: 270 train / "
                                                   "30 validation samples -> shards/npy-arr-"), proc.stdout
    assert not (tmp_path / "runs").exists()


def test_the_data_set_fills_in_the_input_size():
    from fondtrain.config import ModelConfig, with_input_dim

    assert ModelConfig().input_dim is None
    assert with_input_dim(ModelConfig(), 64, "digits").input_dim == 64
    assert with_input_dim(ModelConfig(input_dim=64), 64, "digits").input_dim == 64
    with pytest.raises(UserError, match="--input_dim 256 does not fit data set natural16"):
        with_input_dim(ModelConfig(input_dim=256), 64, "natural16")


def test_yaml_then_flags(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  preset: igrelu\n  n_latents: 64\ntrain:\n  epochs: 7\n")
    config = resolve_config(str(path), {"n_latents": 32, "seed": 3, "clamp_u": "7,2.5"})
    assert config.model.preset == "igrelu" and config.model.n_latents == 32
    assert config.train.epochs == 7 and config.train.seed == config.model.seed == config.data.seed == 3
    assert config.model.clamp_u == (7.0, 2.5)


@pytest.mark.parametrize("field,value", [("batch_size", 0), ("lr", 0.0), ("kl_anneal_portion", 1.5),
                                         ("max_steps", -1), ("keep_last", 0)])
def test_train_config_validation(field, value):
    with pytest.raises(UserError):
        TrainConfig(**{field: value})
