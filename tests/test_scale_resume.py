"""Resuming on a different number of processes (the Accelerate / DDP back end).

The weights and Adamax state are whole under DDP and load anywhere; the data position and
the schedule clock are mapped to the new epoch length; no rank needs saved RNG state (every
member's noise is re-seeded at each step from its seed, the data rank and the step).
"""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from fondtrain.errors import UserError
from fondtrain.runs import files as run_files
from fondtrain.train.resume import adapt_position, check_backend
from fondtrain.train.trainer import member_generators
from tests.train_helpers import ACCELERATE_2PROC, REPO, subprocess_env


def _saved(**over):
    state = {"global_step": 46, "epoch": 1, "batch_in_epoch": 11, "world_size": 2, "steps_per_epoch": 35,
             "total_steps": 700, "rate_sum": [1.0], "rate_count": 3}
    state.update(over)
    return state


def test_same_world_size_keeps_the_position():
    state, message = adapt_position(_saved(), steps_per_epoch=35, world_size=2, epochs=20)
    assert message is None and state == _saved()


def test_fewer_processes_continue_at_the_same_fraction_of_the_epoch():
    state, message = adapt_position(_saved(), steps_per_epoch=71, world_size=1, epochs=20)
    assert state["epoch"] == 1 and state["batch_in_epoch"] == round(11 * 71 / 35) == 22
    assert state["global_step"] == 71 + 22  # epoch x batches_per_epoch + batch: the schedule clock
    assert state["world_size"] == 1 and state["steps_per_epoch"] == 71
    assert state["rate_sum"] == [1.0] and state["rate_count"] == 3
    assert "2 process(es)" in message and "now 1" in message


def test_more_processes_and_old_checkpoints_without_steps_per_epoch():
    old = _saved(world_size=1, global_step=71 + 60, batch_in_epoch=60)
    del old["steps_per_epoch"]
    old["total_steps"] = 71 * 20
    state, _ = adapt_position(old, steps_per_epoch=17, world_size=4, epochs=20)
    assert state["batch_in_epoch"] == round(60 * 17 / 71) and state["global_step"] == 17 + state["batch_in_epoch"]
    # an epoch that had ended stays ended (the loop rolls over to the next one)
    state, _ = adapt_position(_saved(batch_in_epoch=35, global_step=70), steps_per_epoch=71, world_size=1, epochs=20)
    assert state["batch_in_epoch"] == 71 and state["global_step"] == 142


def test_every_rank_draws_its_own_noise_without_saved_rng_state():
    """A rank's sampler generators are a function of (member seed, rank, step): any rank of
    any world size resumes without saved RNG state."""
    from fondtrain.config import RunConfig
    from fondtrain.config.sweep import run_members

    members = run_members(RunConfig())

    def draws(rank: int, step: int) -> torch.Tensor:
        return torch.rand(3, generator=member_generators(members, rank, step, "cpu")[0])

    assert not torch.equal(draws(0, 10), draws(1, 10)), "ranks draw differently"
    assert not torch.equal(draws(1, 10), draws(1, 11)), "steps draw differently"
    assert torch.equal(draws(1, 10), draws(1, 10)), "deterministic given (seed, rank, step)"


def test_checkpoint_of_the_other_backend_is_refused(tmp_path):
    check_backend(tmp_path, "accelerate")
    (tmp_path / "deepspeed").mkdir()
    check_backend(tmp_path, "deepspeed")
    with pytest.raises(UserError, match="--backend deepspeed"):
        check_backend(tmp_path, "accelerate")


@pytest.mark.slow
def test_resume_on_one_then_two_then_one_process(digits_shards, tmp_path, capsys):
    """1 process (6 steps) -> 2 processes resume (to 12) -> 1 process resumes (to 30). The
    Adamax state survives both changes: its step count is the sum of all steps taken."""
    from fondtrain.cli.flags import parse_args
    from fondtrain.data.loader import ShardLoader
    from fondtrain.train.trainer import train

    runs = tmp_path / "runs"
    flags = ["--dataset", "digits", "--shards_root", str(digits_shards), "--runs_root", str(runs),
             "--name", "elastic", "--model", "igvae", "--n_latents", "16", "--t_train", "2",
             "--batch_size", "20", "--epochs", "20", "--log_every", "3"]
    ckpt_root = runs / "elastic" / "ckpt"
    spe1, spe2 = (ShardLoader(digits_shards / "digits", "train", batch_size=20, rank=0, world_size=w)
                  .batches_per_epoch for w in (1, 2))
    at2, at1 = round(6 * spe2 / spe1), round(12 * spe1 / spe2)  # the mapped positions (epoch 0)

    first = train(parse_args(flags + ["--max_steps", "6"]))
    assert first.step == 6

    two = subprocess.run(
        [*ACCELERATE_2PROC, str(REPO / "launch" / "train.py"), *flags, "--max_steps", "12"],
        cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=240)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    # e.g. 1 process: 71 batches per epoch; 2 processes: 35. Step 6 -> batch round(6 * 35 / 71) = 3.
    assert f"checkpoint written by 1 process(es) with {spe1} batches per epoch; now 2 with {spe2}" in two.stdout
    assert f"global step 6 -> {at2}" in two.stdout
    assert "RNG" not in two.stderr, "no rank needs saved RNG state"
    middle = run_files.latest_checkpoint(ckpt_root)
    assert middle.name == "step-00000012" and run_files.read_trainer_state(middle)["world_size"] == 2

    capsys.readouterr()
    last = train(parse_args(flags + ["--max_steps", "30"]))
    printed = capsys.readouterr()
    assert f"global step 12 -> {at1}" in printed.out
    assert "RNG" not in printed.err
    assert last.step == 30
    optimizer = torch.load(run_files.latest_checkpoint(ckpt_root) / "optimizer.bin", weights_only=False)
    steps = {float(s["step"]) for s in optimizer["state"].values()}
    assert steps == {6 + (12 - at2) + (30 - at1)}, steps
    state = json.loads((run_files.latest_checkpoint(ckpt_root) / run_files.TRAINER_STATE).read_text())
    assert state["world_size"] == 1 and state["global_step"] == 30
