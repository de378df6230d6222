"""Real multi-process data parallelism on CPU (gloo), through `accelerate launch`."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.train_helpers import REPO, scalars, subprocess_env, tiny_flags

pytestmark = pytest.mark.slow

ACCELERATE_2PROC = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                    "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                    "--dynamo_backend", "no", "--main_process_port", "29517"]


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
