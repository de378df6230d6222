"""The benchmark's figures as text: progress lines while it runs, Markdown tables (for
benchmarks/RESULTS.md) or JSON at the end."""

from __future__ import annotations

import json
from pathlib import Path


def _ms(seconds: float) -> str:
    return f"{1e3 * seconds:,.0f}"


def speed_lines(preset: str, r: dict, s) -> str:
    """One preset's `cases.speed` row as a few readable lines."""
    lines = [f"  {preset}: cycle {1e3 * r['fondtrain_cycle']:.0f} ms "
             f"({r['fondtrain_samples_per_s']:.0f} samples/s, {r['fondtrain_cycle_over_limit']:.2f}x "
             f"the matmul limit {1e3 * r['limit_cycle']:.0f} ms); eval {s.eval_steps} steps "
             f"{r['fondtrain_eval']:.2f} s ({r['fondtrain_eval_over_limit']:.2f}x limit "
             f"{r['limit_eval']:.2f} s), log grid {r['fondtrain_eval_log_grid']:.2f} s; "
             f"{s.epochs} epochs x {s.n_train} samples: {r['projected_run_hours']:.1f} h"]
    for precision in _low_precisions(r):
        lines.append(f"  {preset} {precision} (autocast): cycle {1e3 * r[f'fondtrain_cycle_{precision}']:.0f} ms "
                     f"(float32 / {precision}: {r[f'{precision}_cycle_speedup']:.2f}x), "
                     f"{r[f'fondtrain_cycle_{precision}_over_limit']:.2f}x the {precision} matmul limit "
                     f"{1e3 * r[f'limit_cycle_{precision}']:.0f} ms (float32 / {precision}: "
                     f"{r[f'{precision}_limit_speedup']:.2f}x)")
    if "fondtrain_compiled_cycle" in r:
        lines.append(f"  {preset} compiled: cycle {1e3 * r['fondtrain_compiled_cycle']:.0f} ms "
                     f"({r['fondtrain_compiled_cycle'] / r['limit_cycle']:.2f}x limit; first cycle "
                     f"with compilation {r['compile_first_cycle_s']:.0f} s)")
    if "reference_cycle" in r:
        lines.append(f"  {preset} reference: cycle {1e3 * r['reference_cycle']:.0f} ms "
                     f"({r['reference_cycle_over_limit']:.2f}x limit), eval {r['reference_eval']:.2f} s"
                     f" -> fondtrain {r['cycle_speedup']:.2f}x faster per cycle, "
                     f"{r['eval_speedup']:.2f}x per evaluation ({r['eval_log_grid_speedup']:.2f}x "
                     f"on the log grid); reference run {r['reference_projected_run_hours']:.1f} h")
    return "\n".join(lines)


def _hours(hours: float) -> str:
    """A projected duration: minutes below 2 hours, else hours."""
    return f"{60 * hours:,.0f} min" if hours < 2 else f"{hours:,.1f} h"


def _low_precisions(r: dict) -> list[str]:
    """The precisions other than float32 whose cycle a `speed` row has."""
    return [k[len("fondtrain_cycle_"):] for k in r
            if k.startswith("fondtrain_cycle_") and f"limit_{k[len('fondtrain_'):]}" in r]


def check_text(r: dict) -> str:
    """A `candidates.precision_check` result in words."""
    verdict = "passes" if r["passes"] else "FAILS"
    return (f"{verdict}: loss within {r['loss_rel_diff']:.1e} of float32's (bound {r['loss_rtol']:.0e}), "
            f"gradient within {r['grad_rel_diff']:.1e} (bound {r['noise_share']:g} x {r['grad_noise_rel']:.2f}, "
            f"the distance between two noise draws' gradients)")


def projection_lines(preset: str, entry: dict, run: dict) -> str:
    """One preset's projection (`projection.projection`) as a line or two."""
    parts = []
    for precision, r in entry["precisions"].items():
        temps = ", ".join(f"{t}: {1e3 * v:.0f}" for t, v in r["cycle_at_temp_s"].items())
        check = {True: "", False: ", its precision check FAILED", None: ", not checked"}[r["check_passes"]]
        parts.append(f"{precision} {1e3 * r['cycle_s']:.0f} ms per cycle (at temperature {temps} ms)"
                     f" -> {r['samples_per_s']:.0f} samples/s, {_hours(r['hours'])}{check}")
    best = entry["best"]
    line = f"  {preset}: " + "; ".join(parts)
    if best:
        hours = entry["precisions"][best]["hours"]
        line += (f"\n  {preset}: {run['steps']:,} steps in {_hours(hours)} ({best}, the fastest precision "
                 "whose check passes)")
    goal = entry.get("goal")
    if goal:
        line += (f"; goal <= {goal['hours']:g} h ({1e3 * goal['cycle_s']:.0f} ms per cycle) on {goal['threads']} "
                 f"threads: {'met' if goal['met'] else 'NOT met'} with {goal['measured_threads']} thread(s)")
    return line


