"""How the benchmark times things: interleaved rounds and medians, device synchronisation,
threads, worker processes and the peak memory of this process.

Every figure of one table comes from one `interleaved` call: the candidates run round by
round, so a slow spell of a shared machine hits all of them alike and their ratios hold.
A batched call against n single ones (`bracketed_ratio`) brackets it with the n singles,
so that both span the same stretch of time, takes the ratio round by round, and on a CPU
counts the process's CPU time rather than wall time.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

JOBS_MODULE = "fondtrain.bench.jobs"


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync() -> None:
    """Wait for queued device work, so that a timer reads the work's end."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def set_threads(threads: int) -> None:
    """torch's intra-op threads (0: leave torch's default)."""
    if threads:
        torch.set_num_threads(threads)


def cpu_seconds_once(fn: Callable[[], object]) -> float:
    """CPU seconds this process spends on one call (all its threads), on a CPU device;
    wall seconds (`time_once`) on a GPU, whose work the process's CPU time does not
    count. On a shared machine a call's wall time also holds the time other processes
    held the cores (single cycles here swung 2.5x in wall time, 7% in CPU time)."""
    if torch.cuda.is_available():
        return time_once(fn)
    start = time.process_time()
    fn()
    return time.process_time() - start


def time_once(fn: Callable[[], object]) -> float:
    """Seconds of one call (e.g. a first call that compiles)."""
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def interleaved(cases: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each case; one warm-up call each, then `repeats` rounds in which
    every case runs once (so that a slow spell of the machine hits all of them)."""
    for fn in cases.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            times[name].append(time_once(fn))
    return {name: statistics.median(v) for name, v in times.items()}


def bracketed_ratio(single: Callable[[], object], batched: Callable[[], object], n: int,
                    repeats: int) -> dict[str, float]:
    """`batched` (the work of n `single` calls in one) over n `single` calls, measured so
    that both cover the same stretch of time: one warm-up call each, then `repeats` rounds
    of n // 2 single calls, the batched call, the other single calls; each round gives one
    ratio. Times are `cpu_seconds_once`'s. Returns the median ratio, its smallest and
    largest round, and the median seconds of the batched call and of one single call."""
    single()
    batched()
    ratios, batched_s, single_s = [], [], []
    for _ in range(repeats):
        singles = [cpu_seconds_once(single) for _ in range(n // 2)]
        batched_s.append(cpu_seconds_once(batched))
        singles += [cpu_seconds_once(single) for _ in range(n - n // 2)]
        ratios.append(batched_s[-1] / sum(singles))
        single_s.append(sum(singles) / n)
    return {"ratio": statistics.median(ratios), "ratio_min": min(ratios),
            "ratio_max": max(ratios), "batched_s": statistics.median(batched_s),
            "single_s": statistics.median(single_s)}


# ----------------------------------------------------------------------------- processes
def accelerate_command() -> str:
    """The `accelerate` command of this environment."""
    beside = Path(sys.executable).parent / "accelerate"
    return str(beside) if beside.exists() else "accelerate"


def run_job(args: list[str], env: dict | None = None, processes: int = 1) -> dict:
    """Run `python -m fondtrain.bench.jobs ARGS` in a fresh process (`accelerate launch`
    with `processes` ranks when > 1) and return the JSON its rank 0 prints last."""
    if processes > 1:
        cmd = [accelerate_command(), "launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", JOBS_MODULE]
    else:
        cmd = [sys.executable, "-m", JOBS_MODULE]
    cmd += args
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})},
                          timeout=1800)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"benchmark job {' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")


# ----------------------------------------------------------------------------- memory
def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux: clear_refs 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    """Bytes: this process's resident-set high-water mark."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def peak_memory_mb(run: Callable[[], None], warmup: Callable[[], None]) -> float:
    """MB the first call of `run` needs beyond what the process held before it (CPU: the
    resident set's high-water mark; GPU: the allocator's peak after one `warmup` call)."""
    if torch.cuda.is_available():
        warmup()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    import psutil

    # The first call: after it the allocator keeps the freed pages, and a later call's
    # high-water mark would only show what it needs beyond them.
    base = psutil.Process().memory_info().rss
    reset_peak_rss()
    run()
    return max(0, peak_rss() - base) / 2**20
