"""Evaluation uses the soft-clamp opening a checkpoint's run had reached."""

from __future__ import annotations

import pytest

from fondtrain import run_files
from fondtrain.eval.convergence import checkpoint_eps
from fondtrain.train.loop import make_schedule, train
from tests.train_helpers import tiny_config


def test_checkpoint_eps_follows_the_schedule(digits_shards, tmp_path):
    # 10 steps of a 100-epoch schedule: eps is still near 0
    config = tiny_config(digits_shards, tmp_path / "runs", "early", epochs=100, max_steps=10)
    result = train(config)
    saved = run_files.latest_checkpoint(result.run_dir / "ckpt")
    state = run_files.read_trainer_state(saved)
    expected = make_schedule(config, state["total_steps"]).eps(9)
    assert checkpoint_eps(saved) == pytest.approx(expected)
    assert 0.0 <= checkpoint_eps(saved) < 0.05


def test_checkpoint_eps_is_one_without_trainer_state(tmp_path):
    assert checkpoint_eps(tmp_path) == 1.0