def write(results: dict, out: str) -> None:
    """`results` to `out`: Markdown tables for a path ending in .md, JSON otherwise."""
    text = markdown(results) if out.endswith(".md") else json.dumps(results, indent=1)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text)


def markdown(results: dict) -> str:
    """Every table of a `suite.run` result."""
    parts = [_header(results), _cycle_table(results), _eval_table(results)]
    if "precision_check" in results:
        parts.append(_check_table(results["precision_check"]))
    if "projection" in results:
        parts.append(_projection_table(results["projection"], results["settings"]))
    if "memory_mb" in results:
        parts.append(_memory_table(results["memory_mb"]))
    if "scaling" in results:
        parts.append(_scaling_table(results["scaling"]))
    if "processes" in results:
        parts.append(_process_table(results["processes"]))
    if "population" in results:
        parts.append(_population_table(results["population"]))
    return "\n\n".join(parts) + "\n"


def _header(results: dict) -> str:
    s = results["settings"]
    n_exp = f"the checkpoint's ({s['checkpoint']})" if s.get("checkpoint") else s["n_exp"]
    return (f"B={s['batch_size']}, M={s['input_dim']}, K={s['n_latents']}, t_train={s['t_train']}, "
            f"n_exp={n_exp}, Poisson training temperature {s.get('train_temp', 0.5)}; "
            f"{results['threads']} thread(s), {results['device']}, "
            f"torch {results['torch']}; medians of {s['repeats']} interleaved rounds"
            + (f"; precisions {results['precision_note']}" if "precision_note" in results else "") + ".")


