"""GPU check: every GPU figure this project needs, from one script, in at most 8 minutes on
one H100 or H200.

The day a GPU is lent, from the repository root, in an environment with fondtrain and a
CUDA build of torch (`FONDTRAIN_TORCH="torch --index-url https://download.pytorch.org/whl/cu128"
bash .ci/setup`, or `pip install -e .` where torch is already there):

    python benchmarks/gpu_check.py --out gpu_check_out       # ~5 minutes, at most --budget_s 480
    cat gpu_check_out/gpu_check.md                            # the section for benchmarks/RESULTS.md

It writes OUT/gpu_check.json (every figure, what was skipped and why, what failed) and
OUT/gpu_check.md (Markdown tables ready for RESULTS.md), after every part, so a run cut
short keeps what it measured. What it measures, at vH16 sizes (batch 200, M 256, K 512,
t_train 16, n_exp 10; medians of interleaved rounds, wall time with the GPU synchronised):

1. cycles: per preset, the matrix-product limits in float32 and bf16, and the training
   cycle (the trainer's own `train_batch`) eager and under bf16 autocast, each against
   its limit; precision_check: whether bf16 computes float32's loss and gradient
   (`fondtrain.bench.candidates.precision_check`);
2. eval: the T = 1000 evaluation of 200 inputs, every step and on the log grid;
3. population: cycles of P = 1, 16, 64 members against one member's cycle, per preset
   (and the projected 300-epoch sweep of P members);
4. projection: the paper's run (300 epochs of natural16) from eager ipvae cycles at the
   schedule's temperatures (`fondtrain bench`'s projection, float32 and bf16);
5. compiled: per preset, the cycle compiled (`model.enable_compile()`), with CUDA graphs
   (`enable_compile("reduce-overhead")`) and bf16 with CUDA graphs, timed with the eager
   one; a preset starts only if the training after it keeps its time;
6. training: 200 steps on one GPU through the real CLI: `fondtrain shard` natural16, then
   `fondtrain train ... --max_steps 100 --ckpt_every 50` (vH16 ipvae), killed with
   SIGKILL once its first checkpoint is complete, then the same command with
   --max_steps 200, which must resume from that checkpoint and finish on the GPU.

Goals it reports: the ipvae cycle <= 6 ms (its fastest variant); a population of 16 at
<= 2x one member's cycle.

A time budget (--budget_s, 480 by default) is checked before every part and every
preset's compiled variants: what would not fit is skipped and recorded with the reason;
a hard stop (faulthandler) ends a run that hangs 60 s past it. `--parts` runs some parts
only (e.g. `--parts compiled`).

--tiny: the same code paths on the CPU (or the GPU) at tiny sizes, in well under a
minute, for CI (tests/test_gpu_check.py), so that the script cannot rot: batch 8, K 12,
t_train 3, 20 evaluation steps; the training on digits (K 16), killed after its step-25
checkpoint and resumed to step 100, one thread. What the device cannot do (CUDA graphs on a
CPU) is recorded as skipped with the reason; on a CPU the compiled cycle is traced by
dynamo with its eager backend (inductor's code generation takes minutes on a small CPU).

Exit status: 0 when everything that ran worked (skips are not failures); 1 when something
that should work did not (a compiled cycle that fell back to eager, bf16 failing its
check, a training that did not resume from its checkpoint, ...), each reason printed and
in the JSON; 2 for a wrong flag.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from fondtrain.bench import candidates as C  # noqa: E402
from fondtrain.bench import harness, projection  # noqa: E402
from fondtrain.bench.cases import EVAL_PRODUCTS, TRAIN_PRODUCTS  # noqa: E402
from fondtrain.bench.settings import BenchSettings, bf16_is_fast  # noqa: E402

PRESETS = ("ipvae", "igvae", "igrelu")
GOAL_IPVAE_CYCLE_S = 6e-3  # the issue's GPU goal for one ipvae cycle (H100 / H200)
GOAL_POPULATION_16 = 2.0  # a population of 16 at <= 2x one member's cycle
# Seconds each part needs at least (full sizes on one H100, tiny sizes on a CPU): a part
# starts only when this much of the budget is left.
NEEDS = {"cycles": (30, 5), "precision_check": (15, 3), "eval": (30, 3), "population": (45, 5),
         "projection": (20, 3), "training": (150, 25), "compiled": (70, 6)}
VARIANTS = ("eager", "bf16", "compiled", "cudagraphs", "bf16_cudagraphs")
CKPT_RE = re.compile(r"resuming .* from (step-(\d+)) \(step (\d+)\)")
SPS_RE = re.compile(r"step ([\d,]+)/[\d,]+ .*sps=(\d+)")


class Check:
    """The run's results, skips and failures, written to OUT after every part."""

    def __init__(self, out: Path, budget_s: float, tiny: bool, settings: BenchSettings):
        self.out, self.budget_s, self.tiny, self.s = out, budget_s, tiny, settings
        self.start = time.monotonic()
        self.later = 0.0  # seconds the parts after the running one need (`run_parts`)
        self.device = harness.device()
        self.results: dict = {
            "mode": "tiny" if tiny else "full", "device": device_name(self.device),
            "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "budget_s": budget_s,
            "settings": {k: v for k, v in asdict(settings).items() if k != "results"},
            "threads": torch.get_num_threads(), "bf16_native": bf16_is_fast(self.device),
            "cycles": {}, "precision_check": {}, "eval": {}, "population": {}, "projection": None,
            "training": None, "compile_backend": None, "goals": {}, "skipped": [], "failures": [],
            "elapsed_s": 0.0}

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.start)

    def need(self, part: str) -> float:
        return NEEDS[part][1 if self.tiny else 0]

    def fits(self, part: str, what: str | None = None, reserve: float = 0.0) -> bool:
        """Whether `part` fits the budget with `reserve` seconds left over; if not, record
        the skip."""
        need = self.need(part)
        if self.left() >= need + reserve:
            return True
        kept = f" and {reserve:.0f} s kept for the parts after it" if reserve else ""
        self.skip(what or part, f"time budget: {max(self.left(), 0):.0f} s left of {self.budget_s:.0f} s, "
                                f"needs about {need:.0f} s{kept}")
        return False

    def skip(self, what: str, reason: str) -> None:
        self.results["skipped"].append({"what": what, "reason": reason})
        say(f"skipped {what}: {reason}")

    def fail(self, what: str, reason: str) -> None:
        self.results["failures"].append({"what": what, "reason": reason})
        say(f"FAILED {what}: {reason}")

    def part(self, name: str, fn) -> None:
        """Run one part if it fits; an exception is a failure of that part, not of the run."""
        if not self.fits(name):
            return
        say(f"== {name} ({self.left():.0f} s of the budget left)")
        try:
            fn(self)
        except Exception as exc:  # noqa: BLE001 - every error is reported, then the next part runs
            self.fail(name, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=6)}")
        self.write()

    def write(self) -> None:
        self.results["elapsed_s"] = time.monotonic() - self.start
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu_check.json").write_text(json.dumps(self.results, indent=1, default=str))
        (self.out / "gpu_check.md").write_text(markdown(self.results))


