"""The streaming side of `ShardLoader`: which pieces of which shards a rank reads, and the
WebDataset pipeline that reads them (split by worker, decode the .npy blocks, slice to the
piece, shuffle in windows, cut into whole batches in the worker, re-batch in the main
process). The epoch's contract is in `fondtrain.data.loader`.
"""

from __future__ import annotations

import bisect
import tarfile
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import webdataset as wds
from webdataset.autodecode import DecodingError

from fondtrain.errors import UserError
from fondtrain.seeding import stream_seed


def rank_pieces(
    sizes: list[int], order: list[int], start: int, length: int
) -> list[tuple[int, int, int]]:
    """Which rows of which shards make up positions [start, start + length) of an epoch.

    The epoch's sequence is the shards in `order`, concatenated; positions wrap around
    modulo its total length (that is how padding wraps).

    Args:
        sizes: samples per shard, indexed by shard.
        order: shard indices in epoch order.
        start: first position (any integer >= 0).
        length: number of positions.

    Returns:
        [(shard index, first row, end row)], in stream order.
    """
    cum = [0]
    for k in order:
        cum.append(cum[-1] + sizes[k])
    total = cum[-1]
    pieces, pos, left = [], start, length
    while left > 0:
        p = pos % total
        k = bisect.bisect_right(cum, p) - 1
        lo = p - cum[k]
        take = min(sizes[order[k]] - lo, left)
        pieces.append((order[k], lo, lo + take))
        pos += take
        left -= take
    return pieces


def split_for_workers(pieces: list[tuple[int, int, int]], n_workers: int):
    """Halve the largest pieces until there are at least `n_workers` (when possible)."""
    pieces = list(pieces)
    while len(pieces) < n_workers:
        i = max(range(len(pieces)), key=lambda j: pieces[j][2] - pieces[j][1])
        k, lo, hi = pieces[i]
        if hi - lo < 2:
            break
        mid = (lo + hi) // 2
        pieces[i : i + 1] = [(k, lo, mid), (k, mid, hi)]
    return pieces


# ---------------------------------------------------------------- pipeline stages


class PieceList(torch.utils.data.IterableDataset):
    """WebDataset source: the rank's pieces as dicts {url, lo, hi, dim} (cf. SimpleShardList)."""

    def __init__(self, pieces: list[dict[str, Any]]):
        super().__init__()
        self.pieces = pieces

    def __iter__(self):
        yield from (dict(p) for p in self.pieces)


def read_pieces(src: Iterator[dict[str, Any]]) -> Iterator[dict[str, np.ndarray]]:
    """WebDataset stage: piece dicts {url, lo, hi, dim} -> {'x': [b, M], 'y': [b]} chunks.

    Each piece is read with wds.tarfile_to_samples + wds.decode (the .npy blocks decode to
    numpy arrays); only rows [lo, hi) of the shard are kept and reading stops after hi.
    """
    for piece in src:
        try:
            yield from read_piece(piece)
        # DecodingError: webdataset's wrapper of a member whose bytes do not decode (.npy)
        except (tarfile.TarError, OSError, EOFError, ValueError, DecodingError) as exc:
            raise UserError(
                f"{piece['url']} cannot be read ({type(exc).__name__}); it is truncated or "
                "corrupt: run `fondtrain verify` and rebuild the shards."
            ) from exc


def read_piece(piece: dict[str, Any]) -> Iterator[dict[str, np.ndarray]]:
    url, lo, hi, dim = piece["url"], piece["lo"], piece["hi"], piece["dim"]
    samples = wds.decode()(wds.tarfile_to_samples()(iter([{"url": url}])))
    offset = 0
    try:
        for sample in samples:
            x = sample.get("npy")
            if not isinstance(x, np.ndarray) or x.ndim != 2 or x.shape[1] != dim:
                raise UserError(
                    f"{url} block {sample.get('__key__')} is not a [b, {dim}] array; "
                    "run `fondtrain verify` and rebuild the shards."
                )
            n = len(x)
            a, b = max(lo - offset, 0), min(hi - offset, n)
            if a < b:
                chunk = {"x": x[a:b]}
                if "labels.npy" in sample:
                    chunk["y"] = sample["labels.npy"][a:b]
                yield chunk
            offset += n
            if offset >= hi:
                break
    finally:
        samples.close()
    if offset < hi:
        raise UserError(
            f"{url} ends after {offset} samples but the manifest promises {hi}; "
            "run `fondtrain verify` and rebuild the shards."
        )


class ShuffleBatch:
    """WebDataset stage run inside each worker: windowed shuffle, then groups of batches.

    Chunks are gathered until `buffer` samples are pending, permuted together with a
    generator seeded by (seed, epoch, rank, worker), and the largest multiple of B of them
    is emitted as ONE tensor of k whole batches ([k * B, M]); the remainder stays for the
    next window. At the end of the worker's stream everything left is emitted (its last
    batch may be partial) and the main process re-batches. Emitting groups of batches
    instead of single batches keeps the number of inter-process transfers (each has a
    fixed cost: shared-memory file, pickling, a queue round trip) small; a 200 x 256
    batch is only 200 KB.
    """

    def __init__(self, batch_size: int, buffer: int, shuffle: bool, seed: int, epoch: int,
                 rank: int):
        self.batch_size, self.buffer, self.shuffle = batch_size, buffer, shuffle
        self.seed, self.epoch, self.rank = seed, epoch, rank

    def __call__(self, src: Iterator[dict[str, np.ndarray]]) -> Iterator[dict[str, torch.Tensor]]:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        rng = np.random.default_rng(stream_seed(self.seed, "data_window", self.epoch, self.rank, worker))
        pending: list[dict[str, np.ndarray]] = []
        n_pending = 0
        for chunk in src:
            pending.append(chunk)
            n_pending += len(chunk["x"])
            if n_pending >= self.buffer:
                window = self._window(pending, rng)
                n_full = n_pending // self.batch_size * self.batch_size
                yield to_torch(window, 0, n_full)
                pending = [{k: v[n_full:] for k, v in window.items()}]
                n_pending -= n_full
        if n_pending:
            yield to_torch(self._window(pending, rng), 0, n_pending)

    def _window(self, chunks: list[dict[str, np.ndarray]], rng) -> dict[str, np.ndarray]:
        window = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
        if self.shuffle:
            perm = rng.permutation(len(window["x"]))
            window = {k: v[perm] for k, v in window.items()}
        return window


def to_torch(arrays: dict[str, np.ndarray], start: int, stop: int) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v[start:stop])) for k, v in arrays.items()}


def rebatch(chunks, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    """Cut a stream of [n, M] chunks into [B, M] batches (views where a batch lies in a chunk)."""
    carry: dict[str, torch.Tensor] | None = None  # < B samples waiting for the next chunk
    for chunk in chunks:
        n, pos = len(chunk["x"]), 0
        if carry is not None:
            need = batch_size - len(carry["x"])
            take = min(need, n)
            carry = {k: torch.cat([carry[k], v[:take]]) for k, v in chunk.items()}
            pos = take
            if len(carry["x"]) < batch_size:
                continue
            yield carry
            carry = None
        while n - pos >= batch_size:
            yield {k: v[pos : pos + batch_size] for k, v in chunk.items()}
            pos += batch_size
        if pos < n:
            carry = {k: v[pos:] for k, v in chunk.items()}
    if carry is not None:
        raise RuntimeError(f"loader bug: {len(carry['x'])} samples left over after re-batching")


# ------------------------------------------------------------------------ loader
