"""`fondtrain eval` of a population run: every member in one batched inference against
one member after another, wall time in the same process (same machine load).

    python benchmarks/bench_population_eval.py RUN --n_val 200            # every stage
    python benchmarks/bench_population_eval.py RUN --n_val 200 --nogabor  # model stages only

"one by one" is `evaluate(RUN, member=NAME)` for each member (each loads its member, the
data, and runs every stage alone), then the sweep summary. "batched" is `evaluate(RUN)`,
what `fondtrain eval RUN` runs: every member in one inference per stage.
Both write every member's files (TensorBoard off, figures as --figures). Rounds
alternate the two, after one batched warm-up (imports, data caches); the medians are
reported, with the per-stage times of the last batched round.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch

from fondtrain.eval.evaluate import EvalOptions, evaluate
from fondtrain.eval.sweep_summary import write_eval_summary
from fondtrain.runs.files import load_run


def one_by_one(run: Path, opts: EvalOptions, out: Path) -> None:
    members = load_run(run)[2]
    metrics = {}
    for member in members:
        single = dataclasses.replace(opts, out=str(out / "members" / member.name))
        metrics[member.name] = evaluate(run, None, single, verbose=False, member=member.name)
    write_eval_summary(members, metrics, out, title=run.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--n_steps", type=int, default=1000)
    parser.add_argument("--n_val", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--nogabor", action="store_true")
    parser.add_argument("--figures", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    members = load_run(args.run)[2]
    if len(members) < 2:
        raise SystemExit(f"{args.run} is not a population run")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        opts = EvalOptions(n_steps=args.n_steps, n_val=args.n_val, gabor=not args.nogabor,
                           figures=args.figures, tensorboard=False, out=str(out / "batched"))
        evaluate(args.run, None, opts, verbose=False)  # warm-up
        times: dict[str, list[float]] = {"one by one": [], "batched": []}
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            one_by_one(args.run, opts, out / "alone")
            times["one by one"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            evaluate(args.run, None, opts, verbose=False)
            times["batched"].append(time.perf_counter() - t0)
        stages = json.loads((out / "batched" / "members" / members[0].name / "metrics.json").read_text())["timing"]
    median = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.run.name}: P={len(members)}, T={args.n_steps}, n_val={args.n_val}, "
          f"gabor={not args.nogabor}, {args.threads} thread(s), {args.rounds} rounds")
    for label, values in times.items():
        print(f"  {label:10s} median {median[label]:7.2f} s  ({', '.join(f'{v:.2f}' for v in values)})")
    print(f"  speed-up {median['one by one'] / median['batched']:.2f}x")
    print("  batched stages (s): " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()
                                               if k.endswith("_s") and math.isfinite(v)))


if __name__ == "__main__":
    main()
