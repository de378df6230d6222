"""Real multi-process data parallelism on CPU (gloo), through `accelerate launch`."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.train_helpers import ACCELERATE_2PROC, REPO, run_ddp_worker, scalars, subprocess_env, tiny_flags

pytestmark = pytest.mark.slow



def test_two_process_ddp_ranks_agree_and_loss_falls(digits_shards, tmp_path):
    out = tmp_path / "dump"
    flags = tiny_flags(digits_shards, tmp_path / "runs", "ddp", epochs=4, lr=1e-2, beta_outer=1.0,
                       log_every=4)
    proc = subprocess.run([*ACCELERATE_2PROC, str(REPO / "tests" / "ddp_worker.py"), str(out), *flags],
                          cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [i["world_size"] for i in info] == [2, 2]
    assert info[0]["step"] == info[1]["step"] > 0
    rank0, rank1 = (load_file(str(out / f"rank{r}.safetensors")) for r in (0, 1))
    for name in rank0:
        torch.testing.assert_close(rank0[name], rank1[name], rtol=0, atol=0, msg=name)
    # both ranks trained on different halves: the steps are half those of one process
    assert info[0]["step"] == 4 * (1437 // 2 // 32)
    recon = [v for _, v in scalars(tmp_path / "runs" / "ddp" / "tb")["train/recon"]]
    assert np.mean(recon[-3:]) < np.mean(recon[:2]), recon
    assert "DistributedType.MULTI_CPU" in proc.stdout + proc.stderr or info[0]["world_size"] == 2


def test_two_process_resume_with_n_exp_refreshes_equals_uninterrupted(digits_shards, tmp_path):
    """Issue 13 item 4: every rank's own n_exp sums are saved and restored, so a 2-process
    run stopped at step 25 and resumed equals the uninterrupted one bit for bit (n_exp is
    refreshed every 10 steps from the epoch's per-rank sums, agreed across ranks)."""
    flags = dict(epochs=3, lr=1e-2, beta_outer=0.1, n_exp_refresh_every=10, log_every=5, ckpt_every=0)

    def launch(name: str, out: str, **extra):
        run_ddp_worker(digits_shards, tmp_path, name, out, **flags, **extra)

    launch("whole", "whole")
    launch("split", "first", max_steps=25)
    state = json.loads((tmp_path / "runs" / "split" / "ckpt" / "step-00000025" / "trainer_state.json").read_text())
    assert len(state["rate_sum"]) == 2 and state["rate_sum"][0] != state["rate_sum"][1], "one row per rank"
    launch("split", "second")
    for rank in (0, 1):
        whole, split = (load_file(str(tmp_path / d / f"rank{rank}.safetensors")) for d in ("whole", "second"))
        assert not torch.equal(whole["n_exp"], torch.full_like(whole["n_exp"], 10)), "n_exp was refreshed"
        for name in whole:
            torch.testing.assert_close(split[name], whole[name], rtol=0, atol=0, msg=f"rank {rank} {name}")
    a, b = (dict(scalars(tmp_path / "runs" / n / "tb")["train/loss"]) for n in ("whole", "split"))
    assert sorted(b) == sorted(a)
    assert [b[k] for k in sorted(a)] == [a[k] for k in sorted(a)]
