"""Batches from a shard folder for any number of ranks, same batch count on every rank.

Two modes, one contract:

* streaming (default): a WebDataset pipeline per rank,
  rank's pieces -> split_by_worker -> tarfile_to_samples -> decode (.npy blocks) ->
  slice to the piece -> windowed shuffle, cut into groups of whole batches inside the
  worker -> re-batch in the main process; with `num_workers > 0` it runs in a torch DataLoader.
* in_memory: all shards of the split are read once into one tensor; every epoch is a
  permutation of the indices drawn from a generator seeded by (seed, epoch).

How an epoch is cut (both modes). Let N be the split size, W the world size, B the batch
size. Every rank gets `batches_per_epoch` batches of exactly B samples:

* drop_last=True (default, training): batches_per_epoch = N // (W * B); the
  N - W * B * batches_per_epoch left-over samples (< W * B) are skipped this epoch. With
  shuffling they are different samples every epoch.
* drop_last=False (evaluation): batches_per_epoch = ceil(N / (W * B)); the missing
  W * B * batches_per_epoch - N samples (< W * B) are filled by wrapping around to the
  start of the epoch's order, i.e. that many samples appear twice. `n_padded` says how
  many; with shuffle=False and W = 1 the padding is the first samples, at the end of the
  last batch.

The epoch's sample order is a sequence of W * B * batches_per_epoch positions; rank r
takes the r-th contiguous part of it. So across ranks an epoch covers every sample at
most once (drop_last) or exactly once plus the padding. In streaming mode that order is
"shards in a seeded random order, concatenated, started at a seeded random offset"; a
rank reads only the shards (or parts of shards) that overlap its part, so ranks need not
have whole shards, and uneven shard sizes or more ranks than shards are fine. Within a
rank the stream is shuffled in windows of `shuffle_buffer` samples. In-memory mode is a
full random permutation.

Determinism: the batches are a function of (seed, epoch, rank, world_size) and, in
streaming mode, also of num_workers and shuffle_buffer (the workers' outputs are
interleaved round-robin). Streaming and in-memory modes give different orders.
`epoch(e, skip_batches=k)` yields exactly the batches k, k+1, ... of `epoch(e)`, so a run
resumed mid-epoch continues the data stream without replaying or skipping anything.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds

from fondtrain.data.shard_reader import load_manifest, read_split, split_entries
from fondtrain.data.stream import PieceList, ShuffleBatch, rank_pieces, read_pieces, rebatch, split_for_workers
from fondtrain.errors import UserError
from fondtrain.seeding import stream_seed


class ShardLoader:
    """Per-rank batches from `shard_dir`, with the same number of batches on every rank.

    Args:
        shard_dir: folder written by `write_shards` (has manifest.json).
        split: "train" or "val" (any split in the manifest).
        batch_size: B, samples per batch on this rank.
        rank, world_size: this process's data-parallel rank and the number of ranks.
        seed: base seed; epoch e uses seeds derived from (seed, e, ...).
        num_workers: DataLoader worker processes (streaming mode; 0 = read in-process).
        in_memory: read the whole split once and permute indices per epoch.
        shuffle: shuffle the order every epoch (False: stored order).
        drop_last: skip the remainder (True) or pad by wrap-around (False); see module doc.
        shuffle_buffer: samples per shuffle window in streaming mode.
        pin_memory: let the DataLoader pin its batches (streaming with workers, CUDA only).

    Attributes:
        batches_per_epoch: batches every rank gets per epoch (identical on all ranks).
        input_dim: M.
        sample_shape: e.g. [16, 16] (from the manifest).
        n_samples: N, samples in the split.
        n_dropped / n_padded: samples skipped / repeated per epoch across all ranks.
        has_labels: whether batches carry 'y'.
        manifest: the shard manifest (dict).
    """

    def __init__(
        self,
        shard_dir: str | os.PathLike,
        split: str = "train",
        batch_size: int = 200,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        num_workers: int = 0,
        in_memory: bool = False,
        shuffle: bool = True,
        drop_last: bool = True,
        shuffle_buffer: int = 8192,
        pin_memory: bool = False,
    ):
        if world_size < 1 or not 0 <= rank < world_size:
            raise UserError(f"rank {rank} is not in 0..world_size-1 (world_size={world_size}).")
        if batch_size < 1 or num_workers < 0:
            raise UserError(
                f"batch_size must be >= 1 and num_workers >= 0, got {batch_size} and "
                f"{num_workers}."
            )
        self.shard_dir = Path(shard_dir)
        self.manifest = load_manifest(self.shard_dir)
        info = split_entries(self.manifest, split, self.shard_dir)
        self.split, self.batch_size = split, batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.num_workers, self.in_memory = num_workers, in_memory
        self.shuffle, self.drop_last = shuffle, drop_last
        self.shuffle_buffer, self.pin_memory = max(shuffle_buffer, batch_size), pin_memory
        self.input_dim = int(self.manifest["input_dim"])
        self.sample_shape = list(self.manifest.get("sample_shape", [self.input_dim]))
        self.has_labels = self.manifest.get("label_dtype") is not None
        self.n_samples = int(info["n_samples"])
        self._files = [str(self.shard_dir / e["file"]) for e in info["shards"]]
        self._sizes = [int(e["n_samples"]) for e in info["shards"]]

        per_step = world_size * batch_size
        if drop_last:
            self.batches_per_epoch = self.n_samples // per_step
        else:
            self.batches_per_epoch = math.ceil(self.n_samples / per_step)
        if self.batches_per_epoch == 0:
            raise UserError(
                f"split {split!r} of {self.shard_dir} has {self.n_samples} samples, fewer than "
                f"world_size x batch_size = {per_step}; use a smaller batch size or more data."
            )
        self.samples_per_rank = self.batches_per_epoch * batch_size
        covered = self.samples_per_rank * world_size
        self.n_dropped = max(self.n_samples - covered, 0)
        self.n_padded = max(covered - self.n_samples, 0)

        self._x = self._y = None
        if in_memory:
            if num_workers:
                warnings.warn("num_workers is ignored when in_memory=True", stacklevel=2)
            self._x, self._y = read_split(self.shard_dir, split)  # numpy [N, M], [N]

    def __len__(self) -> int:
        return self.batches_per_epoch

    def epoch(self, epoch: int, skip_batches: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Batches of one epoch for this rank.

        Yields {'x': float32 [B, M]} (plus 'y': int64 [B] for labelled data), exactly
        `batches_per_epoch - skip_batches` times: the batches skip_batches, ... of the full
        epoch. Deterministic given (seed, epoch, rank, world_size) (and num_workers,
        shuffle_buffer in streaming mode).
        """
        if not 0 <= skip_batches <= self.batches_per_epoch:
            raise UserError(
                f"skip_batches={skip_batches} is outside 0..{self.batches_per_epoch} "
                "(batches per epoch); check the resumed data position."
            )
        if self.in_memory:
            return self._epoch_in_memory(epoch, skip_batches)
        return self._epoch_streaming(epoch, skip_batches)

    # ------------------------------------------------------------------ in memory

    def _epoch_in_memory(self, epoch: int, skip: int) -> Iterator[dict[str, torch.Tensor]]:
        n = self.n_samples
        if self.shuffle:
            gen = torch.Generator().manual_seed(stream_seed(self.seed, "data_order", epoch))
            order = torch.randperm(n, generator=gen)
        else:
            order = torch.arange(n)
        start = self.rank * self.samples_per_rank
        positions = torch.arange(start, start + self.samples_per_rank) % n  # wrap = padding
        mine = order[positions].numpy()
        B = self.batch_size
        for b in range(skip, self.batches_per_epoch):
            idx = mine[b * B : (b + 1) * B]
            # numpy's gather is single-threaded: torch.index_select on CPU can be 50x slower
            # when its OpenMP threads compete with other processes (measured, see RESULTS).
            batch = {"x": torch.from_numpy(self._x.take(idx, axis=0))}
            if self._y is not None:
                batch["y"] = torch.from_numpy(self._y.take(idx))
            yield batch

    # ------------------------------------------------------------------ streaming

    def pieces(self, epoch: int) -> list[tuple[str, int, int]]:
        """This rank's part of epoch `epoch`: [(shard file, first row, end row)] in order."""
        if self.shuffle:
            rng = np.random.default_rng(stream_seed(self.seed, "data_order", epoch))
            order = [int(k) for k in rng.permutation(len(self._files))]
            offset = int(rng.integers(self.n_samples))
        else:
            order, offset = list(range(len(self._files))), 0
        start = offset + self.rank * self.samples_per_rank
        parts = rank_pieces(self._sizes, order, start, self.samples_per_rank)
        parts = split_for_workers(parts, self.num_workers)
        return [(self._files[k], lo, hi) for k, lo, hi in parts]

    def pipeline(self, epoch: int) -> wds.DataPipeline:
        """The WebDataset pipeline that produces this rank's chunks for `epoch`."""
        source = [
            {"url": url, "lo": lo, "hi": hi, "dim": self.input_dim}
            for url, lo, hi in self.pieces(epoch)
        ]
        return wds.DataPipeline(
            PieceList(source),
            wds.split_by_worker,
            read_pieces,
            ShuffleBatch(self.batch_size, self.shuffle_buffer, self.shuffle, self.seed, epoch,
                          self.rank),
        )

    def _epoch_streaming(self, epoch: int, skip: int) -> Iterator[dict[str, torch.Tensor]]:
        pipeline = self.pipeline(epoch)
        if self.num_workers > 0:
            chunks = torch.utils.data.DataLoader(
                pipeline,
                batch_size=None,
                num_workers=self.num_workers,
                pin_memory=self.pin_memory and torch.cuda.is_available(),
            )
        else:
            chunks = pipeline
        batches = rebatch(chunks, self.batch_size)
        # Resuming replays the stream up to the position (cheap: it is disk reads and
        # permutations only) so that the remaining batches are exactly those of a full epoch.
        n = 0
        try:
            for batch in itertools.islice(batches, skip, None):
                n += 1
                yield batch
        except UserError as exc:
            if self.num_workers == 0:
                raise
            # A worker's UserError comes back wrapped with its traceback; keep the sentence.
            last = str(exc).strip().splitlines()[-1]
            raise UserError(last.split("UserError: ", 1)[-1]) from None
        if n != self.batches_per_epoch - skip:
            raise RuntimeError(f"loader bug: {n} batches instead of {self.batches_per_epoch}")


