"""Random numbers of the samplers, all a function of torch generators or explicit keys, so
that seeds, checkpoints and resumed runs replay them.

- Eager CPU samplers draw raw words of a numpy SFC64 seeded from a torch generator
  (`WordStream`): ~4x cheaper than torch's CPU Mersenne twister uniforms.
- Graph samplers (inside torch.compile) draw from a counter-based hash keyed by two numbers
  per member (`hashed_uniform`): plain integer tensor operations that fuse into the
  sampler's kernel, with no generator state inside the graph.

A population draws member by member: member i from its own generator (or keys), so its
numbers are those of its single run whatever the other members are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

_MANTISSA = 0x007FFFFF  # the 23 fraction bits of a float32
_ONE = 0x3F800000  # the bit pattern of 1.0f
_JUST_BELOW_ONE = 1.0 - 2.0**-24  # f - this is exact (Sterbenz) for f in [1, 2)
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


class WordStream:
    """Random int32 words for the CPU samplers, taken in any amounts, in order.

    Raw words of `numpy_bits(generator)`. One stream per sample.
    """

    def __init__(self, generator=None):
        self._bits = numpy_bits(generator)
        self._spare: np.int32 | None = None  # the second word of a draw not yet taken

    def take(self, count: int) -> Tensor:
        """The next `count` words, int32 [count]. A 64-bit draw gives two words; an odd
        one left over starts the next take, so taking in parts does not change the words."""
        head = None
        if self._spare is not None and count:
            head, self._spare = self._spare, None
        need = count - (head is not None)
        drawn = self._bits.random_raw((need + 1) // 2).view(np.int32)
        if drawn.size > need:
            self._spare, drawn = drawn[need], drawn[:need]
        if head is not None:
            drawn = np.concatenate([np.array([head], dtype=np.int32), drawn])
        return torch.from_numpy(drawn)


def log_uniform_(words: Tensor) -> Tensor:
    """log U from random int32 words, in place. f is the float32 with exponent 0 and the
    word's low 23 bits m as fraction (f = 1 + m 2^-23), and U = f - (1 - 2^-24) =
    (m + 1/2) 2^-23, exactly: U is uniform on the midpoints of 2^23 equal cells of (0, 1),
    never 0 or 1, and -log U is Exp(1) (largest value 24 ln 2 = 16.6). Returns a float32
    view of the words' memory."""
    f = words.bitwise_and_(_MANTISSA).bitwise_or_(_ONE).view(torch.float32)
    return f.sub_(_JUST_BELOW_ONE).log_()


def exponential_noise(n_exp: int, shape: Sequence[int], device=None, generator=None) -> Tensor:
    """Standard Exp(1) draws [n_exp, *shape] of one generator.

    On CPU they are -log U (`log_uniform_`) of a `WordStream`, one [*shape] row per
    arrival: what the streamed relaxed Poisson sampler draws from the same generator state
    as long as no entry finishes early, and in any case the same distribution. On
    accelerators: -log(1 - U) from torch's device generator.
    """
    device = torch.device("cpu") if device is None else torch.device(device)
    shape = tuple(shape)
    if device.type == "cpu":
        stream, numel = WordStream(generator), math.prod(shape)
        rows = [log_uniform_(stream.take(numel)).view(shape) for _ in range(n_exp)]
        return torch.stack(rows).neg_() if rows else torch.empty((0, *shape))
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


def hashed_uniform(like: Tensor, keys: Tensor, draw: int) -> Tensor:
    """Uniform draws of like's shape [P, ...] from a counter-based hash: element i of
    member p's draw number `draw` hashes c = draw * n + i (n the elements per member)
    under the member's two keys (keys [P, 2]), mix(mix(c ^ k0) ^ k1); its top 23 bits m
    give U = (m + 1/2) 2^-23, the cell midpoints of `log_uniform_` (never 0 or 1).
    `draw * n + i` must stay below 2^32 (the caller checks)."""
    per_member = like[0].numel()
    counter = torch.arange(per_member, device=like.device, dtype=torch.int64).view(like.shape[1:])
    k0, k1 = (keys[:, j].view((-1,) + (1,) * (like.dim() - 1)) for j in (0, 1))
    bits = _mix32(_mix32((counter + draw * per_member) ^ k0) ^ k1)
    return ((bits >> 9).to(like.dtype) + 0.5) * 2.0**-23


def hashed_exponential(like: Tensor, keys: Tensor, draw: int) -> Tensor:
    """Exp(1) draws -log U of `hashed_uniform` (largest value 24 ln 2 = 16.6)."""
    return -torch.log(hashed_uniform(like, keys, draw))


def hashed_normal(like: Tensor, keys: Tensor, draw: int) -> Tensor:
    """N(0, 1) draws by Box-Muller from the hashed uniforms of draws 2 draw and
    2 draw + 1: sqrt(-2 log U1) cos(2 pi U2)."""
    radius = torch.sqrt(-2.0 * torch.log(hashed_uniform(like, keys, 2 * draw)))
    return radius * torch.cos((2.0 * math.pi) * hashed_uniform(like, keys, 2 * draw + 1))
