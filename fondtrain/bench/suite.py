"""`run`: every case of one `fondtrain bench` call, in order, into one result (and file)."""

from __future__ import annotations

from dataclasses import asdict, replace

import torch

from fondtrain.bench import cases, harness, report
from fondtrain.bench.projection import paper_run, projection
from fondtrain.bench.settings import (
    BenchSettings,
    bf16_is_fast,
    check_precisions,
    default_precisions,
    use_checkpoint,
)
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
    s, precision_note = with_precisions(s)
    run_facts = paper_run(s)
    s = replace(s, n_train=run_facts["n_train"])
    n_exp = "the checkpoint's" if s.checkpoint else s.n_exp
    log(f"fondtrain bench: B={s.batch_size} M={s.input_dim} K={s.n_latents} "
        f"t_train={s.t_train} n_exp={n_exp}, Poisson training temperature {s.train_temp}, "
        f"eval {s.eval_steps} steps, {s.repeats} rounds, "
        f"{torch.get_num_threads()} thread(s), device {harness.device()}, torch {torch.__version__}; "
        f"precisions {precision_note}")
    results: dict = {"settings": {k: v for k, v in asdict(s).items() if k != "results"},
                     "threads": torch.get_num_threads(), "device": str(harness.device()),
                     "torch": torch.__version__, "precisions": list(s.precisions),
                     "precision_note": precision_note, "n_train_source": run_facts["n_train_source"]}
    if s.population:
        results["population"] = cases.population_cycles(s, log)
    checks = cases.precision_checks(s, log) if any(p != "fp32" for p in s.precisions) else {}
    if checks:
        results["precision_check"] = checks
    results["speed"] = cases.speed(s, log)
    if s.projection:
        results["projection"] = projection(s, checks, log, run_facts)
    if s.memory:
        results["memory_mb"] = cases.memory(s, log)
    if s.scaling:
        results["scaling"] = cases.scaling(s, log)
    if s.processes:
        results["processes"] = cases.processes(s, log)
    log(f"training samples per epoch: {s.n_train:,} ({run_facts['n_train_source']})")
    if out:
        report.write(results, out)
    return results


def with_precisions(s: BenchSettings) -> tuple[BenchSettings, str]:
    """The settings with their precisions decided (given ones checked, else the device's
    default) and a note saying which and why."""
    device = harness.device()
    fast = bf16_is_fast(device)
    where = "this GPU" if device.type == "cuda" else "this CPU"
    if s.precisions:
        chosen = check_precisions(s.precisions)
        if "fp32" not in chosen:
            chosen = ("fp32", *chosen)  # float32 is every table's baseline
        slow = "bf16" in chosen and not fast
        note = ", ".join(chosen) + (" (as asked; bf16 is emulated, not native, on " + where + ")" if slow
                                    else " (as asked)")
    else:
        chosen = default_precisions(device)
        note = ", ".join(chosen) + (f" (bf16: {where} multiplies bfloat16 in hardware)" if fast else
                                    f" (no bf16: {where} has no native bfloat16 products; "
                                    "--precision fp32,bf16 times it anyway)")
    return replace(s, precisions=chosen), note
