"""`run`: every case of one `fondtrain bench` call, in order, into one result (and file)."""

from __future__ import annotations

from dataclasses import asdict, replace

import torch

from fondtrain.bench import cases, harness, report
from fondtrain.bench.settings import ASSUMED_N_TRAIN, BenchSettings, use_checkpoint
from fondtrain.runtime import configure_cpu_process


def run(s: BenchSettings, out: str | None = None, log=print) -> dict:
    """Every figure of the benchmark; written to `out` when given (Markdown for a path
    ending in .md, JSON otherwise)."""
    configure_cpu_process()
    harness.set_threads(s.threads)
    if s.reference_dir:
        from fondtrain.bench.reference import load_reference

        load_reference(s.reference_dir)  # fail early on a wrong path
    if s.checkpoint:  # its sizes; figures about other sizes or processes do not apply
        s = replace(use_checkpoint(s), scaling=False, processes=(), memory=False)
    n_exp = "the checkpoint's" if s.checkpoint else s.n_exp
    log(f"fondtrain bench: B={s.batch_size} M={s.input_dim} K={s.n_latents} "
        f"t_train={s.t_train} n_exp={n_exp}, Poisson training temperature {s.train_temp}, "
        f"eval {s.eval_steps} steps, {s.repeats} rounds, "
        f"{torch.get_num_threads()} thread(s), device {harness.device()}, torch {torch.__version__}")
    results: dict = {"settings": {k: v for k, v in asdict(s).items() if k != "results"},
                     "threads": torch.get_num_threads(), "device": str(harness.device()),
                     "torch": torch.__version__}
    if s.population:
        results["population"] = cases.population_cycles(s, log)
    results["speed"] = cases.speed(s, log)
    if s.memory:
        results["memory_mb"] = cases.memory(s, log)
    if s.scaling:
        results["scaling"] = cases.scaling(s, log)
    if s.processes:
        results["processes"] = cases.processes(s, log)
    log(f"projection: {s.epochs} epochs x {s.n_train} training samples"
        + (" (assumed N; pass --n_train)" if s.n_train == ASSUMED_N_TRAIN else ""))
    if out:
        report.write(results, out)
    return results
