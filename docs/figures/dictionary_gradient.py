"""Is a trained dictionary still moving, and is its gradient signal or noise?

    PYTHONPATH=. python docs/figures/dictionary_gradient.py CKPT [CKPT ...] [--batch 50] [--n 40]

For the last checkpoint: the training gradient of W on n batches (the schedule values of
that step, a fresh state per batch), per entry |mean| / std over the batches, and the
share of the mean gradient in the total gradient power. A pure-noise gradient gives
about 0.67 / sqrt(n) and 1 / n: the mean is below what n batches can detect. For
successive checkpoints: the median cosine of each element with its previous version
(1.000: the dictionary no longer moves).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from fondtrain.config.schedules import Schedules, schedule_for
from fondtrain.data.loader import ShardLoader
from fondtrain.data.shards import shard_folder
from fondtrain.runs.files import TRAINER_STATE, load_model, resolve_checkpoint


def gradient_samples(checkpoint: str, batch: int, n: int) -> tuple[np.ndarray, str]:
    """n per-batch gradients of W [n, M, K] at the checkpoint, and a line saying where."""
    model, cfg = load_model(checkpoint)  # a population of one: W [1, M, K]
    model.train()
    state = json.loads((resolve_checkpoint(checkpoint) / TRAINER_STATE).read_text())
    values = Schedules([schedule_for(cfg, state["total_steps"])]).at(state["global_step"])
    d = cfg.data
    loader = ShardLoader(shard_folder(d.shards_root, d.dataset, d.path), "train", batch_size=batch,
                         rank=0, world_size=1, seed=1, in_memory=True)
    torch.manual_seed(0)
    grads = []
    for i, b in enumerate(loader.epoch(0)):
        if i >= n:
            break
        model.zero_grad()
        out = model(b["x"], model.init_state(batch), 0, cfg.model.t_train, values.temp, values.beta,
                    values.eps)
        out.loss.sum().backward()
        grads.append(model.W.grad[0].detach().clone().numpy())
    where = (f"step {state['global_step']}: temp {float(values.temp[0]):.3f}, beta {float(values.beta[0]):.2f}, "
             f"lr {float(values.lr[0]):.1e}, {n} batches of {batch}")
    return np.stack(grads), where


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--n", type=int, default=40)
    args = parser.parse_args()
    weights = [load_model(c)[0].W[0].detach().numpy() for c in args.checkpoints]
    for previous, current, name in zip(weights[:-1], weights[1:], args.checkpoints[1:], strict=True):
        cos = (previous * current).sum(0) / np.linalg.norm(previous, axis=0) / np.linalg.norm(current, axis=0)
        print(f"{name}: median element cosine to the previous checkpoint {np.median(cos):.4f}")
    grads, where = gradient_samples(args.checkpoints[-1], args.batch, args.n)
    mean, std = grads.mean(0), grads.std(0, ddof=1)
    ratio = np.abs(mean) / (std + 1e-12)
    print(f"{args.checkpoints[-1]} ({where})")
    print(f"  per entry |mean| / std: median {np.median(ratio):.3f} (pure noise: {0.674 / np.sqrt(args.n):.3f})")
    print(f"  mean gradient power / total: {(mean ** 2).sum() / (grads ** 2).mean(0).sum():.3f} "
          f"(pure noise: {1 / args.n:.3f})")


if __name__ == "__main__":
    main()