def say(text: str) -> None:
    print(text, flush=True)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        memory = torch.cuda.get_device_properties(device).total_memory / 2**30
        return f"{torch.cuda.get_device_name(device)} ({memory:.0f} GiB)"
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def settings_for(tiny: bool) -> BenchSettings:
    """vH16 sizes, or tiny ones."""
    if tiny:
        return BenchSettings(batch_size=8, input_dim=16, n_latents=12, t_train=3, eval_steps=20,
                             repeats=2, n_exp=4, population=(1, 16, 64), processes=(), scaling=False,
                             memory=False, precisions=("fp32", "bf16"))
    return BenchSettings(repeats=5, population=(1, 16, 64), processes=(), scaling=False, memory=False,
                         precisions=("fp32", "bf16"))


# ----------------------------------------------------------------------------- 1. cycles
def cycles(check: Check) -> None:
    """Per preset: limits (fp32, bf16), eager and bf16 cycles, interleaved."""
    s, device = check.s, check.device
    x = C.inputs(s, device)
    for preset in PRESETS:
        cases = {
            "limit_fp32": C.matmul_limit(s.batch_size, s.input_dim, s.n_latents, s.t_train, TRAIN_PRODUCTS, device),
            "limit_bf16": C.matmul_limit(s.batch_size, s.input_dim, s.n_latents, s.t_train, TRAIN_PRODUCTS, device,
                                         "bf16"),
            "eager": C.fondtrain_cycle(C.fondtrain_model(preset, s, None, device), x, s),
            "bf16": C.fondtrain_cycle(C.fondtrain_model(preset, s, None, device), x, s, precision="bf16"),
        }
        times = harness.interleaved(cases, s.repeats)
        row = check.results["cycles"].setdefault(preset, {})
        row.update({f"{k}_s": v for k, v in times.items()})
        say(f"  {preset}: eager {ms(times['eager'])} ms (limit {ms(times['limit_fp32'])} ms), bf16 "
            f"{ms(times['bf16'])} ms (limit {ms(times['limit_bf16'])} ms)")


