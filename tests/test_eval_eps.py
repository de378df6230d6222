"""Evaluation uses the soft-clamp opening a checkpoint's run had reached."""

from __future__ import annotations

import pytest

from fondtrain.config import RunConfig, TrainConfig, save_yaml
from fondtrain.config.schedules import schedule_for
from fondtrain.config.sweep import run_members
from fondtrain.runs import files as run_files
from fondtrain.train.trainer import train
from tests.train_helpers import tiny_config


def test_checkpoint_eps_follows_the_schedule(digits_shards, tmp_path):
    # 10 steps of a 100-epoch schedule: eps is still near 0
    config = tiny_config(digits_shards, tmp_path / "runs", "early", epochs=100, max_steps=10)
    result = train(config)
    saved = run_files.latest_checkpoint(result.run_dir / "ckpt")
    state = run_files.read_trainer_state(saved)
    expected = schedule_for(config, state["total_steps"]).eps(9)
    assert run_files.checkpoint_eps(saved) == pytest.approx(expected)
    assert 0.0 <= run_files.checkpoint_eps(saved) < 0.05


def test_checkpoint_eps_is_one_without_trainer_state(tmp_path):
    assert run_files.checkpoint_eps(tmp_path) == 1.0


def test_checkpoint_records_its_eps_and_older_ones_are_recomputed(digits_shards, tmp_path):
    """The eps reached is in trainer_state.json; a checkpoint written before it was gets
    the same value from its schedule (fondtrain.config.schedules, no trainer import)."""
    import json

    config = tiny_config(digits_shards, tmp_path / "runs", "recorded", epochs=100, max_steps=12)
    saved = run_files.latest_checkpoint(train(config).run_dir / "ckpt")
    state = run_files.read_trainer_state(saved)
    assert state["eps"] == [schedule_for(config, state["total_steps"]).eps(11)] and state["eps"][0] > 0
    recorded = run_files.checkpoint_eps(saved)
    del state["eps"]
    (saved / run_files.TRAINER_STATE).write_text(json.dumps(state))
    assert run_files.checkpoint_eps(saved) == pytest.approx(recorded, rel=1e-12)


def test_each_member_has_its_own_eps_and_single_models_one_number(tmp_path):
    """A sweep's checkpoint records one eps per member (recomputed from each member's own
    schedule where it does not say); a single model's checkpoint written before every
    model had a member axis holds one number."""
    import json

    config = RunConfig(train=TrainConfig(sweep="kl_anneal_portion=0.1,0.4"))
    save_yaml(config, tmp_path / "config.yaml")
    state = {"global_step": 30, "total_steps": 100}
    (tmp_path / run_files.TRAINER_STATE).write_text(json.dumps(state))
    members = run_members(config)
    recomputed = [run_files.checkpoint_eps(tmp_path, i) for i in (0, 1)]
    assert recomputed == [schedule_for(m.config, 100).eps(29) for m in members]
    assert recomputed[0] == 1.0 > recomputed[1] > 0
    (tmp_path / run_files.TRAINER_STATE).write_text(json.dumps({**state, "eps": [0.25, 0.5]}))
    assert [run_files.checkpoint_eps(tmp_path, i) for i in (0, 1)] == [0.25, 0.5]
    (tmp_path / run_files.TRAINER_STATE).write_text(json.dumps({**state, "eps": 0.75}))
    assert run_files.checkpoint_eps(tmp_path) == 0.75
