"""Confirm `fondtrain bench`'s projection with a real run: the wall time a run took against
the time its own cycles project, on this machine.

    nice -n 19 env OMP_NUM_THREADS=2 fondtrain train --dataset natural16 --model ipvae \\
        --n_latents 512 --t_train 16 --beta_outer 24 --batch_size 200 --epochs 300 \\
        --max_steps 5000 --log_every 100 --eval_every 0 --ckpt_every 1000 --keep_last 10 \\
        --name confirm-vh16-ipvae
    nice -n 19 python benchmarks/projection_check.py runs/confirm-vh16-ipvae --threads 2

The projection is the one `fondtrain bench` makes, from the run's own models: one
training cycle (the trainer's `train_batch`) of a fresh model (step 0) and of every
complete checkpoint's model, each with the schedule's values at its step (temperature,
KL weight, clamp opening; the run's --mixed_precision) and its optimiser step at
learning rate 0 (every round times that very model, `candidates.fondtrain_cycle`'s
keep_model), timed in interleaved rounds; the
cost of the steps between two of them is interpolated linearly (after the last:
constant). The measurement is the run's own clock: the wall times of its
`perf/samples_per_s` TensorBoard scalars (every log_every steps), from the first logged
step to the last, which leaves out the start-up, so the same steps are compared. The
projection leaves out data loading, logging and checkpoint writes; a ratio within 20%
confirms it. A run that was stopped and resumed has a gap in its clock: the script
reports it and compares the longest uninterrupted stretch.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from fondtrain.bench import candidates as C  # noqa: E402
from fondtrain.bench import harness  # noqa: E402
from fondtrain.bench.settings import BenchSettings  # noqa: E402
from fondtrain.runs.files import list_checkpoints, load_model, read_trainer_state  # noqa: E402

TOLERANCE = 0.2  # the issue's: the projection within 20% of the run's wall time


def clock(run_dir: Path) -> list[tuple[int, float]]:
    """[(step, wall time)] of the run's perf/samples_per_s scalars, in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points: dict[int, float] = {}
    for events in sorted((run_dir / "tb").glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if "perf/samples_per_s" in acc.Tags().get("scalars", []):
            for e in acc.Scalars("perf/samples_per_s"):
                points[e.step] = e.wall_time
    return sorted(points.items())


def longest_stretch(points: list[tuple[int, float]]) -> tuple[list[tuple[int, float]], int]:
    """The longest run of points without a gap (an interval over 5x the median: a stop and
    a resume), and the number of gaps."""
    if len(points) < 3:
        return points, 0
    per_step = [(t1 - t0) / max(s1 - s0, 1) for (s0, t0), (s1, t1) in zip(points, points[1:], strict=False)]
    typical = statistics.median(per_step)
    pieces, start = [], 0
    for i, v in enumerate(per_step):
        if v > 5 * typical:
            pieces.append(points[start:i + 1])
            start = i + 1
    pieces.append(points[start:])
    return max(pieces, key=lambda p: p[-1][0] - p[0][0]), len(pieces) - 1


def projected_seconds(costs: list[tuple[int, float]], first: int, last: int) -> float:
    """Seconds of steps first+1 .. last, the cost per step linear between the timed steps."""
    def cost(step: float) -> float:
        if step <= costs[0][0]:
            return costs[0][1]
        for (s0, c0), (s1, c1) in zip(costs, costs[1:], strict=False):
            if step <= s1:
                return c0 + (c1 - c0) * (step - s0) / (s1 - s0)
        return costs[-1][1]

    return sum(cost(step) for step in range(first + 1, last + 1))


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("run", type=Path, help="the run folder (runs/NAME)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads, as the run had (0: default)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    args = parser.parse_args(argv)

    from fondtrain.config.schedules import schedules_for
    from fondtrain.model.vae import IterativeVAE
    from fondtrain.runtime import configure_cpu_process

    configure_cpu_process()
    harness.set_threads(args.threads)
    checkpoints = list_checkpoints(args.run / "ckpt")
    if not checkpoints:
        print(f"{args.run}: no complete checkpoint to time", file=sys.stderr)
        return 2
    _, config = load_model(checkpoints[-1])
    total = int(read_trainer_state(checkpoints[-1])["total_steps"])
    schedules = schedules_for([config], total)
    precision = "bf16" if config.train.mixed_precision == "bf16" else "fp32"
    m = config.model
    s = BenchSettings(batch_size=config.train.batch_size, input_dim=m.input_dim, n_latents=m.n_latents,
                      t_train=m.t_train, seed=config.train.seed)
    device = harness.device()
    x = C.inputs(s, device)
    fresh = IterativeVAE(m).train().to(device)
    fresh.generators = [torch.Generator(device=device).manual_seed(s.seed)]
    models = {0: fresh}
    for ckpt in checkpoints:
        model = load_model(ckpt)[0].train().to(device)
        model.generators = [torch.Generator(device=device).manual_seed(s.seed)]
        models[int(read_trainer_state(ckpt)["global_step"])] = model
    cases = {step: C.fondtrain_cycle(model, x, s, precision=precision, values=schedules.at(step), keep_model=True)
             for step, model in sorted(models.items())}
    print(f"{args.run}: timing the cycles of steps {', '.join(map(str, cases))} ({precision}, "
          f"{torch.get_num_threads()} thread(s), {args.repeats} rounds)", flush=True)
    times = harness.interleaved({str(k): v for k, v in cases.items()}, args.repeats)
    costs = [(int(k), v) for k, v in times.items()]

    points, gaps = longest_stretch(clock(args.run))
    if len(points) < 2:
        print(f"{args.run}: fewer than two perf/samples_per_s scalars: nothing to compare", file=sys.stderr)
        return 2
    (first, t0), (last, t1) = points[0], points[-1]
    measured = t1 - t0
    projected = projected_seconds(costs, first, last)
    ratio = measured / projected
    print("| step | cycle ms |\n|---:|---:|")
    for step, c in costs:
        print(f"| {step} | {1e3 * c:,.0f} |")
    stretch = f" ({gaps} stop(s) and resume(s): the longest stretch)" if gaps else ""
    print(f"\nsteps {first}-{last}: measured {_duration(measured)}, projected {_duration(projected)}, "
          f"measured / projected {ratio:.2f}{stretch}")
    confirmed = abs(ratio - 1) <= TOLERANCE
    print(f"projection {'confirmed' if confirmed else 'NOT confirmed'} (within {TOLERANCE:.0%}: "
          f"{abs(ratio - 1):.0%} off)")
    return 0 if confirmed else 1


if __name__ == "__main__":
    sys.exit(main())