def precision_check(check: Check) -> None:
    for preset in PRESETS:
        r = C.precision_check(preset, check.s, check.device, "bf16")
        check.results["precision_check"][preset] = r
        say(f"  {preset} bf16: loss within {r['loss_rel_diff']:.1e}, gradient within {r['grad_rel_diff']:.1e} "
            f"(bound {r['noise_share']:g} x {r['grad_noise_rel']:.2f}): {'passes' if r['passes'] else 'FAILS'}")
        if not r["passes"]:
            check.fail(f"precision check {preset} bf16", f"{r}")


def compiled(check: Check) -> None:
    """Per preset (budget allowing): the compiled variants, each compiled on a fresh
    dynamo cache, then timed with the eager cycle in the same rounds."""
    s, device = check.s, check.device
    x = C.inputs(s, device)
    traced_only = check.tiny and device.type == "cpu"
    check.results["compile_backend"] = "dynamo with its eager backend (tiny, CPU)" if traced_only else \
        "inductor (enable_compile)"
    for preset in PRESETS:
        if not check.fits("compiled", f"compiled cycles of {preset}", reserve=check.later):
            continue
        torch._dynamo.reset()
        cases = {"eager": C.fondtrain_cycle(C.fondtrain_model(preset, s, None, device), x, s)}
        row = check.results["cycles"].setdefault(preset, {})
        for variant, mode, precision in (("compiled", None, "fp32"), ("cudagraphs", "reduce-overhead", "fp32"),
                                         ("bf16_cudagraphs", "reduce-overhead", "bf16")):
            if mode == "reduce-overhead" and device.type != "cuda":
                check.skip(f"{preset} {variant}", "CUDA graphs need a CUDA device")
                continue
            try:
                run, first_s = compile_variant(preset, s, x, device, mode, precision, check.tiny)
            except Exception as exc:  # noqa: BLE001 - reported, the other variants go on
                check.fail(f"{preset} {variant}", f"{type(exc).__name__}: {str(exc)[:2000]}")
                continue
            cases[variant] = run
            row[f"{variant}_first_s"] = first_s
            say(f"  {preset} {variant}: first cycle (compiling) {first_s:.1f} s")
        times = harness.interleaved(cases, s.repeats)
        for variant, t in times.items():
            row[f"{variant}_s" if variant != "eager" else "eager_with_compiled_s"] = t
        say("  " + preset + ": " + ", ".join(f"{k} {ms(v)} ms" for k, v in times.items()))
        check.write()


def compile_variant(preset: str, s: BenchSettings, x: torch.Tensor, device: torch.device, mode: str | None,
                    precision: str, tiny: bool):
    """(the compiled cycle, seconds of its first call); raises where it does not compile
    or falls back to eager."""
    model = C.fondtrain_model(preset, s, None, device)
    if tiny and device.type == "cpu":
        from fondtrain.model import cycle

        # what enable_compile builds, traced by dynamo but run by its eager backend
        for limit in ("recompile_limit", "accumulated_recompile_limit"):
            config = torch._dynamo.config
            if hasattr(config, limit):
                setattr(config, limit, max(getattr(config, limit), cycle.RECOMPILE_LIMIT))
        model.compiled_cycle = torch.compile(cycle._graph_loop, backend="eager", fullgraph=True, dynamic=False)
    elif not model.enable_compile(mode):
        raise RuntimeError("torch.compile is not available (enable_compile returned False)")
    run = C.fondtrain_cycle(model, x, s, precision=precision)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first_s = harness.time_once(run)
        run()  # CUDA graph trees record on the first calls after compiling: warm them
        run()
    if model.compiled_cycle is None:
        raise RuntimeError("the compiled cycle fell back to eager: "
                           + " | ".join(str(w.message)[:300] for w in caught))
    return run, first_s


