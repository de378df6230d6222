"""The paper's run on this machine: the projected wall time of 300 epochs of natural16 at
the bench's sizes (vH16: batch 200, K 512, t_train 16), per preset and precision.

The run: N natural16 training patches (its shard manifest's count if built, else the
documented 100,000; `--n_train` overrides), N // batch steps per epoch (the loader drops
the last partial batch), 150,000 steps for 300 epochs of 100k at batch 200; or its first
`--projection_steps` steps, to compare with a `--max_steps` run.

What a step costs: one training cycle (`candidates.fondtrain_cycle`, the trainer's own
`train_batch`) of the model that trains. A Poisson cycle's cost depends on the sampler
temperature (the schedule anneals it linearly from 1 to 0.01 over the first half of the
run, then holds it) and on the rates and sampler lengths n_exp, which grow as the model
trains. So:
- the cycle is timed at the temperatures of Simpson's rule over the annealed part (its
  first, middle and last temperature) and at the end temperature for the rest; the
  weighted mean is the mean cost per step over the projected steps (exact for a cost
  quadratic in the temperature); Gaussian presets train at temperature 1 throughout;
- with `--checkpoint` the model is the checkpoint's trained parameters and per-step n_exp
  (at its sizes); without one it is a fresh model of the bench's sizes with the n_exp
  profile of a trained run (`settings.TRAINED_N_EXP`): its rates are a fresh model's, so
  the figure is a lower bound, and the output says so.
The projection is for this process's threads (`--threads 2` gives the 2-thread figure)
and the wall time of the cycles in this run (a busy machine projects a slower run); it
leaves out data loading, validation and checkpoints (benchmarks/RESULTS.md compares it
with a real run).
"""

from __future__ import annotations

import math
import os

import torch

from fondtrain.bench import candidates as C
from fondtrain.bench import harness, report
from fondtrain.bench.settings import TRAINED_N_EXP, TRAINED_N_EXP_SOURCE, BenchSettings, paper_n_train
from fondtrain.config import ModelConfig, RunConfig
from fondtrain.config.schedules import schedule_for

# The goal: the paper's ipvae run (vH16 sizes) in under 3 hours on the 2-core
# development CPU (2 threads), 72 ms per cycle over 150,000 steps.
GOAL_HOURS = {"ipvae": 3.0}
GOAL_THREADS = 2


def paper_run(s: BenchSettings) -> dict:
    """The run the projection is about: its training patches (and where that number comes
    from), steps per epoch, total steps, and the steps projected."""
    if s.n_train:
        n_train, source = s.n_train, "--n_train"
    else:
        n_train, source = paper_n_train(s.shards_root)
    per_epoch = n_train // s.batch_size
    total = s.epochs * per_epoch
    steps = min(total, s.projection_steps) if s.projection_steps > 0 else total
    return {"dataset": "natural16", "n_train": n_train, "n_train_source": source, "epochs": s.epochs,
            "batch_size": s.batch_size, "steps_per_epoch": per_epoch, "total_steps": total, "steps": steps}


def temperature_nodes(preset: str, total_steps: int, steps: int) -> list[tuple[float, float]]:
    """[(temperature, weight)], weights summing to 1: the weighted mean of a per-step cost
    that depends on the temperature is its mean over steps 0..steps-1 of a run of
    total_steps with the default schedule (Simpson's rule over the linear anneal, the end
    temperature for the steps after it)."""
    schedule = schedule_for(RunConfig(model=ModelConfig(preset=preset)), max(total_steps, 1))
    steps = max(1, min(steps, total_steps) if total_steps else steps)
    if not schedule.anneal_temperature:
        return [(1.0, 1.0)]
    knee = min(steps, math.ceil(schedule.temp_anneal_portion * schedule.total_steps))
    nodes: dict[float, float] = {}

    def add(temp: float, weight: float) -> None:
        key = round(float(temp), 6)
        nodes[key] = nodes.get(key, 0.0) + weight

    if knee > 0:
        first, last = schedule.temp(0), schedule.temp(knee - 1)
        share = knee / steps
        for temp, w in ((first, 1 / 6), ((first + last) / 2, 4 / 6), (last, 1 / 6)):
            add(temp, share * w)
    if steps > knee:
        add(schedule.temp_stop, (steps - knee) / steps)
    return sorted(nodes.items(), reverse=True)


def trained_n_exp(t_train: int) -> list[int]:
    """`TRAINED_N_EXP` for t_train steps (its last value repeated beyond its 16)."""
    return [TRAINED_N_EXP[min(t, len(TRAINED_N_EXP) - 1)] for t in range(t_train)]


