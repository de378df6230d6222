"""The benchmark's cases, one function each, returning JSON-ready figures:

- `speed`: per preset, the training cycle (and `compiled_cycle` when asked, and the cycle
  under bf16 autocast beside the bf16 limit when s.precisions has bf16) and T-step
  evaluation against their matrix-product limits and, with a reference checkout, the
  reference's; the projected time of a full run (epochs x N_train / samples/s);
- `precision_checks`: per preset, whether a bf16 cycle computes float32's loss and
  gradient (`candidates.precision_check`);
- `projection` (projection.py): the paper's run on this machine, per preset and precision;
- `scaling`: the ipvae cycle as K, batch and t_train vary one at a time;
- `memory`: the peak memory of one cycle and the bytes autograd saves for it, each
  implementation and preset in a fresh process (`jobs.memory_job`);
- `processes`: ipvae samples/s with 1 and 2 data-parallel processes (`jobs.ddp_job`);
- `population_cycles`: a cycle of P members in one process against P single cycles.

The limit: a step needs 3 products of [B, K] x [K, M] size forward (decode for the
reconstruction gradient, its transpose, decode of the output sample) and about twice
that backward: 9 per training step, 3 per evaluation step.
"""

from __future__ import annotations

import os

import torch

from fondtrain.bench import candidates as C
from fondtrain.bench import harness, report
from fondtrain.bench.settings import BenchSettings

TRAIN_PRODUCTS, EVAL_PRODUCTS = 9, 3  # [B, K] x [K, M] products per step (see above)


def speed(s: BenchSettings, log=print) -> dict:
    """Cycle and evaluation times of every preset, their limits and the reference's."""
    device = harness.device()
    x = C.inputs(s, device)
    out: dict = {}
    for preset in s.presets:
        ours, ref_model, ref = C.paired_models(preset, s, device)
        cases = {
            "limit_cycle": C.matmul_limit(s.batch_size, s.input_dim, s.n_latents, s.t_train,
                                          TRAIN_PRODUCTS, device),
            "fondtrain_cycle": C.fondtrain_cycle(ours, x, s),
        }
        for precision in (p for p in s.precisions if p != "fp32"):
            cases[f"limit_cycle_{precision}"] = C.matmul_limit(
                s.batch_size, s.input_dim, s.n_latents, s.t_train, TRAIN_PRODUCTS, device, precision)
            cases[f"fondtrain_cycle_{precision}"] = C.fondtrain_cycle(
                C.paired_models(preset, s, device)[0], x, s, precision=precision)
        if ref_model is not None:
            cases["reference_cycle"] = C.reference_cycle(ref_model, ref, x, s)
        compiled = compiled_cycle(preset, s, x, log) if s.compile else None
        if compiled is not None:
            cases["fondtrain_compiled_cycle"] = compiled[0]
        log(f"[{preset}] training cycle ({len(cases)} candidates x {s.repeats} rounds)")
        cycle = harness.interleaved(cases, s.repeats)
        # evaluation: fresh copies of the same starting parameters
        ours_eval, ref_eval, _ = C.paired_models(preset, s, device)
        cases = {
            "limit_eval": C.matmul_limit(s.batch_size, s.input_dim, s.n_latents, s.eval_steps,
                                         EVAL_PRODUCTS, device),
            "fondtrain_eval": C.eval_every_step(ours_eval, x, s.eval_steps),
            "fondtrain_eval_log_grid": C.eval_log_grid(ours_eval, x, s.eval_steps),
        }
        if ref_eval is not None:
            cases["reference_eval"] = C.reference_eval(ref_eval, x, s.eval_steps)
        log(f"[{preset}] {s.eval_steps} evaluation steps ({len(cases)} candidates x "
            f"{s.repeats} rounds)")
        row = {**cycle, **harness.interleaved(cases, s.repeats)}
        if compiled is not None:
            row["compile_first_cycle_s"] = compiled[1]
        out[preset] = derived(row, s)
        log(report.speed_lines(preset, out[preset], s))
    return out


def derived(row: dict, s: BenchSettings) -> dict:
    """`row`'s times with samples/s, multiples of the limit, speed-ups and projections."""
    run_samples = s.epochs * s.n_train
    row["fondtrain_samples_per_s"] = s.batch_size / row["fondtrain_cycle"]
    row["fondtrain_cycle_over_limit"] = row["fondtrain_cycle"] / row["limit_cycle"]
    row["fondtrain_eval_over_limit"] = row["fondtrain_eval"] / row["limit_eval"]
    row["projected_run_hours"] = run_samples / row["fondtrain_samples_per_s"] / 3600
    for precision in (p for p in s.precisions if p != "fp32"):
        if f"fondtrain_cycle_{precision}" in row:
            cycle, limit = row[f"fondtrain_cycle_{precision}"], row[f"limit_cycle_{precision}"]
            row[f"fondtrain_cycle_{precision}_over_limit"] = cycle / limit  # its own precision's limit
            row[f"{precision}_cycle_speedup"] = row["fondtrain_cycle"] / cycle
            row[f"{precision}_limit_speedup"] = row["limit_cycle"] / limit
    if "reference_cycle" in row:
        row["reference_samples_per_s"] = s.batch_size / row["reference_cycle"]
        row["reference_cycle_over_limit"] = row["reference_cycle"] / row["limit_cycle"]
        row["reference_eval_over_limit"] = row["reference_eval"] / row["limit_eval"]
        row["cycle_speedup"] = row["reference_cycle"] / row["fondtrain_cycle"]
        row["eval_speedup"] = row["reference_eval"] / row["fondtrain_eval"]
        row["eval_log_grid_speedup"] = row["reference_eval"] / row["fondtrain_eval_log_grid"]
        row["reference_projected_run_hours"] = run_samples / row["reference_samples_per_s"] / 3600
    return row