# ----------------------------------------------------------------------------- 2. evaluation
def evaluation(check: Check) -> None:
    s, device = check.s, check.device
    x = C.inputs(s, device)
    for preset in PRESETS:
        model = C.fondtrain_model(preset, s, None, device)
        times = harness.interleaved({
            "limit": C.matmul_limit(s.batch_size, s.input_dim, s.n_latents, s.eval_steps, EVAL_PRODUCTS, device),
            "every_step": C.eval_every_step(model, x, s.eval_steps),
            "log_grid": C.eval_log_grid(model, x, s.eval_steps)}, max(1, s.repeats - 2))
        check.results["eval"][preset] = {f"{k}_s": v for k, v in times.items()}
        say(f"  {preset}: {s.eval_steps} steps every step {times['every_step']:.2f} s, log grid "
            f"{times['log_grid']:.2f} s (limit {times['limit']:.2f} s)")


# ----------------------------------------------------------------------------- 3. population
def population(check: Check) -> None:
    s, device = check.s, check.device
    x = C.inputs(s, device)
    total = projection.paper_run(s)["total_steps"]  # the paper's run: 300 epochs of natural16
    for preset in PRESETS:
        single = C.fondtrain_cycle(C.fondtrain_model(preset, s, None, device), x, s)
        rows = check.results["population"].setdefault(preset, {})
        for p in s.population:
            batched = C.fondtrain_cycle(C.fondtrain_model(preset, s, None, device, n_members=p), x, s)
            times = harness.interleaved({"single": single, "population": batched}, s.repeats)
            rows[str(p)] = {"cycle_s": times["population"], "single_s": times["single"],
                            "over_single": times["population"] / times["single"],
                            "per_member": times["population"] / (p * times["single"]),
                            "projected_sweep_hours": total * times["population"] / 3600}
            say(f"  {preset} P={p}: {ms(times['population'])} ms, {rows[str(p)]['over_single']:.2f}x one "
                f"member's {ms(times['single'])} ms ({rows[str(p)]['per_member']:.3f} per member)")
            del batched
            if device.type == "cuda":
                torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- 4. projection
def projected(check: Check) -> None:
    s = check.s.varied(presets=("ipvae",), precisions=("fp32", "bf16"), repeats=max(1, check.s.repeats - 2))
    checks = {k: {"bf16": v} for k, v in check.results["precision_check"].items()}
    check.results["projection"] = projection.projection(s, checks, log=say)


