"""fondtrain.runtime: the settings of a CPU process (the allocator's, DeepSpeed's)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Each run is a fresh interpreter: the allocator's state is process-wide. The script
# allocates ten 20 MB tensors and frees them, five times over after a warm-up, and prints
# the minor page faults per round.
FAULTS = """
import resource, sys, torch
from fondtrain.runtime import keep_freed_heap
if sys.argv[1] == "keep":
    assert keep_freed_heap()
def cycle():
    tensors = [torch.ones(5_000_000) for _ in range(10)]
    del tensors
cycle(); cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    cycle()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


def _faults_per_round(mode: str) -> float:
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}  # no MALLOC_* variables
    out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True,
                         env=env, timeout=120, check=True)
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_kept_heap_is_not_faulted_in_again_every_cycle():
    # Each round churns 200 MB (~49,000 pages). Kept, at most one tensor's pages come back
    # as faults (0 or ~980 measured). By default glibc usually hands the freed top of the
    # heap back and ~10^4 pages fault in again each round; how much it trims varies from
    # process to process (about 1 in 8 trims little), so the contrast takes the largest of
    # three fresh processes.
    kept = _faults_per_round("keep")
    default = max(_faults_per_round("default") for _ in range(3))
    assert kept < 2500
    assert default > 5000 and kept < default / 4


def test_configure_cpu_process_keeps_a_user_accelerator(monkeypatch):
    import torch

    from fondtrain.runtime import configure_cpu_process

    monkeypatch.setenv("DS_ACCELERATOR", "mine")
    configure_cpu_process()
    assert os.environ["DS_ACCELERATOR"] == "mine"
    monkeypatch.delenv("DS_ACCELERATOR")
    configure_cpu_process()
    expected = None if torch.cuda.is_available() else "cpu"
    assert os.environ.get("DS_ACCELERATOR") == expected


def test_threads_follow_the_cpus_the_process_may_use():
    """Threads default to SLURM's allocation or the process's CPU affinity, shared among
    the launcher's processes on the node; never the machine's count regardless."""
    import os

    from fondtrain.runtime import default_threads, usable_cpus

    affinity = len(os.sched_getaffinity(0))
    assert usable_cpus({}) == affinity
    assert usable_cpus({"SLURM_CPUS_PER_TASK": "3"}) == 3
    assert default_threads({"SLURM_CPUS_PER_TASK": "8", "LOCAL_WORLD_SIZE": "2"}) == 4
    assert default_threads({"SLURM_CPUS_PER_TASK": "1", "LOCAL_WORLD_SIZE": "4"}) == 1
    one_cpu = subprocess.run(["taskset", "-c", "0", sys.executable, "-c",
                              "import torch; from fondtrain.runtime import configure_cpu_process; "
                              "configure_cpu_process(); print(torch.get_num_threads())"],
                             capture_output=True, text=True, env={k: v for k, v in os.environ.items()
                                                                  if k != "OMP_NUM_THREADS"})
    assert one_cpu.returncode == 0, one_cpu.stderr
    assert one_cpu.stdout.strip() == "1"