def _cycle_table(results: dict) -> str:
    batch = results["settings"]["batch_size"]
    lines = ["| preset | cycle ms | samples/s | matmul limit ms | x limit | reference cycle ms "
             "| ref x limit | speed-up | projected run h (ref) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for preset, r in results["speed"].items():
        ref = "reference_cycle" in r
        lines.append(
            f"| {preset} | {_ms(r['fondtrain_cycle'])} | {r['fondtrain_samples_per_s']:,.0f} | "
            f"{_ms(r['limit_cycle'])} | {r['fondtrain_cycle_over_limit']:.2f} | "
            + (f"{_ms(r['reference_cycle'])} | {r['reference_cycle_over_limit']:.2f} | "
               f"**{r['cycle_speedup']:.2f}x** | {r['projected_run_hours']:,.1f} "
               f"({r['reference_projected_run_hours']:,.1f}) |" if ref else
               f"- | - | - | {r['projected_run_hours']:,.1f} |"))
        for precision in _low_precisions(r):
            cycle, limit = r[f"fondtrain_cycle_{precision}"], r[f"limit_cycle_{precision}"]
            lines.append(f"| {preset}, {precision} | {_ms(cycle)} | {batch / cycle:,.0f} | {_ms(limit)} | "
                         f"{cycle / limit:.2f} | | | | float32 / {precision}: cycle "
                         f"{r[f'{precision}_cycle_speedup']:.2f}x, limit {r[f'{precision}_limit_speedup']:.2f}x |")
        if "fondtrain_compiled_cycle" in r:
            compiled = r["fondtrain_compiled_cycle"]
            lines.append(f"| {preset}, compiled | {_ms(compiled)} | {batch / compiled:,.0f} | "
                         f"{_ms(r['limit_cycle'])} | {compiled / r['limit_cycle']:.2f} | | | "
                         + (f"{r['reference_cycle'] / compiled:.2f}x" if ref else "")
                         + f" | first cycle {r['compile_first_cycle_s']:.0f} s |")
    return "\n".join(lines)


def _eval_table(results: dict) -> str:
    s = results["settings"]
    lines = [f"Evaluation, {s['eval_steps']} steps at evaluation temperature on "
             f"{s['batch_size']} inputs (seconds):", "",
             "| preset | every step | x limit | log grid | matmul limit | reference | "
             "speed-up (every step) | speed-up (log grid) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for preset, r in results["speed"].items():
        ref = "reference_eval" in r
        lines.append(
            f"| {preset} | {r['fondtrain_eval']:.2f} | {r['fondtrain_eval_over_limit']:.2f} | "
            f"{r['fondtrain_eval_log_grid']:.2f} | {r['limit_eval']:.2f} | "
            + (f"{r['reference_eval']:.2f} | **{r['eval_speedup']:.2f}x** | "
               f"**{r['eval_log_grid_speedup']:.2f}x** |" if ref else "- | - | - |"))
    return "\n".join(lines)


def _check_table(checks: dict) -> str:
    lines = ["Precision check: one training cycle in the lower precision against float32's, from the "
             "same parameters and sampler noise (the largest over the draws; the gradient bound is "
             "0.1 x the distance between two noise draws' float32 gradients):", "",
             "| preset | precision | loss rel. difference | gradient rel. difference | gradient noise "
             "(two draws) | passes |", "|---|---|---:|---:|---:|---|"]
    lines += [f"| {preset} | {precision} | {r['loss_rel_diff']:.1e} | {r['grad_rel_diff']:.1e} | "
              f"{r['grad_noise_rel']:.2f} | {'yes' if r['passes'] else '**no**'} |"
              for preset, rows in checks.items() for precision, r in rows.items()]
    return "\n".join(lines)


def _projection_table(p: dict, s: dict) -> str:
    run = p["run"]
    steps = f"{run['steps']:,} steps" + (f" (the first of {run['total_steps']:,})"
                                          if run["steps"] < run["total_steps"] else "")
    lines = [f"Projected run: {run['epochs']} epochs x {run['n_train']:,} natural16 patches "
             f"({run['n_train_source']}), batch {run['batch_size']}: {steps}; B={s['batch_size']}, "
             f"M={s['input_dim']}, K={s['n_latents']}, t_train={s['t_train']}; {p['threads']} thread(s), "
             f"{p['device']}" + (f" at load average {p['load_average'][0]:.1f}" if p.get("load_average") else "")
             + f"; model: {p['model_note']}. The cycle is the mean over the schedule's "
             "temperatures (weights in brackets).", "",
             "| preset | precision | cycle ms at temperature (weight) | mean cycle ms | samples/s | "
             "projected | check | fastest passing |", "|---|---|---|---:|---:|---:|---|---|"]
    for preset, entry in p["presets"].items():
        weights = {f"{t:g}": w for t, w in entry["temperatures"]}
        for precision, r in entry["precisions"].items():
            temps = ", ".join(f"{t}: {1e3 * v:,.0f} ({weights[t]:.2f})" for t, v in r["cycle_at_temp_s"].items())
            check = {True: "passes", False: "**fails**", None: "-"}[r["check_passes"]]
            best = "**yes**" if entry["best"] == precision else ""
            lines.append(f"| {preset} | {precision} | {temps} | {_ms(r['cycle_s'])} | "
                         f"{r['samples_per_s']:,.0f} | {_hours(r['hours'])} | {check} | {best} |")
    goals = [(preset, e["goal"]) for preset, e in p["presets"].items() if "goal" in e]
    for preset, g in goals:
        lines.append("")
        lines.append(f"Goal: {preset} <= {g['hours']:g} h ({1e3 * g['cycle_s']:.0f} ms per cycle) on "
                     f"{g['threads']} threads: {'met' if g['met'] else '**not met**'} "
                     f"(measured with {g['measured_threads']} thread(s)).")
    return "\n".join(lines)


def _memory_table(memory: dict) -> str:
    lines = ["| preset | peak MB | saved for backward MB | reference peak MB | "
             "reference saved MB |", "|---|---:|---:|---:|---:|"]
    for preset, m in memory.items():
        f, r = m["fondtrain"], m.get("reference", {})
        lines.append(f"| {preset} | {f['peak_mb']:.0f} | {f['saved_mb']:.0f} | "
                     f"{r.get('peak_mb', float('nan')):.0f} | {r.get('saved_mb', float('nan')):.0f} |")
    return "\n".join(lines)


def _scaling_table(rows: list[dict]) -> str:
    lines = ["| ipvae, vary | value | cycle ms | samples/s | x limit |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['vary']} | {r['value']} | {_ms(r['cycle_s'])} | {r['samples_per_s']:,.0f} | "
              f"{r['over_limit']:.2f} |" for r in rows]
    return "\n".join(lines)


def _process_table(processes: dict) -> str:
    lines = ["| processes x threads | cycle ms | samples/s (global batch) |", "|---|---:|---:|"]
    lines += [f"| {n} x {r['threads']} | {_ms(r['cycle_s'])} | {r['samples_per_s']:,.0f} |"
              for n, r in processes.items()]
    return "\n".join(lines)


def _population_table(population: dict) -> str:
    lines = ["| preset | members P | cycle ms | single cycle ms | cycle / (P x single) | "
             "rounds' range |", "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {preset} | {p} | {_ms(r['cycle_s'])} | {_ms(r['single_s'])} | "
              f"{r['per_member']:.3f} | {r['per_member_min']:.3f}-{r['per_member_max']:.3f} |"
              for preset, rows in population.items() for p, r in rows.items()]
    return "\n".join(lines)
