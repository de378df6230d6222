"""Another meaning, another run: the default name hashes the meaningful settings and a
resume with changed settings stops (or, forced, is recorded)."""

from __future__ import annotations

import dataclasses

import pytest

from fondtrain.config import RunConfig, TrainConfig, save_yaml
from fondtrain.errors import UserError
from fondtrain.train.run_identity import RESUME_LOG, check_resume, config_differences, default_run_name


def _config(**train) -> RunConfig:
    return RunConfig(train=TrainConfig(**train))


def test_default_name_differs_by_meaning_not_by_bookkeeping():
    base = default_run_name(_config())
    assert base.startswith("natural16-ipvae-k512-t16-b24-s0-")
    assert default_run_name(_config(lr=0.05)) != base
    assert default_run_name(_config(batch_size=64)) != base
    assert default_run_name(_config(epochs=5)) != base
    assert default_run_name(_config(max_steps=30, log_every=7, ckpt_every=10, keep_last=1)) == base
    assert default_run_name(_config()) == base  # stable


def _run_with_checkpoint(tmp_path, config):
    run_dir = tmp_path / "runs" / "r"
    checkpoint = run_dir / "ckpt" / "step-00000010"
    checkpoint.mkdir(parents=True)
    save_yaml(config, checkpoint / "config.yaml")
    save_yaml(config, run_dir / "config.yaml")
    return run_dir, checkpoint


def test_changed_meaning_stops_with_the_differences_and_the_ways_out(tmp_path):
    old = _config(name="r")
    run_dir, checkpoint = _run_with_checkpoint(tmp_path, old)
    new = _config(name="r", lr=0.05, batch_size=64, max_steps=30)
    with pytest.raises(UserError) as err:
        check_resume(run_dir, checkpoint, new)
    message = str(err.value)
    assert "train.lr 0.005 -> 0.05" in message and "train.batch_size 200 -> 64" in message
    assert "max_steps" not in message
    assert "--name NEW" in message and "--resume force" in message
    assert "\n" not in message
    assert not (run_dir / RESUME_LOG).exists()


def test_same_meaning_resumes_and_force_records_the_differences(tmp_path):
    old = _config(name="r")
    run_dir, checkpoint = _run_with_checkpoint(tmp_path, old)
    assert check_resume(run_dir, checkpoint, _config(name="r", max_steps=30, eval_every=5)) is None
    forced = _config(name="r", lr=0.05, resume="force")
    note = check_resume(run_dir, checkpoint, forced)
    assert "train.lr 0.005 -> 0.05" in note
    log = (run_dir / RESUME_LOG).read_text().splitlines()
    assert len(log) == 2 and "train.lr 0.005 -> 0.05" in log[1] and "--resume force" in log[1]


def test_never_refuses_an_existing_checkpoint_and_nothing_to_resume_passes(tmp_path):
    run_dir, checkpoint = _run_with_checkpoint(tmp_path, _config(name="r"))
    with pytest.raises(UserError, match="--resume is never"):
        check_resume(run_dir, checkpoint, _config(name="r", resume="never"))
    assert check_resume(run_dir, None, _config(name="r", lr=1.0)) is None
    with pytest.raises(UserError, match="resume must be one of"):
        _config(resume="sometimes")


def test_a_setting_unknown_to_an_older_config_counts_only_when_changed():
    saved = RunConfig().to_dict()
    del saved["train"]["resume"], saved["train"]["seed"]
    new = RunConfig()
    assert config_differences(saved, new) == []
    new = dataclasses.replace(new, train=dataclasses.replace(new.train, seed=3))
    assert config_differences(saved, new) == ["train.seed (unset) -> 3"]
