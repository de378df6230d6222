"""The relaxed Poisson sampler alone, forward and backward, on real posteriors: fondtrain's
eager CPU sampler with its C kernel and with the kernel turned off (its torch code),
against the reference's expression, at several temperatures and sampler lengths.

    python benchmarks/bench_sampler.py                      # a fresh vH16-size iP-VAE
    python benchmarks/bench_sampler.py --n_exps 10,30,60    # lengths of a trained model
    python benchmarks/bench_sampler.py --checkpoint RUN     # a trained run's posteriors
    python benchmarks/bench_sampler.py --cycle --n_exps 10,30 --temps 0.5,0.05  # the cycle

The posterior log-rates u [B, K] are the model's own after `--steps` inference steps on
`--batch` inputs (standard normal: whitened patches have unit variance). The reference's
expression draws one [n_exp, B, K] Exp(1) tensor (`Tensor.exponential_`, as its
`Exponential.rsample` does) and sums sigmoids of its cumulative sums under autograd.
fondtrain's sampler draws its own arrivals from the hashed streams and computes only
those of entries whose terms are not yet exactly 0: "arrivals/entry" is the mean number
the kernel computes per entry (n_exp for the reference). Medians of CPU time (this
process, per call) over interleaved rounds, one thread.

--cycle times the ipvae training cycle instead (the trainer's, as `fondtrain bench` runs
it: vH16 sizes, t_train steps forward and backward, clipping, the optimiser step) with
the kernel and with the kernel turned off, interleaved, in the same process.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fondtrain.config import ModelConfig
from fondtrain.model import inference
from fondtrain.model import relaxed_poisson as R
from fondtrain.model.kernels import sampler as kernel
from fondtrain.model.poisson import poisson_rate
from fondtrain.model.random_streams import hashed_exponential_at
from fondtrain.model.vae import IterativeVAE


def posterior(model: IterativeVAE, batch: int, steps: int, seed: int) -> torch.Tensor:
    """log-rates [1, B, K] after `steps` exact-sample inference steps."""
    x = torch.randn(batch, model.config.input_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        traces = inference.run(model, x, steps, temp=0.0, record=[steps])
    return traces["state"][-1, 0]


def reference_sample(u: torch.Tensor, temp: float, n_exp: int) -> torch.Tensor:
    """The reference's expression, left to autograd."""
    times = torch.cumsum(torch.empty((n_exp, *u.shape)).exponential_() / poisson_rate(u), dim=0)
    return torch.sigmoid((1.0 - times) / temp).sum(0)


def fondtrain_sample(u: torch.Tensor, temp: float, n_exp: int, with_kernel: bool) -> torch.Tensor:
    return with_kernel_set(with_kernel, lambda: R.relaxed_poisson(
        u, temp, [n_exp], generators=[torch.Generator().manual_seed(0)]))


def arrivals_per_entry(u: torch.Tensor, temp: float, n_exp: int) -> float:
    """Mean arrivals the kernel computes per entry: arrival 0, then arrival j while
    a_{j-1} = 1/tau - S_{j-1} k is at least `sigmoid_zero_below`."""
    n = u.numel()
    k = 1.0 / ((torch.exp(u.double().flatten()) + torch.finfo(torch.float32).eps) * temp)
    arrival, live, computed = torch.zeros(n, dtype=torch.float64), torch.ones(n, dtype=torch.bool), 0
    key = torch.tensor([1, 2])
    for j in range(n_exp):
        computed += int(live.sum())
        arrival += hashed_exponential_at(torch.arange(n) + j * n, key).double()
        live &= (1.0 / temp - arrival * k) >= R.sigmoid_zero_below(torch.float32)
    return computed / n


def cpu_medians(cases: dict, rounds: int, calls: int) -> dict[str, float]:
    """Median CPU seconds per call of each case: one warm-up call each, then interleaved
    rounds in which each case makes `calls` calls in a row (so that what a case costs the
    next one, e.g. the page faults of memory the reference's large tensors gave back, is
    spread as in a steady run)."""
    for fn in cases.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            start = time.process_time()
            for _ in range(calls):
                fn()
            times[name].append((time.process_time() - start) / calls)
    return {name: statistics.median(v) for name, v in times.items()}


