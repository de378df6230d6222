"""Train fondtrain and the reference implementation side by side and compare parameters.

    python benchmarks/reference_parity.py --reference_dir /path/to/IterativeVAE \
        --steps 120 --n_latents 32 --t_train 4 --batch_size 50

Both start from the same parameters, see the same batches (fondtrain's loader) and draw
their sampler noise from the same torch RNG stream in the same order (with the reference's
sampler; fondtrain's own draws from each member's generator instead). fondtrain runs its
real trainer (`fondtrain.train.trainer.train`); the reference runs its own model and Adamax
under a replica of its Trainer.iteration (`fondtrain.bench.reference.train_reference`)
fed with fondtrain's schedule values (tests/test_schedules.py shows they equal the
reference's). `--sampler reference` (the default) swaps in the reference's sampler
expression, which draws its Exp(1) noise as one [n_exp, B, K] tensor: then both consume
the RNG alike and the runs agree to float32 rounding over many optimiser steps. With
`--sampler fondtrain` the fast streamed sampler draws the same distribution in another
order, so the two runs see different noise and differ from the first step on.

The reference checkout is the user's; nothing of it is shipped with fondtrain. It is read
by fondtrain's one reference loader (`fondtrain.bench.reference`), which runs its model,
sampler and optimiser definitions without its plotting and data-loading imports.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fondtrain.bench.reference import load_reference, reference_model, train_reference  # noqa: E402
from fondtrain.cli import run_or_exit  # noqa: E402


def _reference_sampler(u, temp, n_exp, noise=None, generators=None, **_):
    """The reference's relaxed Poisson expression for fondtrain's one member u [1, B, K],
    its Exp(1) noise drawn as one [n_exp, B, K] tensor from torch's global RNG."""
    from fondtrain.model.poisson import poisson_rate

    if noise is None:
        noise = torch.empty((int(n_exp[0]), *u.shape[1:]), device=u.device).exponential_()
    times = torch.cumsum(noise / poisson_rate(u[0]), dim=0)
    return torch.sigmoid((1.0 - times) / float(temp[0] if torch.is_tensor(temp) else temp)).sum(0)[None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference_dir", required=True)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--n_latents", type=int, default=32)
    parser.add_argument("--t_train", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=50)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--sampler", choices=("reference", "fondtrain"), default="reference")
    args = parser.parse_args()
    load_reference(args.reference_dir)  # a wrong path: one sentence before any work

    from fondtrain.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from fondtrain.config.schedules import schedules_for
    from fondtrain.data.loader import ShardLoader
    from fondtrain.data.shards import ensure_shards
    from fondtrain.model import vae
    from fondtrain.model.upstream import state_dict_from_upstream, state_dict_to_upstream
    from fondtrain.model.vae import IterativeVAE
    from fondtrain.seeding import stream_seed
    from fondtrain.train.trainer import train

    if args.sampler == "reference":
        vae.relaxed_poisson = _reference_sampler
    work = Path(tempfile.mkdtemp(prefix="parity-"))
    shards = ensure_shards(args.dataset, work / "shards")
    loader = ShardLoader(shards, "train", batch_size=args.batch_size, seed=0, in_memory=True)
    steps = min(args.steps, loader.batches_per_epoch)
    config = RunConfig(
        model=ModelConfig(preset="ipvae", input_dim=loader.input_dim, n_latents=args.n_latents,
                          t_train=args.t_train),
        data=DataConfig(dataset=args.dataset, shards_root=str(work / "shards")),
        train=TrainConfig(batch_size=args.batch_size, epochs=1, max_steps=steps, log_every=10**9,
                          runs_root=str(work / "runs"), name="parity", n_exp_refresh_every=25),
    )
    reference, ref = reference_model(
        args.reference_dir, "ipvae", n_latents=args.n_latents, t_train=args.t_train,
        input_side=int(round(loader.input_dim ** 0.5)), beta_outer=config.model.beta_outer)
    weights = reference.state_dict()
    weights.update(state_dict_to_upstream(IterativeVAE(config.model)))  # fondtrain's init
    reference.load_state_dict(weights)
    schedule = schedules_for([config], loader.batches_per_epoch)

    torch.manual_seed(stream_seed(config.train.seed, "sampler", 0))
    reference_losses = train_reference(reference, ref, loader, schedule, config.train, steps, args.t_train)

    torch.manual_seed(stream_seed(config.train.seed, "sampler", 0))  # the reference sampler's draws
    ours = {k: v[0] for k, v in train(config).model.state_dict().items()}
    theirs = state_dict_from_upstream(reference.state_dict())
    print(f"\n{steps} optimiser steps, ipvae K={args.n_latents}, t_train={args.t_train}, "
          f"batch {args.batch_size}, {args.dataset}, sampler={args.sampler}")
    print(f"{'parameter':<14} {'max |fondtrain - reference|':>28} {'max |reference|':>16}")
    for name in ("W", "dec_log_sigma", "log_bias", "log_lr", "u_init", "n_exp"):
        diff = float((ours[name].double() - theirs[name].double()).abs().max())
        print(f"{name:<14} {diff:>28.3g} {float(theirs[name].double().abs().max()):>16.4g}")
    print(f"reference loss: first {reference_losses[0]:.4f}, last {reference_losses[-1]:.4f}")


if __name__ == "__main__":
    run_or_exit(main)  # a bad input: one sentence, exit 2