# ----------------------------------------------------------------------------- 5. training
def training(check: Check) -> None:
    """shard, train to a first checkpoint, SIGKILL, resume to 200 steps: all through the CLI
    (in a temporary folder, removed afterwards; the logs' tails go to the JSON)."""
    work = Path(tempfile.mkdtemp(prefix="gpu_check_train_"))
    try:
        _training(check, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _training(check: Check, work: Path) -> None:
    tiny = check.tiny
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    if tiny and check.device.type == "cpu":
        env["OMP_NUM_THREADS"] = "1"  # a shared CI CPU: two OpenMP threads can be 10x slower than one
    cli = [sys.executable, "-m", "fondtrain.cli"]
    dataset = "digits" if tiny else "natural16"
    shards, runs, name = work / "shards", work / "runs", "gpu-check"
    record: dict = {"dataset": dataset, "work_dir": str(work)}
    check.results["training"] = record

    start = time.monotonic()
    build = subprocess.run(cli + ["shard", "--dataset", dataset, "--out", str(shards)], env=env,
                           capture_output=True, text=True, timeout=max(60, check.left()))
    record["shard_s"] = time.monotonic() - start
    if build.returncode:
        raise RuntimeError(f"fondtrain shard failed ({build.returncode}): {build.stderr[-2000:]}")
    sizes = (["--n_latents", "16", "--t_train", "3", "--batch_size", "32", "--epochs", "10"] if tiny else
             ["--n_latents", "512", "--t_train", "16", "--batch_size", "200", "--epochs", "300"])
    # tiny: 50 + 50 steps, checkpoints every 25 (the same code path, a few seconds)
    every, first_stop, last_stop = (25, 50, 100) if tiny else (50, 100, 200)
    record.update(ckpt_every=every, first_max_steps=first_stop, max_steps=last_stop)
    flags = ["train", "--dataset", dataset, "--model", "ipvae", *sizes, "--shards_root", str(shards),
             "--runs_root", str(runs), "--name", name, "--log_every", "25", "--eval_every", "0",
             "--ckpt_every", str(every)]
    ckpt_root = runs / name / "ckpt"

    # first run: until its first complete checkpoint, then SIGKILL
    log1 = work / "first.log"
    start = time.monotonic()
    with open(log1, "w") as out:
        proc = subprocess.Popen(cli + flags + ["--max_steps", str(first_stop)], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        first = None
        deadline = time.monotonic() + max(30.0, check.left())
        while time.monotonic() < deadline and proc.poll() is None:
            done = sorted(ckpt_root.glob("step-*/COMPLETE")) if ckpt_root.exists() else []
            if done:
                first = done[0].parent.name
                os.killpg(proc.pid, signal.SIGKILL)  # the process group this script started
                break
            time.sleep(0.02)
        else:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        rc1 = proc.wait()
    record.update(first_run_s=time.monotonic() - start, first_checkpoint=first, first_rc=rc1,
                  killed=rc1 == -signal.SIGKILL)
    text1 = log1.read_text()
    record["first_log_tail"] = text1[-1500:]
    if first is None:
        raise RuntimeError(f"the first run ended (status {rc1}) without a complete checkpoint:\n{text1[-2000:]}")
    if rc1 != -signal.SIGKILL:
        raise RuntimeError(f"the first run was not killed (status {rc1}): it ended before the kill")
    say(f"  first run: killed (SIGKILL) after {first} in {record['first_run_s']:.1f} s")

    # second run: the same command to last_stop steps, which must resume from the checkpoint
    start = time.monotonic()
    second = subprocess.run(cli + flags + ["--max_steps", str(last_stop)], env=env, capture_output=True, text=True,
                            timeout=max(60, check.left() + 30))
    record["second_run_s"] = time.monotonic() - start
    text2 = second.stdout + second.stderr
    record["second_log_tail"] = text2[-2500:]
    record["second_rc"] = second.returncode
    if second.returncode:
        raise RuntimeError(f"the resumed run failed (status {second.returncode}):\n{text2[-2000:]}")
    found = CKPT_RE.search(text2)
    record["resumed_from"] = found.group(1) if found else None
    record["resumed_step"] = int(found.group(3)) if found else None
    final = ckpt_root / f"step-{last_stop:08d}" / "COMPLETE"
    record["final_checkpoint"] = final.is_file()
    rates = [(int(step.replace(",", "")), float(v)) for step, v in SPS_RE.findall(text2)]
    steady = [v for step, v in rates[1:]] or [v for _, v in rates]
    record["samples_per_s"] = statistics.median(steady) if steady else None
    on_device = f"device: {check.device.type}" in text2
    record["device_line_ok"] = on_device
    if found is None or record["resumed_step"] < every:
        raise RuntimeError(f"the second run did not resume from the checkpoint ({first}):\n{text2[-2000:]}")
    if not final.is_file():
        raise RuntimeError(f"the resumed run left no complete {final.parent.name} checkpoint")
    if not on_device:
        raise RuntimeError(f"the training did not say it ran on {check.device.type}:\n{text2[:1500]}")
    say(f"  resumed from {record['resumed_from']} to step {last_stop} in {record['second_run_s']:.1f} s "
        f"({record['samples_per_s']} samples/s)")


# ----------------------------------------------------------------------------- goals, report
def goals(check: Check) -> None:
    r = check.results
    if check.tiny:
        r["goals"] = {"note": "tiny sizes: the goals are about vH16 sizes on a GPU"}
        return
    ipvae = r["cycles"].get("ipvae", {})
    timed = {v: ipvae[f"{v}_s"] for v in VARIANTS if f"{v}_s" in ipvae}
    if timed:
        best = min(timed, key=timed.get)
        r["goals"]["ipvae_cycle"] = {"goal_s": GOAL_IPVAE_CYCLE_S, "best_variant": best, "best_s": timed[best],
                                     "met": timed[best] <= GOAL_IPVAE_CYCLE_S}
    p16 = r["population"].get("ipvae", {}).get("16")
    if p16:
        r["goals"]["population_16"] = {"goal_over_single": GOAL_POPULATION_16, "over_single": p16["over_single"],
                                       "met": p16["over_single"] <= GOAL_POPULATION_16}


def ms(seconds: float) -> str:
    return f"{1e3 * seconds:,.1f}"


def markdown(r: dict) -> str:
    """The results as a RESULTS.md section."""
    s = r["settings"]
    lines = [f"### GPU check ({r['mode']}): {r['device']}, {r['date']}", "",
             f"`python benchmarks/gpu_check.py{' --tiny' if r['mode'] == 'tiny' else ''}`; torch {r['torch']} "
             f"(CUDA {r['cuda']}); B={s['batch_size']}, M={s['input_dim']}, K={s['n_latents']}, "
             f"t_train={s['t_train']}, n_exp={s['n_exp']}; medians of {s['repeats']} interleaved rounds; "
             f"{r['elapsed_s']:.0f} s of a {r['budget_s']:.0f} s budget.", "",
             "Training cycle, ms (x its matmul limit):", "",
             "| preset | limit fp32 | limit bf16 | eager | bf16 | compiled | CUDA graphs | bf16 + CUDA graphs "
             "| bf16 check |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    def cell(c: dict, variant: str, limit: str) -> str:
        t = c.get(f"{variant}_s")
        return "-" if t is None or f"{limit}_s" not in c else f"{ms(t)} ({t / c[f'{limit}_s']:.1f}x)"

    for preset, c in r["cycles"].items():
        check = r["precision_check"].get(preset)
        verdict = "-" if check is None else ("passes" if check["passes"] else "**fails**")
        lines.append(f"| {preset} | {ms(c['limit_fp32_s']) if 'limit_fp32_s' in c else '-'} | "
                     f"{ms(c['limit_bf16_s']) if 'limit_bf16_s' in c else '-'} | {cell(c, 'eager', 'limit_fp32')} | "
                     f"{cell(c, 'bf16', 'limit_bf16')} | {cell(c, 'compiled', 'limit_fp32')} | "
                     f"{cell(c, 'cudagraphs', 'limit_fp32')} | {cell(c, 'bf16_cudagraphs', 'limit_bf16')} | "
                     f"{verdict} |")
    firsts = [f"{p} {v} {c[f'{v}_first_s']:.0f} s" for p, c in r["cycles"].items() for v in VARIANTS
              if f"{v}_first_s" in c]
    if firsts:
        lines += ["", "First compiled cycles (compiling): " + ", ".join(firsts) + "."]
    same = [f"{p} {v} {c[f'{v}_s'] / c['eager_with_compiled_s']:.2f}x" for p, c in r["cycles"].items()
            for v in VARIANTS[2:] if f"{v}_s" in c and "eager_with_compiled_s" in c]
    if same:
        lines += ["", "Compiled over eager, timed in the same rounds: " + ", ".join(same)
                  + f" (compiled by {r.get('compile_backend')})."]
    if r["eval"]:
        lines += ["", f"Evaluation, {s['eval_steps']} steps on {s['batch_size']} inputs, s:", "",
                  "| preset | every step | log grid | matmul limit |", "|---|---:|---:|---:|"]
        lines += [f"| {p} | {e['every_step_s']:.2f} | {e['log_grid_s']:.2f} | {e['limit_s']:.2f} |"
                  for p, e in r["eval"].items()]
    if r["population"]:
        lines += ["", "Population cycles (eager):", "",
                  "| preset | P | cycle ms | one member's ms | cycle / one member's | per member | "
                  "projected 300-epoch sweep h |", "|---|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {preset} | {p} | {ms(v['cycle_s'])} | {ms(v['single_s'])} | {v['over_single']:.2f} | "
                  f"{v['per_member']:.3f} | {v['projected_sweep_hours']:.1f} |"
                  for preset, rows in r["population"].items() for p, v in rows.items()]
    proj = r.get("projection")
    if proj:
        run = proj["run"]
        lines += ["", f"Projected paper's run ({run['total_steps']:,} steps; {proj['model_note']}):", "",
                  "| preset | precision | mean cycle ms | samples/s | projected h |", "|---|---|---:|---:|---:|"]
        lines += [f"| {preset} | {prec} | {ms(v['cycle_s'])} | {v['samples_per_s']:,.0f} | {v['hours']:.2f} |"
                  for preset, e in proj["presets"].items() for prec, v in e["precisions"].items()]
    t = r.get("training")
    if t:
        lines += ["", "Training through the CLI (one process): "
                  + (f"{t['dataset']} shards built in {t.get('shard_s', 0):.0f} s; first run killed (SIGKILL) after "
                     f"{t.get('first_checkpoint')} ({t.get('first_run_s', 0):.0f} s); resumed from "
                     f"{t.get('resumed_from')} to step {t.get('max_steps')} in {t.get('second_run_s', 0):.0f} s, "
                     f"{t.get('samples_per_s')} samples/s; final checkpoint "
                     f"{'written' if t.get('final_checkpoint') else 'MISSING'}.")]
    for name, g in r["goals"].items():
        if name == "ipvae_cycle":
            lines += ["", f"Goal: ipvae cycle <= {ms(g['goal_s'])} ms: {'met' if g['met'] else '**not met**'} "
                      f"(best: {g['best_variant']}, {ms(g['best_s'])} ms)."]
        elif name == "population_16":
            lines += ["", f"Goal: population of 16 <= {g['goal_over_single']:g}x one member's cycle: "
                      f"{'met' if g['met'] else '**not met**'} ({g['over_single']:.2f}x)."]
        elif name == "note":
            lines += ["", f"Goals: {g}."]
    if r["skipped"]:
        lines += ["", "Skipped: " + "; ".join(f"{k['what']} ({k['reason']})" for k in r["skipped"]) + "."]
    if r["failures"]:
        lines += ["", "**Failed**: " + "; ".join(f"{k['what']}: {k['reason'].splitlines()[0]}"
                                                 for k in r["failures"]) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (CI, CPU): the same code paths")
    parser.add_argument("--budget_s", type=float, default=None,
                        help="time budget in seconds (default 480; tiny: 600, everything runs)")
    parser.add_argument("--parts", default="cycles,precision_check,eval,population,projection,compiled,training",
                        help="comma-separated parts to run, in this order (compiled keeps the time the "
                             "parts after it need)")
    args = parser.parse_args(argv)
    budget = args.budget_s if args.budget_s is not None else (600.0 if args.tiny else 480.0)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    known = {"cycles": cycles, "precision_check": precision_check, "eval": evaluation, "population": population,
             "projection": projected, "training": training, "compiled": compiled}
    unknown = [p for p in parts if p not in known]
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}: choose from {', '.join(known)}")
    if not args.tiny and not torch.cuda.is_available():
        say("gpu_check: no CUDA device here: run it on a GPU, or pass --tiny for the CPU smoke test")
        return 2
    # a hang past the budget ends the run, loudly (traceback, status 1)
    faulthandler.dump_traceback_later(budget + 60, exit=True, file=sys.__stderr__)
    try:
        return run_parts(args, budget, [(p, known[p]) for p in parts])
    finally:
        faulthandler.cancel_dump_traceback_later()


def run_parts(args, budget: float, parts: list) -> int:
    """Every part of `parts` ([(name, function)]) in order; the exit status."""
    from fondtrain.runtime import configure_cpu_process

    configure_cpu_process()
    if args.tiny and not torch.cuda.is_available():
        torch.set_num_threads(1)  # CI's CPU is small and shared
    check = Check(args.out, budget, args.tiny, settings_for(args.tiny))
    say(f"gpu_check ({check.results['mode']}): {check.results['device']}, torch {torch.__version__}, "
        f"budget {budget:.0f} s, out {args.out}")
    check.write()
    for i, (name, fn) in enumerate(parts):
        check.later = sum(check.need(later) for later, _ in parts[i + 1:])
        check.part(name, fn)
    goals(check)
    check.write()
    say(f"wrote {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'} "
        f"({check.results['elapsed_s']:.0f} s)")
    if check.results["failures"]:
        say("gpu_check FAILED: " + "; ".join(f"{f['what']}: {f['reason'].splitlines()[0]}"
                                              for f in check.results["failures"]))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
