"""Random numbers of the samplers, all a function of torch generators or explicit keys, so
that seeds, checkpoints and resumed runs replay them.

- Exp(1) arrivals of the relaxed Poisson sampler on a CPU (eager and compiled) come from a
  counter-based hash keyed by two numbers per member (`hashed_uniform`), drawn from the
  member's generator (`draw_keys`) once per sample: element i of draw d is a function of
  (d, i) and the keys alone, so a sampler may compute any entries in any order (the C
  kernel, which skips the arrivals that add exactly 0, and the torch code give the same
  numbers), and inside torch.compile the draws are plain integer tensor operations that
  fuse into the sampler's kernel, with no generator state inside the graph.
- The exact Poisson sampler draws from a numpy SFC64 seeded from a torch generator
  (`numpy_bits`); eager normal draws and accelerators' uniforms are torch's own (inside
  torch.compile on a CPU, normal draws come from the hash too: `hashed_normal`).

A population draws member by member: member i from its own generator (or keys), so its
numbers are those of its single run whatever the other members are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

_MASK32 = 0xFFFFFFFF


def member_generators(generators, n_members: int) -> list:
    """One generator (or None: torch's default generator) per member, from a sequence of
    them, or None for every member on the default generator."""
    if generators is None:
        return [None] * n_members
    if isinstance(generators, torch.Generator):
        raise ValueError("the samplers draw from one generator per member: pass a list of them")
    generators = list(generators)
    if len(generators) != n_members:
        raise ValueError(f"need {n_members} generators, got {len(generators)}")
    return generators


def numpy_bits(generator=None) -> np.random.SFC64:
    """A numpy SFC64 bit generator seeded with one 63-bit draw from `generator` (torch's
    default generator when None)."""
    return np.random.SFC64(int(torch.randint(2**63 - 1, (), generator=generator)))


def exponential_noise(n_exp: int, shape: Sequence[int], device=None, generator=None) -> Tensor:
    """Standard Exp(1) draws [n_exp, *shape] of one generator.

    On CPU: float32 draws 0 .. n_exp - 1 of the hashed stream keyed by two numbers from the
    generator (`draw_keys`, `hashed_exponential`; draw d is row d), the numbers that the
    relaxed Poisson sampler draws itself from the same generator state. On accelerators:
    -log(1 - U) from torch's device generator.
    """
    device = torch.device("cpu") if device is None else torch.device(device)
    shape = tuple(shape)
    if device.type == "cpu":
        check_counters(math.prod(shape), n_exp)
        key = draw_keys([generator], 1)[0]
        return hashed_exponential_at(torch.arange(n_exp * math.prod(shape)), key).view(n_exp, *shape)
    noise = torch.empty((n_exp, *shape), device=device)
    return noise.uniform_(generator=generator).neg_().log1p_().neg_()


def member_exponential_noise(n_exp: Sequence[int], shape: Sequence[int], device=None,
                             generators=None) -> Tensor:
    """Each member's Exp(1) draws, [n_max, P, *shape] with n_max = max n_exp: member i's
    first n_exp[i] rows drawn from its own generator (`exponential_noise`), the rest ones
    (the samplers mask them out)."""
    gens = member_generators(generators, len(n_exp))
    noise = torch.ones((max(n_exp, default=0), len(n_exp), *shape), device=device)
    for i, (n, g) in enumerate(zip(n_exp, gens, strict=True)):
        noise[:n, i] = exponential_noise(n, shape, device, g)
    return noise


def member_normal_noise(shape: Sequence[int], device=None, generators=None) -> Tensor:
    """N(0, 1) draws [P, *shape], member i's row from its own generator (each row filled in
    place: torch.randn's numbers, without a stack's copy)."""
    noise = torch.empty(tuple(shape), device=device)
    for row, g in zip(noise, member_generators(generators, noise.shape[0]), strict=True):
        row.normal_(generator=g)
    return noise


def draw_keys(generators, n_members: int, device=None) -> Tensor:
    """Two fresh numbers per member from its generator, int64 [P, 2]: the keys of the
    hashed streams a compiled cycle draws from."""
    keys = [torch.randint(2**31, (2,), dtype=torch.int64, generator=g)
            for g in member_generators(generators, n_members)]
    return torch.stack(keys).to(device)


# ----------------------------------------------------------------------------- hashed draws
def _mix32(x: Tensor) -> Tensor:
    """A 32-bit integer mixer (xor-shift-multiply rounds, as in murmur / lowbias32) on
    int64 tensors holding values in [0, 2^32); multipliers below 2^31 keep every product
    below 2^63 (no signed overflow in any backend)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x5BD1E995) & _MASK32
    return x ^ (x >> 16)


