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


def write(results: dict, out: str) -> None:
    """`results` to `out`: Markdown tables for a path ending in .md, JSON otherwise."""
    text = markdown(results) if out.endswith(".md") else json.dumps(results, indent=1)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text)


def markdown(results: dict) -> str:
    """Every table of a `suite.run` result."""
    parts = [_header(results), _cycle_table(results), _eval_table(results)]
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
            f"torch {results['torch']}; medians of {s['repeats']} interleaved rounds.")


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
