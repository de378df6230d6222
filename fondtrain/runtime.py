"""Process-wide settings that training, evaluation and benchmarks all need before they
start a back end (below train/ and eval/)."""

from __future__ import annotations

import atexit
import ctypes
import os
import sys

import torch

# glibc's mallopt parameters, and the largest fixed mmap threshold it accepts on 64 bits.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_MAX = 32 << 20


def configure_cpu_process() -> None:
    """Settings for a process that computes on the CPU (no CUDA); nothing changes otherwise.

    - DeepSpeed (which Accelerate consults when it is installed) is told that the
      accelerator is the CPU, instead of warning on every run that it found no GPU; a
      DS_ACCELERATOR the user set is kept.
    - glibc's malloc keeps the memory a cycle frees. By default it hands the freed top
      of the heap back to the OS after every backward and the next cycle faults it in
      again page by page: a 64-member igvae population cycle took 230,000 minor page
      faults (0.9 GB) and cost 1.34x per member a single model's; kept, 22 faults and
      0.92x (benchmarks/RESULTS.md). MALLOC_TRIM_THRESHOLD_ / MALLOC_MMAP_THRESHOLD_
      set by the user win.
    - torch computes with the CPUs this process may use (`default_threads`), not the
      machine's count: OpenMP threads spin while they wait, and with more threads than
      free cores a cycle runs 10-30x slower. OMP_NUM_THREADS set by the user wins.
    """
    if torch.cuda.is_available():
        return
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    keep_freed_heap()
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(default_threads())


def usable_cpus(environ=os.environ) -> int:
    """The CPUs this process may use: SLURM's allocation (SLURM_CPUS_PER_TASK), else the
    process's CPU affinity (a container's or taskset's limit), else the machine's count."""
    slurm = environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        return int(slurm)
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_threads(environ=os.environ) -> int:
    """Threads of one process: its usable CPUs shared among the processes a launcher
    started on this node (LOCAL_WORLD_SIZE), at least one."""
    local = environ.get("LOCAL_WORLD_SIZE", "1")
    return max(1, usable_cpus(environ) // max(1, int(local) if local.isdigit() else 1))


def keep_freed_heap() -> bool:
    """Fix glibc's mmap threshold at its largest and never trim the heap (Linux / glibc
    only; returns whether it applied)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # another C library (musl): its allocator has no such knobs
        return False
    applied = False
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        applied |= bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX))
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        applied |= bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    return applied


def close_process_group(barrier: bool = False) -> None:
    """End the default process group of a multi-process run that finished normally, while
    the interpreter is still whole; the process then leaves with `exit_process_group_member`.
    Not after an error, unless every rank stopped on it together: a rank still inside a
    collective would wait for it. `barrier`: first wait for every rank, so that all tear
    gloo down together (after an error that all ranks raised: the one that prints it has
    printed before the others leave). Nothing happens in one process."""
    global _closed_a_group
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if barrier:
            torch.distributed.barrier()
        _closed_a_group = torch.distributed.get_world_size() > 1
        torch.distributed.destroy_process_group()


_closed_a_group = False  # set by close_process_group in a process of a multi-process run


def exit_process_group_member(code: int) -> None:
    """Exit with `code` a process that closed its process group, without finalizing the
    interpreter: a gloo worker thread may still be waiting for the GIL to release the
    tensors of a finished collective, and a thread that gets the GIL during finalization
    exits inside a C++ destructor, which aborts the process (SIGABRT, "terminate called
    without an active exception", about 1 exit in 8 on a busy 2-core machine). The atexit
    handlers (logging, TensorBoard writers) run first and the standard streams are
    flushed. Returns in a process that was not one of several in a group that it closed
    (one process, DeepSpeed's one-process group, tests in-process)."""
    if not _closed_a_group:
        return
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)