def check_counters(per_member: int, draws: int) -> None:
    """The hashed streams count draw * per_member + i in 32 bits: draws x per_member at
    most 2^32 (e.g. 40 draws of 100 M entries per member)."""
    if per_member * draws > 2**32:
        raise ValueError(f"{draws} hashed draws of {per_member} entries overflow their 32-bit counters")


def hashed_uniform(like: Tensor, keys: Tensor, draw: int) -> Tensor:
    """Uniform draws of like's shape [P, ...] from a counter-based hash: element i of
    member p's draw number `draw` hashes c = draw * n + i (n the elements per member)
    under the member's two keys (keys [P, 2]), mix(mix(c ^ k0) ^ k1); its top 23 bits m
    give U = (m + 1/2) 2^-23, the midpoints of 2^23 equal cells of (0, 1) (never 0 or 1).
    `draw * n + i` must stay below 2^32 (`check_counters`)."""
    per_member = like[0].numel()
    counter = torch.arange(per_member, device=like.device, dtype=torch.int64).view(like.shape[1:])
    k0, k1 = (keys[:, j].view((-1,) + (1,) * (like.dim() - 1)) for j in (0, 1))
    return _uniform(counter + draw * per_member, k0, k1, like.dtype)


def _uniform(counter: Tensor, k0, k1, dtype: torch.dtype) -> Tensor:
    bits = _mix32(_mix32(counter ^ k0) ^ k1)
    return ((bits >> 9).to(dtype) + 0.5) * 2.0**-23


def hashed_exponential(like: Tensor, keys: Tensor, draw: int) -> Tensor:
    """Exp(1) draws -log U of `hashed_uniform` (largest value 24 ln 2 = 16.6)."""
    return -torch.log(hashed_uniform(like, keys, draw))


def hashed_exponential_at(counter: Tensor, key: Tensor) -> Tensor:
    """float32 Exp(1) draws of one member's hashed stream (key [2]) at the int64 counters
    c = d n + i (entry i of draw d): `hashed_exponential`'s numbers, for any entries. The
    hash in numpy's uint32 arithmetic (wrapping products, no masks: ~5x cheaper than
    `_mix32`'s int64 tensors), the log in torch's (its numbers, bit for bit)."""
    x = counter.numpy().astype(np.uint32)
    for k in key.tolist():
        x ^= np.uint32(k)
        for shift, factor in ((16, 0x7FEB352D), (15, 0x5BD1E995)):  # `_mix32`'s rounds
            x ^= x >> np.uint32(shift)
            x *= np.uint32(factor)
        x ^= x >> np.uint32(16)
    u = torch.from_numpy((x >> np.uint32(9)).astype(np.float32))
    return u.add_(0.5).mul_(2.0**-23).log_().neg_()


def hashed_normal(like: Tensor, keys: Tensor, draw: int) -> Tensor:
    """N(0, 1) draws by Box-Muller from the hashed uniforms of draws 2 draw and
    2 draw + 1: sqrt(-2 log U1) cos(2 pi U2)."""
    radius = torch.sqrt(-2.0 * torch.log(hashed_uniform(like, keys, 2 * draw)))
    return radius * torch.cos((2.0 * math.pi) * hashed_uniform(like, keys, 2 * draw + 1))
