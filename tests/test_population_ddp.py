"""A population under `accelerate launch` with 2 processes: every member data-parallel
over both ranks (DDP averages each member's gradient over the ranks, which is exact since
members are independent), and resume equals the uninterrupted run bit for bit."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from tests.test_train_ddp import ACCELERATE_2PROC
from tests.train_helpers import REPO, scalars, subprocess_env, tiny_flags

pytestmark = pytest.mark.slow


def test_two_process_population_resume_equals_uninterrupted(digits_shards, tmp_path):
    flags = dict(epochs=2, lr=1e-2, sweep="beta_outer=0.1,1 seed=0,1", n_exp_refresh_every=10,
                 log_every=5, ckpt_every=0)

    def launch(name: str, out: str, **extra):
        run = tiny_flags(digits_shards, tmp_path / "runs", name, **flags, **extra)
        proc = subprocess.run([*ACCELERATE_2PROC, str(REPO / "tests" / "ddp_worker.py"), str(tmp_path / out), *run],
                              cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]

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
