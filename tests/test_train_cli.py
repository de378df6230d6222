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
