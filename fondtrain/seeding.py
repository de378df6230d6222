"""One seed per run: every random stream is derived from it by `stream_seed`.

    stream_seed(seed, "sampler", rank)            # a rank's sampler noise (torch default generator)
    stream_seed(seed, "data_order", epoch)        # the loader's permutation of an epoch
    stream_seed(seed, "feeder", rank, step)       # a batch's jitter path / random start angles

Each stream is keyed by its purpose and by the rank, worker, epoch or step it belongs to
(numpy SeedSequence: distinct keys give statistically independent streams, so two ranks
or two steps never share noise, and no key can collide with another purpose's). The one
exception is the model's initial weights, drawn from `torch.Generator().manual_seed(seed)`
itself: the reference implementation seeds torch with the seed, and fondtrain's initial
weights equal the reference's for the same seed.
"""

from __future__ import annotations

import numpy as np

# Fixed codes, never reordered: a code is part of every seed derived for its purpose.
PURPOSES = {
    "model_init": 0,    # the raw seed (see the module docstring)
    "data_order": 1,    # keys: epoch
    "data_window": 2,   # keys: epoch, rank, worker (streaming loader's shuffle windows)
    "sampler": 3,       # keys: rank [, step when a resumed rank had no saved RNG state]
    "feeder": 4,        # keys: rank, step
    "validation": 5,    # keys: rank
    "eval_sampler": 6,  # keys: rank
    "probe": 7,         # keys: rank
    "frontier": 8,      # keys: 0 (training patches), 1 (dictionary init and batch order)
}


def stream_seed(seed: int, purpose: str, *keys: int) -> int:
    """A 63-bit seed for the stream `purpose` of the run seeded `seed`, keyed by `keys`
    (non-negative integers such as rank, worker, epoch or step)."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown random stream {purpose!r}: one of {', '.join(PURPOSES)}")
    if purpose == "model_init":
        return int(seed)
    sequence = np.random.SeedSequence(int(seed) % 2**64, spawn_key=(PURPOSES[purpose], *map(int, keys)))
    return int(sequence.generate_state(1, np.uint64)[0] >> np.uint64(1))
