"""A population under `accelerate launch` with 2 processes and --population_parallel data:
every member data-parallel over both ranks (DDP averages each member's gradient over the ranks, which is exact since
members are independent), and resume equals the uninterrupted run bit for bit."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from tests.train_helpers import (
    ACCELERATE_2PROC,
    REPO,
    accelerate_launch,
    run_ddp_worker,
    scalars,
    subprocess_env,
    tiny_flags,
)

pytestmark = pytest.mark.slow


def test_two_process_population_resume_equals_uninterrupted(digits_shards, tmp_path):
    flags = dict(epochs=2, lr=1e-2, sweep="beta_outer=0.1,1 seed=0,1", n_exp_refresh_every=10,
                 log_every=5, ckpt_every=0, population_parallel="data")

    def launch(name: str, out: str, **extra):
        run_ddp_worker(digits_shards, tmp_path, name, out, **flags, **extra)

    launch("whole", "whole")
    launch("split", "first", max_steps=25)
    state = json.loads((tmp_path / "runs" / "split" / "ckpt" / "step-00000025" / "trainer_state.json").read_text())
    assert len(state["rate_sum"]) == 2 and len(state["rate_sum"][0]) == 4, "[rank][member][t]"
    launch("split", "second")
    for rank in (0, 1):
        whole, split = (load_file(str(tmp_path / d / f"rank{rank}.safetensors")) for d in ("whole", "second"))
        assert whole["W"].shape[0] == 4
        for name in whole:
            torch.testing.assert_close(split[name], whole[name], rtol=0, atol=0, msg=f"rank {rank} {name}")
    rank0, rank1 = (load_file(str(tmp_path / "whole" / f"rank{r}.safetensors")) for r in (0, 1))
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), f"ranks disagree on {name}"
    member = "b1-s1"
    a, b = (dict(scalars(tmp_path / "runs" / n / "members" / member / "tb")["train/loss"]) for n in ("whole", "split"))
    assert sorted(b) == sorted(a) and [b[k] for k in sorted(a)] == [a[k] for k in sorted(a)]


def test_population_saved_on_two_ranks_resumes_on_one_and_on_three(digits_shards, tmp_path):
    """The members' weights, PopulationAdamax state and per-member n_exp sums load on any
    number of processes; the position maps to the new epoch length as for one model."""
    from fondtrain.cli.flags import parse_args
    from fondtrain.runs import files as run_files
    from fondtrain.train.trainer import train

    runs = tmp_path / "runs"
    flags = tiny_flags(digits_shards, runs, "elastic", epochs=3, sweep="beta_outer=0.1,1", log_every=5,
                       n_exp_refresh_every=5, population_parallel="data")
    ckpt_root = runs / "elastic" / "ckpt"
    proc = subprocess.run([*ACCELERATE_2PROC, str(REPO / "launch" / "train.py"), *flags, "--max_steps=12"],
                          cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert run_files.read_trainer_state(run_files.latest_checkpoint(ckpt_root))["world_size"] == 2
    one = train(parse_args([*flags, "--max_steps=40"]))
    assert one.step == 40 and one.model.W.shape[0] == 2
    three = [*accelerate_launch(3), str(REPO / "launch" / "train.py"), *flags]
    proc = subprocess.run(three, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming" in proc.stdout and "written by 1 process(es)" in proc.stdout and "now 3" in proc.stdout
    state = run_files.read_trainer_state(run_files.latest_checkpoint(ckpt_root))
    assert state["world_size"] == 3 and state["global_step"] == state["total_steps"]
    assert len(state["rate_sum"]) == 3 and len(state["rate_sum"][0]) == 2
    optimizer = torch.load(run_files.latest_checkpoint(ckpt_root) / "optimizer.bin", weights_only=False)
    assert {tuple(g["lr"].shape) for g in optimizer["param_groups"]} == {(2,)}
