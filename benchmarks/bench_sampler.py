"""The relaxed Poisson sampler alone: fondtrain's CPU sampler against the reference's
expression, forward and backward, on real posteriors at several temperatures.

    python benchmarks/bench_sampler.py                      # a fresh vH16-size iP-VAE
    python benchmarks/bench_sampler.py --checkpoint RUN     # a trained run's posteriors

The posterior log-rates u [B, K] are the model's own after `--steps` inference steps on
`--batch` inputs (standard normal: whitened patches have unit variance). The reference's
expression draws one [n_exp, B, K] Exp(1) tensor (`Tensor.exponential_`, as its
`Exponential.rsample` does) and sums sigmoids of its cumulative sums under autograd;
fondtrain's sampler (`distributions.relaxed_poisson`) draws its own arrivals in blocks
and drops entries whose later terms are exactly zero. Both at the model's n_exp for
that step. Medians of interleaved rounds, one thread; "working set" is the mean share of
entries fondtrain's sampler still computes per arrival.
"""

from __future__ import annotations

import argparse

import torch

from fondtrain.bench import harness
from fondtrain.config import ModelConfig
from fondtrain.model import inference
from fondtrain.model import poisson as D
from fondtrain.model.vae import IterativeVAE


def posterior(model: IterativeVAE, batch: int, steps: int, seed: int) -> torch.Tensor:
    x = torch.randn(batch, model.config.input_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        traces = inference.run(model, x, steps, temp=0.0, record=[steps])
    return traces["state"][-1, 0]


def reference_sample(u: torch.Tensor, temp: float, n_exp: int) -> torch.Tensor:
    noise = torch.empty((n_exp, *u.shape)).exponential_()
    return D.relaxed_poisson_reference(u, temp, noise)


def working_share(u: torch.Tensor, temp: float, n_exp: int) -> float:
    """Mean fraction of entries `_sum_arrivals` computes per arrival."""
    sizes: list[int] = []
    original = D._sum_arrivals

    def counting(draw, *args):
        def counted(j, count, live):
            sizes.extend([u.numel() if live is None else live.numel()] * count)
            return draw(j, count, live)
        return original(counted, *args)

    D._sum_arrivals = counting
    try:
        with torch.no_grad():
            D.relaxed_poisson(u, temp, n_exp=n_exp)
    finally:
        D._sum_arrivals = original
    return sum(sizes) / (n_exp * u.numel())


def forward_backward(fn, u: torch.Tensor):
    """A call of `fn` on a fresh leaf copy of u and the backward of its sum."""
    def run() -> None:
        fn(u.clone().requires_grad_(True)).sum().backward()
    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="a fondtrain run or checkpoint (default: a fresh model)")
    p.add_argument("--temps", default="1,0.3,0.05")
    p.add_argument("--batch", type=int, default=200)
    p.add_argument("--steps", type=int, default=8, help="inference steps before sampling")
    p.add_argument("--n_exp", type=int, default=0, help="0: the model's n_exp at that step")
    p.add_argument("--rounds", type=int, default=15)
    a = p.parse_args()
    harness.set_threads(1)
    torch.manual_seed(0)
    if a.checkpoint:
        from fondtrain.run_files import load_model

        model = load_model(a.checkpoint)[0]
    else:
        model = IterativeVAE(ModelConfig(preset="ipvae", input_dim=256, n_latents=512, t_train=16))
    u = posterior(model, a.batch, a.steps, seed=1)
    n_exp = a.n_exp or model.n_exp_at(a.steps - 1)
    rates = torch.exp(u).flatten()
    q = torch.quantile(rates[:100_000], torch.tensor([0.5, 0.9, 0.99])).tolist()
    print(f"posterior [B={u.shape[0]}, K={u.shape[1]}] after {a.steps} steps, n_exp {n_exp}, "
          f"rate median {q[0]:.3g}, 90% {q[1]:.3g}, 99% {q[2]:.3g}")
    print("| temperature | reference ms | fondtrain ms | speed-up | working set |")
    print("|---:|---:|---:|---:|---:|")
    for temp in (float(t) for t in a.temps.split(",")):
        times = harness.interleaved({
            "reference": forward_backward(lambda leaf, t=temp: reference_sample(leaf, t, n_exp), u),
            "fondtrain": forward_backward(lambda leaf, t=temp: D.relaxed_poisson(leaf, t, n_exp=n_exp), u),
        }, a.rounds)
        ref, ours = times["reference"], times["fondtrain"]
        print(f"| {temp:g} | {1e3 * ref:.1f} | {1e3 * ours:.1f} | {ref / ours:.2f}x | "
              f"{working_share(u, temp, n_exp):.0%} |")


if __name__ == "__main__":
    main()