def forward_backward(fn, u: torch.Tensor):
    """A call of `fn` on a fresh leaf copy of u and the backward of its sum."""
    def run() -> None:
        fn(u.clone().requires_grad_(True)).sum().backward()
    return run


def cycle_table(n_exps: list[int], temps: list[float], rounds: int, calls: int) -> None:
    """The ipvae training cycle with and without the kernel, per n_exp and temperature."""
    from fondtrain.bench import candidates
    from fondtrain.bench.settings import BenchSettings

    print("| n_exp | temperature | cycle ms, torch code | cycle ms, kernel | speed-up |")
    print("|---:|---:|---:|---:|---:|")
    for n_exp in n_exps:
        for temp in temps:
            s = BenchSettings(presets=("ipvae",), n_exp=n_exp, train_temp=temp)
            model = candidates.fondtrain_model("ipvae", s, device=torch.device("cpu"))
            run = candidates.fondtrain_cycle(model, candidates.inputs(s, torch.device("cpu")), s)
            times = cpu_medians({"torch": lambda run=run: with_kernel_set(False, run),
                                 "kernel": lambda run=run: with_kernel_set(True, run)}, rounds, calls)
            print(f"| {n_exp} | {temp:g} | {1e3 * times['torch']:.1f} | {1e3 * times['kernel']:.1f} | "
                  f"{times['torch'] / times['kernel']:.2f}x |")


def with_kernel_set(enabled: bool, fn):
    """fn() with the kernel on (where built) or off."""
    available = kernel.available
    kernel.available = lambda: enabled and available()
    try:
        return fn()
    finally:
        kernel.available = available


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="a fondtrain run or checkpoint (default: a fresh model)")
    p.add_argument("--temps", default="1,0.3,0.05")
    p.add_argument("--batch", type=int, default=200)
    p.add_argument("--steps", type=int, default=8, help="inference steps before sampling")
    p.add_argument("--n_exps", default="0", help="sampler lengths; 0: the model's n_exp at that step")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--calls", type=int, default=10, help="calls per case and round")
    p.add_argument("--cycle", action="store_true", help="time the ipvae training cycle instead")
    a = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if not kernel.available():
        raise SystemExit("the C kernel is not built here (see the warning above)")
    if a.cycle:
        n_exps = [int(n) or 10 for n in a.n_exps.split(",")]
        return cycle_table(n_exps, [float(t) for t in a.temps.split(",")], a.rounds, a.calls)
    if a.checkpoint:
        from fondtrain.runs.files import load_model

        model = load_model(a.checkpoint)[0]
    else:
        model = IterativeVAE(ModelConfig(preset="ipvae", input_dim=256, n_latents=512, t_train=16))
    u = posterior(model, a.batch, a.steps, seed=1)
    rates = torch.exp(u).flatten()
    q = torch.quantile(rates[:100_000], torch.tensor([0.5, 0.9, 0.99])).tolist()
    print(f"posterior [B={u.shape[1]}, K={u.shape[2]}] after {a.steps} steps (model n_exp "
          f"{model.n_exp_at(a.steps - 1)[0]}), rate median {q[0]:.3g}, 90% {q[1]:.3g}, 99% {q[2]:.3g}")
    print("| n_exp | temperature | reference ms | torch code ms | kernel ms | kernel vs reference "
          "| kernel vs torch code | arrivals/entry |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n_exp in (int(n) or model.n_exp_at(a.steps - 1)[0] for n in a.n_exps.split(",")):
        for temp in (float(t) for t in a.temps.split(",")):
            times = cpu_medians({
                "reference": forward_backward(lambda leaf, t=temp, n=n_exp: reference_sample(leaf, t, n), u),
                "torch": forward_backward(lambda leaf, t=temp, n=n_exp: fondtrain_sample(leaf, t, n, False), u),
                "kernel": forward_backward(lambda leaf, t=temp, n=n_exp: fondtrain_sample(leaf, t, n, True), u),
            }, a.rounds, a.calls)
            ref, torch_code, ours = times["reference"], times["torch"], times["kernel"]
            print(f"| {n_exp} | {temp:g} | {1e3 * ref:.2f} | {1e3 * torch_code:.2f} | {1e3 * ours:.2f} | "
                  f"{ref / ours:.1f}x | {torch_code / ours:.1f}x | {arrivals_per_entry(u, temp, n_exp):.2f} |")


if __name__ == "__main__":
    main()
