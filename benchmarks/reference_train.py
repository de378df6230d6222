"""Train the reference implementation on fondtrain's shards and save it for `fondtrain eval`.

    python benchmarks/reference_train.py --reference_dir /path/to/IterativeVAE \
        --dataset natural16 --n_latents 512 --t_train 16 --batch_size 200 --epochs 300 \
        --steps 2850 --out runs/reference-k512/model.pt
    fondtrain eval --checkpoint runs/reference-k512/model.pt --dataset natural16 \
        --n_val 2000 --noprobe --notuning --out runs/reference-k512/eval

The reference's own iP-VAE, with its own initialisation, sampler and NVAE Adamax, driven
like its `Trainer.iteration` (`fondtrain.bench.reference.train_reference`) with the
paper's schedules over `--epochs` epochs (fondtrain's schedule values, which equal the
reference's), on the training patches fondtrain trains on, stopped after `--steps`
optimiser steps: the same patches and recipe as a fondtrain run, in the other code. Its
weights are written as the reference's `.pt` ({"model": state dict}), which `fondtrain
eval --checkpoint` reads, so its dictionary gets the same Gabor metric and R^2 as
fondtrain's checkpoints. The reference checkout is the user's; nothing of it is shipped.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fondtrain.bench.reference import load_reference, reference_model, train_reference  # noqa: E402
from fondtrain.cli import run_or_exit  # noqa: E402
from fondtrain.errors import UserError  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference_dir", required=True, help="a local checkout of hadivafaii/IterativeVAE")
    parser.add_argument("--out", required=True, help="the .pt file to write")
    parser.add_argument("--dataset", default="natural16")
    parser.add_argument("--shards_root", default="shards")
    parser.add_argument("--n_latents", type=int, default=512)
    parser.add_argument("--t_train", type=int, default=16)
    parser.add_argument("--batch_size", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=300, help="the schedules' length")
    parser.add_argument("--steps", type=int, required=True, help="optimiser steps to train")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log_every", type=int, default=100)
    args = parser.parse_args()
    out = Path(args.out)
    if out.exists():
        raise UserError(f"{out} exists: give --out a new file name.")
    load_reference(args.reference_dir)  # a wrong path: one sentence before any work

    from fondtrain.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from fondtrain.config.schedules import schedules_for
    from fondtrain.data.loader import ShardLoader
    from fondtrain.data.shards import ensure_shards

    shards = ensure_shards(args.dataset, args.shards_root)
    loader = ShardLoader(shards, "train", batch_size=args.batch_size, seed=args.seed, in_memory=True)
    config = RunConfig(
        model=ModelConfig(preset="ipvae", input_dim=loader.input_dim, n_latents=args.n_latents,
                          t_train=args.t_train),
        data=DataConfig(dataset=args.dataset, shards_root=args.shards_root),
        train=TrainConfig(batch_size=args.batch_size, epochs=args.epochs, seed=args.seed),
    )
    total_steps = args.epochs * loader.batches_per_epoch
    if not 0 < args.steps <= total_steps:
        raise UserError(f"--steps {args.steps} is outside 1..{total_steps} ({args.epochs} epochs of "
                        f"{loader.batches_per_epoch} batches): give fewer steps or more --epochs.")
    torch.manual_seed(args.seed)  # the reference's own initialisation and sampler noise
    reference, ref = reference_model(
        args.reference_dir, "ipvae", n_latents=args.n_latents, t_train=args.t_train,
        input_side=int(round(loader.input_dim ** 0.5)), beta_outer=config.model.beta_outer, seed=args.seed)
    schedule = schedules_for([config], total_steps)
    print(f"reference iP-VAE K={args.n_latents}, t_train={args.t_train}, batch {args.batch_size}, "
          f"{args.dataset}: {args.steps:,} of {total_steps:,} steps ({args.epochs} epochs)", flush=True)
    start = time.monotonic()

    def progress(step: int, loss: float) -> None:
        if not math.isfinite(loss):
            raise UserError(f"the reference's loss is {loss} at step {step + 1}: nothing was saved.")
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            print(f"step {step + 1:,}/{args.steps:,} loss={loss:.2f} "
                  f"elapsed {time.monotonic() - start:.0f} s", flush=True)

    train_reference(reference, ref, loader, schedule, config.train, args.steps, args.t_train,
                    on_step=progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    torch.save({"model": reference.state_dict()}, partial)
    os.replace(partial, out)  # whole or not at all
    print(f"wrote {out}")


if __name__ == "__main__":
    run_or_exit(main)  # a bad input: one sentence, exit 2
