"""Random streams of the CPU samplers: numpy bit generators seeded from a torch generator.

The samplers' random numbers stay a function of the torch generator's state, so seeds,
checkpoints and resumed runs replay them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

_MANTISSA = 0x007FFFFF  # the 23 fraction bits of a float32
_ONE = 0x3F800000  # the bit pattern of 1.0f
_JUST_BELOW_ONE = 1.0 - 2.0**-24  # f - this is exact (Sterbenz) for f in [1, 2)


def numpy_bits(generator=None) -> np.random.SFC64:
    """A numpy SFC64 bit generator seeded with one 63-bit draw from `generator` (torch's
    default generator when None): the CPU samplers' random numbers stay a function of the
    torch generator's state, so seeds, checkpoints and resumed runs replay them."""
    return np.random.SFC64(int(torch.randint(2**63 - 1, (), generator=generator)))


class WordStream:
    """Random int32 words for the CPU samplers, taken in any amounts, in order.

    Raw words of `numpy_bits(generator)`: ~4x cheaper than torch's CPU Mersenne twister
    uniforms, and still replayed exactly from the torch generator's state. One stream
    per sample.
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

