"""The compiled TBPTT cycle (fondtrain/model/compiled_cycle.py) against the eager one.

    nice -n 19 python benchmarks/bench_compiled.py                    # vH16 sizes, all presets
    nice -n 19 python benchmarks/bench_compiled.py --presets ipvae --t_train 4

Per preset, one model and one Adamax at vH16 sizes (batch 200, M 256, K 512, t_train 16,
n_exp 10, Poisson training temperature 0.5, inputs standard normal as whitened patches
are), and two cycles of the same batch shape: the eager one as train/loop.py runs it
(forward, backward, clip_grad_norm_, Adamax step, zero_grad) and the compiled window
graph (`CompiledCycle.train_batch`). The compiled cycle's first call builds the graph:
reported on its own, never in the cycle times. Then `--rounds` interleaved rounds of
`--repeats` cycles each; medians; one thread.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from fondtrain.model.compiled_cycle import CompiledCycle

from fondtrain.config import PRESETS, ModelConfig
from fondtrain.model.vae import IterativeVAE

TRAIN_TEMP = {"ipvae": 0.5, "igvae": 1.0, "igrelu": 1.0}


def make(preset: str, args) -> tuple[IterativeVAE, torch.optim.Adamax, torch.Tensor]:
    config = ModelConfig(preset=preset, input_dim=args.input_dim, n_latents=args.n_latents,
                         t_train=args.t_train)
    model = IterativeVAE(config)
    optimizer = torch.optim.Adamax(model.parameters(), lr=5e-3, betas=(0.9, 0.999), eps=1e-8,
                                   weight_decay=3e-4)
    x = torch.randn(args.batch, args.input_dim, generator=torch.Generator().manual_seed(0))
    return model, optimizer, x


def eager_cycle(model, optimizer, x, temp: float) -> None:
    out = model(x, model.init_state(x.shape[0]), 0, model.config.t_train, temp, 1.0, 1.0)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 300.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_preset(preset: str, args) -> dict:
    temp = TRAIN_TEMP[preset]
    eager = make(preset, args)
    compiled_model, compiled_opt, x = make(preset, args)
    cycle = CompiledCycle(compiled_model, compiled_opt, grad_accum=1)

    def compiled():
        result = cycle.train_batch(x, lr=5e-3, beta=1.0, eps=1.0, temp=temp, max_norm=300.0)
        if result is None:
            raise RuntimeError("the compiled cycle failed")
        return result

    first = timed(compiled)
    eager_cycle(*eager, temp)  # warm-up (allocator, first Adamax step)
    eager_ms, compiled_ms = [], []
    for _ in range(args.rounds):
        eager_ms.append(1e3 * statistics.median(timed(lambda: eager_cycle(*eager, temp))
                                                for _ in range(args.repeats)))
        compiled_ms.append(1e3 * statistics.median(timed(compiled) for _ in range(args.repeats)))
    e, c = statistics.median(eager_ms), statistics.median(compiled_ms)
    return dict(preset=preset, first_s=first, eager_ms=e, compiled_ms=c, speedup=e / c)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--input_dim", type=int, default=256)
    parser.add_argument("--n_latents", type=int, default=512)
    parser.add_argument("--t_train", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"B={args.batch}, M={args.input_dim}, K={args.n_latents}, t_train={args.t_train}, "
          f"n_exp 10; {args.threads} thread(s), torch {torch.__version__}; medians of "
          f"{args.rounds} interleaved rounds of {args.repeats} cycles")
    print("| preset | eager cycle ms | compiled cycle ms | speed-up | first compiled call s |")
    print("|---|---:|---:|---:|---:|")
    for preset in args.presets.split(","):
        r = bench_preset(preset, args)
        print(f"| {r['preset']} | {r['eager_ms']:.0f} | {r['compiled_ms']:.0f} | "
              f"**{r['speedup']:.2f}x** | {r['first_s']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