def projection_model(preset: str, s: BenchSettings, device: torch.device):
    """The model whose cycles the projection times: the checkpoint's trained one, or a
    fresh one with a trained run's n_exp profile (Poisson)."""
    model = C.paired_models(preset, s, device)[0]
    if not s.checkpoint and model.is_poisson:
        profile = torch.tensor([trained_n_exp(model.config.t_train)] * model.n_members, dtype=torch.int32)
        model.n_exp.copy_(profile.to(model.n_exp.device))
        model._n_exp_host = None  # the host copy is re-read from the buffer
    return model


def model_note(s: BenchSettings) -> str:
    """What the projection's model is, in words."""
    if s.checkpoint:
        return f"trained: the checkpoint {s.checkpoint} (its parameters and per-step n_exp)"
    return (f"fresh model with the n_exp profile of {TRAINED_N_EXP_SOURCE} (Poisson); its rates are a "
            "fresh model's, so this is a LOWER BOUND: --checkpoint RUN times a trained model")


def projection(s: BenchSettings, checks: dict | None = None, log=print, run: dict | None = None) -> dict:
    """Per preset and precision (s.precisions): the mean cycle over the projected steps'
    temperatures, samples/s and the projected hours; which precision is the fastest whose
    precision check (`checks`, `cases.precision_checks`) passed (float32 always does).
    run: `paper_run(s)` (given: already decided)."""
    device = harness.device()
    run = run or paper_run(s)
    x = C.inputs(s, device)
    out: dict = {"run": run, "model": "checkpoint" if s.checkpoint else "fresh", "model_note": model_note(s),
                 "threads": torch.get_num_threads(), "device": str(device),
                 "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                 "presets": {}}
    log(f"projection: {run['epochs']} epochs x {run['n_train']:,} natural16 patches "
        f"({run['n_train_source']}) = {run['total_steps']:,} steps of batch {run['batch_size']}"
        + (f", the first {run['steps']:,} projected" if run["steps"] < run["total_steps"] else "")
        + f"; {out['threads']} thread(s), {device}" + _load_text(out["load_average"])
        + f"; model: {out['model_note']}")
    for preset in s.presets:
        nodes = temperature_nodes(preset, run["total_steps"], run["steps"])
        cases = {}
        for precision in s.precisions:
            for temp, _ in nodes:
                cases[_key(precision, temp)] = C.fondtrain_cycle(
                    projection_model(preset, s, device), x, s.varied(train_temp=temp), precision=precision)
        log(f"[{preset}] projection cycles ({len(cases)} candidates: {', '.join(s.precisions)} at "
            f"temperature {', '.join(f'{t:g}' for t, _ in nodes)}; {s.repeats} rounds)")
        times = harness.interleaved(cases, s.repeats)
        rows = {}
        for precision in s.precisions:
            at = {f"{t:g}": times[_key(precision, t)] for t, _ in nodes}
            cycle = sum(w * times[_key(precision, t)] for t, w in nodes)
            check = None if precision == "fp32" else (checks or {}).get(preset, {}).get(precision)
            rows[precision] = {
                "cycle_s": cycle, "cycle_at_temp_s": at, "samples_per_s": s.batch_size / cycle,
                "hours": run["steps"] * cycle / 3600,
                "check_passes": True if precision == "fp32" else None if check is None else check["passes"]}
        passing = [p for p in rows if rows[p]["check_passes"]]
        best = min(passing, key=lambda p: rows[p]["cycle_s"]) if passing else None
        entry = {"temperatures": [[t, w] for t, w in nodes], "precisions": rows, "best": best}
        goal = goal_for(preset, s, run, rows.get(best) if best else None, out["threads"])
        if goal:
            entry["goal"] = goal
        out["presets"][preset] = entry
        log(report.projection_lines(preset, entry, run))
    return out


def goal_for(preset: str, s: BenchSettings, run: dict, row: dict | None, threads: int) -> dict | None:
    """The issue's goal for `preset` against the best passing row: for the whole run of
    150,000 steps at vH16 sizes only."""
    vh16 = (s.batch_size, s.input_dim, s.n_latents, s.t_train) == (200, 256, 512, 16)
    if preset not in GOAL_HOURS or not vh16 or run["steps"] != run["total_steps"] or row is None:
        return None
    hours = GOAL_HOURS[preset]
    return {"hours": hours, "cycle_s": hours * 3600 / run["total_steps"], "threads": GOAL_THREADS,
            "met": row["hours"] <= hours, "measured_threads": threads}


def _load_text(load: list | None) -> str:
    """The machine's load average, which a wall-time projection depends on."""
    if not load:
        return ""
    return f" (load average {load[0]:.1f} on {os.cpu_count()} CPUs: a busier machine projects a slower run)"


def _key(precision: str, temp: float) -> str:
    return f"{precision} t={temp:g}"
