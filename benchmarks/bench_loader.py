"""Loader throughput (samples/s) on natural16-sized shards: M = 256, batch 200.

    .venv/bin/python benchmarks/bench_loader.py [--n_train 100000] [--epochs 3]
        [--workers 0,1,2] [--shards DIR] [--trainer_samples_per_s X]

Builds natural16 shards into a temporary folder (unless --shards points at existing
ones), then times full epochs of `ShardLoader(...).epoch(e)` for streaming mode with each
worker count and for in-memory mode, on one rank. "first" is epoch 0 (includes worker
start-up and a cold page cache for streaming); "steady" is the median of the later
epochs. With --trainer_samples_per_s the table also shows loader rate / trainer rate:
above 1 the loader keeps up with the trainer.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from fondtrain.data.loader import ShardLoader
from fondtrain.data.shard_reader import load_manifest
from fondtrain.data.shards import build_shards


def time_epochs(loader: ShardLoader, epochs: int) -> list[float]:
    """Seconds per full epoch (iterating every batch and touching its data)."""
    times = []
    for epoch in range(epochs):
        start = time.perf_counter()
        n = 0
        for batch in loader.epoch(epoch):
            n += batch["x"].shape[0]
        times.append(time.perf_counter() - start)
        assert n == loader.batches_per_epoch * loader.batch_size
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n_train", type=int, default=100_000)
    parser.add_argument("--batch_size", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    parser.add_argument("--shards", default=None, help="existing shard folder to read")
    parser.add_argument("--trainer_samples_per_s", type=float, default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        if args.shards:
            shard_dir = Path(args.shards)
        else:
            start = time.perf_counter()
            shard_dir = build_shards("natural16", tmp, n_train=args.n_train, n_val=1000)
            print(f"built natural16 shards ({args.n_train} train) in "
                  f"{time.perf_counter() - start:.1f} s")
        print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start")
        m = load_manifest(shard_dir)
        n_shards = len(m["splits"]["train"]["shards"])
        print(f"shards: {shard_dir} M={m['input_dim']} train={m['splits']['train']['n_samples']}"
              f" in {n_shards} shards, block {m['block_size']}, batch {args.batch_size}")

        configs = [(f"streaming, {w} workers", dict(num_workers=w))
                   for w in map(int, args.workers.split(","))]
        configs.append(("in-memory", dict(in_memory=True)))
        header = "| mode | setup s | first epoch samples/s | steady samples/s | batches/s |"
        sep = "|---|---:|---:|---:|---:|"
        if args.trainer_samples_per_s:
            header += " loader / trainer |"
            sep += "---:|"
        rows = [header, sep]
        for name, kw in configs:
            start = time.perf_counter()
            loader = ShardLoader(shard_dir, "train", batch_size=args.batch_size, seed=0, **kw)
            setup = time.perf_counter() - start
            times = time_epochs(loader, args.epochs)
            n = loader.batches_per_epoch * loader.batch_size
            steady = statistics.median(times[1:]) if len(times) > 1 else times[0]
            rate = n / steady
            row = (f"| {name} | {setup:.2f} | {n / times[0]:,.0f} | {rate:,.0f} | "
                   f"{loader.batches_per_epoch / steady:,.0f} |")
            if args.trainer_samples_per_s:
                row += f" {rate / args.trainer_samples_per_s:,.1f} |"
            rows.append(row)
            print(row, flush=True)
        print()
        print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end")
        print("\n".join(rows))


if __name__ == "__main__":
    main()
