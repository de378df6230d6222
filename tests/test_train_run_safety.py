"""A run is one run, end to end through the trainer (issue 13): the run-folder lock, the
config-checked resume and the checkpoint fallback, as `train` uses them."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from fondtrain.errors import UserError
from fondtrain.runs import files as run_files
from fondtrain.train.run_lock import RunLock
from fondtrain.train.trainer import train
from tests.train_helpers import tiny_config


def test_a_second_training_on_a_locked_run_folder_is_refused(digits_shards, tmp_path):
    config = tiny_config(digits_shards, tmp_path, "busy", max_steps=2)
    with RunLock(tmp_path / "busy"), pytest.raises(UserError, match="is in use by pid"):
        train(config)
    assert not (tmp_path / "busy" / "ckpt").exists() and not (tmp_path / "busy" / "config.yaml").exists()
    # the holder gone, the same command runs (and releases the lock at its end)
    assert train(tiny_config(digits_shards, tmp_path, "busy", max_steps=2)).step == 2
    with RunLock(tmp_path / "busy"):
        pass


def test_resume_with_other_settings_stops_unless_forced(digits_shards, tmp_path):
    train(tiny_config(digits_shards, tmp_path, "lr", max_steps=3, lr=0.005))
    before = (tmp_path / "lr" / "config.yaml").read_text()
    with pytest.raises(UserError, match=r"lr.*--name NEW.*--resume force"):
        train(tiny_config(digits_shards, tmp_path, "lr", max_steps=6, lr=0.02))
    assert (tmp_path / "lr" / "config.yaml").read_text() == before, "a refused resume writes nothing"
    # max_steps alone does not change the run's meaning
    assert train(tiny_config(digits_shards, tmp_path, "lr", max_steps=5, lr=0.005)).step == 5
    forced = train(tiny_config(digits_shards, tmp_path, "lr", max_steps=7, lr=0.02, resume="force"))
    assert forced.step == 7
    assert "lr" in (tmp_path / "lr" / "resume_log.txt").read_text().splitlines()[-1]


def test_default_names_keep_runs_with_other_settings_apart(digits_shards, tmp_path):
    a = train(tiny_config(digits_shards, tmp_path, "", max_steps=2, lr=0.005))
    b = train(tiny_config(digits_shards, tmp_path, "", max_steps=2, lr=0.02))
    assert a.run_dir != b.run_dir and a.step == b.step == 2


def test_a_corrupt_newest_checkpoint_resumes_from_the_one_before(digits_shards, tmp_path, capsys):
    train(tiny_config(digits_shards, tmp_path, "fall", max_steps=8, ckpt_every=4))
    newest = run_files.latest_checkpoint(tmp_path / "fall" / "ckpt")
    assert newest.name == "step-00000008"
    (newest / run_files.MODEL_FILE).write_bytes(b"not a safetensors file")
    result = train(tiny_config(digits_shards, tmp_path, "fall", max_steps=10, ckpt_every=4))
    captured = capsys.readouterr()
    assert "cannot load" in captured.err and "step-00000008" in captured.err
    assert "step-00000004" in captured.out, "the banner names the checkpoint it resumed from"
    assert result.step == 10
    # it went on from step 4: the step-8 checkpoint was written anew from the resumed run
    state = json.loads((run_files.latest_checkpoint(tmp_path / "fall" / "ckpt") / run_files.TRAINER_STATE).read_text())
    assert state["global_step"] == 10
    assert load_file(str(run_files.step_dir(tmp_path / "fall" / "ckpt", 8) / run_files.MODEL_FILE))


def test_a_run_folder_that_cannot_be_written_is_one_sentence(digits_shards, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the runs folder must be")
    with pytest.raises(UserError, match="cannot write the run folder .*--runs_root"):
        train(tiny_config(digits_shards, blocker, "x", max_steps=2))