def validation_loader(shard_dir: str | os.PathLike, batch_size: int, rank: int = 0,
                      world_size: int = 1, split: str = "val", **options: Any) -> ShardLoader:
    """The evaluation loader of a split: every sample once, the same batch count on every
    rank, in batches of at most `batch_size`.

    It uses the fewest batches per rank, k = ceil(N / (W x batch_size)), each of
    ceil(N / (W x k)) samples, so a split smaller than W x batch_size (digits' 360 samples on
    2 x 200) still validates, and fewer than W x k samples are repeated (`n_padded`, by
    wrap-around at the end of the epoch's order: drop the last n_padded rows of the
    rank-ordered gather to count each sample once). options: as ShardLoader (num_workers,
    in_memory, seed, pin_memory).
    """
    n = int(split_entries(load_manifest(shard_dir), split, shard_dir)["n_samples"])
    if n < world_size:
        raise UserError(f"split {split!r} of {shard_dir} has {n} samples, fewer than the {world_size} "
                        "processes: use fewer processes or a larger split.")
    batches = math.ceil(n / (world_size * batch_size))
    size = math.ceil(n / (world_size * batches))
    return ShardLoader(shard_dir, split, batch_size=size, rank=rank, world_size=world_size,
                       shuffle=False, drop_last=False, **options)


class MemberOrderLoader:
    """The training batches of every member in its own order (`--member_data_order own`):
    `loader` (a ShardLoader holding its split in memory) copied once per order seed, all
    copies sharing the one array. Batches are {'x': [P, B, M]}; the epoch length and resume
    position are the shared loader's."""

    def __init__(self, loader: ShardLoader, seeds: list[int]):
        if not loader.in_memory:
            raise ValueError("member orders gather from an in-memory split")
        self.loaders = []
        for seed in seeds:
            own = copy.copy(loader)
            own.seed = seed
            self.loaders.append(own)
        self.batches_per_epoch, self.input_dim = loader.batches_per_epoch, loader.input_dim

    def epoch(self, epoch: int, skip_batches: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        streams = [loader.epoch(epoch, skip_batches=skip_batches) for loader in self.loaders]
        for batches in zip(*streams, strict=True):
            yield {"x": torch.stack([b["x"] for b in batches])}
