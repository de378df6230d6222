"""A launch whose processes did not join one process group stops with one sentence."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fondtrain.errors import UserError
from fondtrain.train.backends import check_world_size
from tests.train_helpers import REPO

SCRIPT = """
import os, sys
sys.path.insert(0, {repo!r})
out = open(os.path.join(sys.argv[1], os.environ["LOCAL_RANK"] + ".txt"), "w")
from fondtrain.config import RunConfig
from fondtrain.errors import UserError
from fondtrain.train.backends import make_backend
try:
    accelerator = make_backend(RunConfig())
    print("joined", accelerator.num_processes, file=out)
except UserError as err:
    print("refused:", err, file=out)
"""


def test_mismatch_is_one_sentence_with_the_fix():
    check_world_size(2, {"WORLD_SIZE": "2"})
    check_world_size(1, {})
    with pytest.raises(UserError, match=r"started 2 processes .* joined 1, .* ACCELERATE_USE_CPU=1"):
        check_world_size(1, {"WORLD_SIZE": "2"})


@pytest.mark.slow
@pytest.mark.parametrize("use_cpu", ["", "1"])
def test_torchrun_on_a_cpu_machine(tmp_path, use_cpu):
    """torchrun x2 without ACCELERATE_USE_CPU: two lone copies (refused); with it: one group."""
    script = tmp_path / "join.py"
    script.write_text(SCRIPT.format(repo=str(REPO)))
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    env.pop("ACCELERATE_USE_CPU", None)
    if use_cpu:
        env["ACCELERATE_USE_CPU"] = use_cpu
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", "29733", str(script), str(tmp_path)], env=env, capture_output=True,
                         text=True, timeout=300).stderr[-2000:]
    lines = sorted((tmp_path / f"{rank}.txt").read_text().strip() for rank in (0, 1))
    if use_cpu:
        assert lines == ["joined 2", "joined 2"], out
    else:
        assert len(lines) == 2 and all("started 2 processes" in line for line in lines), out
