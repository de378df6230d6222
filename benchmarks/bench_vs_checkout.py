"""The training cycle of this checkout against another checkout's, e.g. the previous release,
in the same run on the same machine.

    python benchmarks/bench_vs_checkout.py --other /path/to/other/checkout --rounds 5

Per preset, every round starts one process per checkout (the order alternates between
rounds), each timing `--cycles` cycles of one model at vH16 sizes (batch 200, M 256,
K 512, t_train 16, n_exp 10, Poisson temperature 0.5) on one thread after a warm-up
cycle, in process CPU time (on a shared machine CPU time is steadier than wall time).
Each process runs its own checkout's `fondtrain.bench.candidates.fondtrain_cycle`: the
trainer's cycle of that version. The ratio (this / other) is the median of the rounds'
ratios; below 1 this checkout is faster.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent

TIMER = """
import sys, time, torch
from fondtrain.bench import candidates as C
from fondtrain.bench.settings import BenchSettings
torch.set_num_threads(1)
preset, cycles = sys.argv[1], int(sys.argv[2])
s = BenchSettings(presets=(preset,))
device = torch.device("cpu")
run = C.fondtrain_cycle(C.fondtrain_model(preset, s, None, device), C.inputs(s, device), s)
run()
start = time.process_time()
for _ in range(cycles):
    run()
print((time.process_time() - start) / cycles)
"""


def cycle_seconds(checkout: Path, preset: str, cycles: int) -> float:
    env = {**os.environ, "PYTHONPATH": str(checkout), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", TIMER, preset, str(cycles)], env=env, cwd=checkout,
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--other", type=Path, required=True, help="the checkout to compare with")
    parser.add_argument("--presets", default="ipvae,igvae,igrelu")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cycles", type=int, default=5)
    args = parser.parse_args()
    print("| preset | this cycle ms | other cycle ms | this / other (median of rounds) | rounds |")
    print("|---|---:|---:|---:|---|")
    for preset in args.presets.split(","):
        ours, theirs, ratios = [], [], []
        for r in range(args.rounds):
            pair = [("ours", HERE), ("theirs", args.other)]
            times = {}
            for label, checkout in pair if r % 2 == 0 else pair[::-1]:
                times[label] = cycle_seconds(checkout, preset, args.cycles)
            ours.append(times["ours"])
            theirs.append(times["theirs"])
            ratios.append(times["ours"] / times["theirs"])
        print(f"| {preset} | {1e3 * statistics.median(ours):.0f} | {1e3 * statistics.median(theirs):.0f} | "
              f"{statistics.median(ratios):.3f} | {', '.join(f'{v:.3f}' for v in ratios)} |", flush=True)


if __name__ == "__main__":
    main()
