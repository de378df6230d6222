"""The C kernel of the eager CPU relaxed Poisson sampler (relaxed_poisson.c), called
through ctypes on torch tensors."""

from __future__ import annotations

import ctypes
import os
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

from fondtrain.model.kernels import build

# Entries per thread below which extra threads cost more than they save.
MIN_PER_THREAD = 2**15
# The kernel's entry blocks (relaxed_poisson.c's CHUNK): thread ranges start on them.
CHUNK = 8192

_pool: ThreadPoolExecutor | None = None


def _library():
    lib = build.load("relaxed_poisson.c")
    if lib is not None and not getattr(lib, "_typed", False):
        p, i64 = ctypes.c_void_p, ctypes.c_int64
        lib.relaxed_poisson.argtypes = [p, p, p, i64, i64, i64, i64, p, p, p, ctypes.c_float]
        lib.relaxed_poisson.restype = ctypes.c_int
        lib._typed = True
    return lib


def available() -> bool:
    """Whether the kernel is built and loaded (else the callers run their torch code)."""
    return _library() is not None


def relaxed_poisson_kernel(u: Tensor, temps, lengths, keys: Tensor, zero_below: float,
                           need_grad: bool) -> tuple[Tensor, Tensor | None]:
    """z and dz/du (None without need_grad) [P, B, K] of float32 log-rates u [P, B, K] on
    a CPU: member i at temperature temps[i] with lengths[i] arrivals drawn from the hashed
    streams of keys[i] (int64 [P, 2]), draws 0 .. lengths[i] - 1. An entry stops once
    a_j < zero_below (`sigmoid_zero_below(float32)`; -inf: never, every arrival). The
    kernel must be `available`. Uses torch's intra-op thread count (entries split between
    threads: the same numbers for any count)."""
    lib = _library()
    u = u.contiguous()
    p, n = u.shape[0], u[0].numel()
    z = torch.empty_like(u)
    dz = torch.empty_like(u) if need_grad else None
    temps = torch.tensor(temps, dtype=torch.float64)
    lengths = torch.tensor(lengths, dtype=torch.int64)
    keys = keys.to(torch.int64).contiguous()

    def run(start: int, stop: int) -> None:  # ctypes releases the GIL during the call
        if lib.relaxed_poisson(u.data_ptr(), z.data_ptr(), 0 if dz is None else dz.data_ptr(), p, n, start, stop,
                               temps.data_ptr(), lengths.data_ptr(), keys.data_ptr(), zero_below):
            raise MemoryError("the relaxed Poisson kernel could not allocate its work arrays")

    threads = min(torch.get_num_threads(), n // MIN_PER_THREAD)
    if threads <= 1:
        run(0, n)
    else:
        step = -(-n // threads // CHUNK) * CHUNK
        list(_thread_pool().map(lambda s: run(s, min(n, s + step)), range(0, n, step)))
    return z, dz


def _thread_pool() -> ThreadPoolExecutor:
    """One pool per process; it starts threads as tasks need them."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="fondtrain-kernel")
    return _pool