def precision_checks(s: BenchSettings, log=print) -> dict:
    """Per preset and precision other than fp32: `candidates.precision_check` (a cycle's
    loss and gradient against float32's from the same parameters and noise)."""
    device = harness.device()
    out: dict = {}
    for preset in s.presets:
        for precision in (p for p in s.precisions if p != "fp32"):
            r = C.precision_check(preset, s, device, precision)
            out.setdefault(preset, {})[precision] = r
            log(f"  {preset} {precision} check: {report.check_text(r)}")
    return out


def compiled_cycle(preset: str, s: BenchSettings, x: torch.Tensor, log=print):
    """(the compiled training cycle, seconds of its first call) or None where compiling
    failed: the same cycle (`train_batch`) with `model.enable_compile` (the whole TBPTT
    cycle as one graph); `speed` times it against the eager cycle in the same rounds."""
    # one compiled model per process in training; here presets follow each other, so
    # start each from an empty dynamo cache (no recompile limit across models)
    torch._dynamo.reset()
    model = C.paired_models(preset, s, harness.device())[0]
    if not model.enable_compile(s.compile_mode):
        log(f"[{preset}] torch.compile is not available here: eager only")
        return None
    run = C.fondtrain_cycle(model, x, s)
    first_s = harness.time_once(run)
    log(f"[{preset}] torch.compile: first cycle {first_s:.1f} s")
    if model.compiled_cycle is None:  # it fell back to eager during the first cycle
        return None
    return run, first_s


def population_cycles(s: BenchSettings, log=print) -> dict:
    """The cycle of P members in one process (P in s.population) over P x the single-model
    cycle, each preset: the per-member cost of batching members (1: no loss, < 1: a gain).
    Each round brackets the population cycle with P single cycles (`harness.bracketed_ratio`),
    so that both see the same stretch of a shared machine; the ratio is the rounds' median."""
    device = harness.device()
    x = C.inputs(s, device)
    out: dict = {}
    for preset in s.presets:
        single = C.fondtrain_cycle(C.fondtrain_model(preset, s, None, device), x, s)
        rows = {}
        for p in s.population:
            population = C.fondtrain_cycle(C.fondtrain_model(preset, s, None, device, n_members=p), x, s)
            r = harness.bracketed_ratio(single, population, p, s.repeats)
            rows[p] = {"cycle_s": r["batched_s"], "single_s": r["single_s"],
                       "per_member": r["ratio"], "per_member_min": r["ratio_min"],
                       "per_member_max": r["ratio_max"]}
            log(f"  {preset} P={p}: cycle {1e3 * r['batched_s']:.0f} ms, single "
                f"{1e3 * r['single_s']:.0f} ms; per member {r['ratio']:.3f}x a single run's "
                f"(rounds {r['ratio_min']:.3f}-{r['ratio_max']:.3f})")
        out[preset] = rows
    return out


def scaling(s: BenchSettings, log=print) -> list[dict]:
    """ipvae cycle time and its limit as K, batch and t_train vary one at a time."""
    device = harness.device()
    variants = [("n_latents", v) for v in (256, 512, 1024)] + \
               [("batch_size", v) for v in (100, 400)] + [("t_train", v) for v in (8, 32)]
    rows = []
    for name, value in variants:
        v = s.varied(**{name: value})
        x = C.inputs(v, device)
        model = C.fondtrain_model("ipvae", v, None, device)
        times = harness.interleaved({
            "limit": C.matmul_limit(v.batch_size, v.input_dim, v.n_latents, v.t_train,
                                    TRAIN_PRODUCTS, device),
            "cycle": C.fondtrain_cycle(model, x, v),
        }, max(1, s.repeats - 1))
        row = {"vary": name, "value": value, "cycle_s": times["cycle"], "limit_s": times["limit"],
               "over_limit": times["cycle"] / times["limit"],
               "samples_per_s": v.batch_size / times["cycle"]}
        rows.append(row)
        log(f"  ipvae {name}={value}: cycle {1e3 * row['cycle_s']:.0f} ms, "
            f"{row['samples_per_s']:.0f} samples/s, {row['over_limit']:.2f}x limit")
    return rows


def memory(s: BenchSettings, log=print) -> dict:
    """Peak memory of one training cycle per preset and implementation, each in a fresh
    process (CPU: growth of the peak resident set over the set-up; GPU: the allocator's peak)."""
    out: dict = {}
    impls = ["fondtrain"] + (["reference"] if s.reference_dir else [])
    for preset in s.presets:
        for impl in impls:
            out.setdefault(preset, {})[impl] = harness.run_job(
                ["memory", s.to_json(), impl, preset])
        line = "; ".join(f"{k} peak {v['peak_mb']:.0f} MB, saved for backward {v['saved_mb']:.0f} MB"
                         for k, v in out[preset].items())
        log(f"  {preset} memory of a cycle: {line}")
    return out


def processes(s: BenchSettings, log=print) -> dict:
    """Samples/s of ipvae cycles with 1 and 2 data-parallel processes (same global batch,
    split over ranks; CPU: gloo DDP through `accelerate launch`, cores split evenly)."""
    out: dict = {}
    cores = os.cpu_count() or 1
    for n in s.processes:
        threads = max(1, cores // n)
        env = {"OMP_NUM_THREADS": str(threads),
               "ACCELERATE_USE_CPU": "0" if torch.cuda.is_available() else "1"}
        r = harness.run_job(["ddp", s.to_json()], env, processes=n)
        out[str(n)] = r
        log(f"  {n} process(es) x {threads} thread(s): cycle {1e3 * r['cycle_s']:.0f} ms, "
            f"{r['samples_per_s']:.0f} samples/s (global batch {s.batch_size})")
    return out
