"""`fondtrain bench`: training and inference speed of the vH16 configuration, against the
hardware limit of this machine and (with `--reference_dir`) the reference implementation.

Figures, all measured in one run with the candidates interleaved round by round (other
work on the machine shifts every candidate alike; medians over `repeats`):

- cycle: one TBPTT training cycle (t_train steps forward, backward, gradient clipping,
  one Adamax step), as `train/loop.py` runs it; samples/s = batch / cycle time;
- eval: T inference steps at evaluation temperature (Poisson 0, Gaussian 1) on `batch`
  inputs, reporting MSE and R^2 on every step (what the reference computes) and, for
  fondtrain, also on a log grid of steps only (SPEC 7);
- limit: the matrix products alone. A step needs 3 products of [B, K] x [K, M] size
  forward (decode for the reconstruction gradient, its transpose, decode of the output
  sample) and about twice that backward: 9 per training step, 3 per evaluation step. Each
  figure is also given as a multiple of its limit (1.0 = nothing but the products);
- memory of a cycle (one fresh process per figure): the peak (CPU: the resident set's
  high-water mark during the first cycle over its level before it; GPU, after a warm-up
  cycle: torch.cuda.max_memory_allocated over the memory allocated before it) and the
  bytes autograd saves for backward (exact);
- scaling of the cycle with K, batch and t_train, and 1 vs 2 data-parallel processes
  (CPU DDP through `accelerate launch`, same global batch);
- the projected time of a full run (epochs x N_train / samples/s).

The reference runs from the user's checkout (`fondtrain.bench_reference`), with the same
parameters as fondtrain (copied over), its own NVAE Adamax and its per-step host reads,
as its `Trainer.iteration` and `Trainer.xtract_ftr` do.
"""

from __future__ import annotations

import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from fondtrain.config import ModelConfig
from fondtrain.errors import UserError
from fondtrain.model import upstream
from fondtrain.model.vae import IterativeVAE

PRESETS = ("ipvae", "igvae", "igrelu")
# The reference's vH16 processed.npy patch count is stated neither in its code nor its
# README; the projection uses this many training patches unless --n_train is given.
ASSUMED_N_TRAIN = 1_000_000
EVAL_TEMP = {"ipvae": 0.0, "igvae": 1.0, "igrelu": 1.0}


@dataclass
class BenchSettings:
    presets: tuple[str, ...] = PRESETS
    batch_size: int = 200
    input_dim: int = 256
    n_latents: int = 512
    t_train: int = 16
    eval_steps: int = 1000
    repeats: int = 3
    n_exp: int = 10  # relaxed Poisson sampler length (both implementations; 10 at start)
    reference_dir: str | None = None
    threads: int = 0  # 0: torch's default
    scaling: bool = True
    processes: tuple[int, ...] = (1, 2)
    memory: bool = True
    n_train: int = ASSUMED_N_TRAIN
    epochs: int = 300
    seed: int = 0
    compile: bool = False  # also time the cycle with model.enable_compile() (torch.compile)
    compile_mode: str | None = None  # e.g. "reduce-overhead": CUDA graphs on GPU
    # Poisson training temperature of the cycles (Gaussian: 1). The reference's sampler
    # costs the same at any; fondtrain's CPU sampler less where entries finish early
    # (low rates, low temperature).
    train_temp: float = 0.5
    # a fondtrain run or checkpoint: time its trained parameters (and n_exp) instead of a
    # fresh initialisation; sizes and preset come from it
    checkpoint: str | None = None
    results: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- timing
def interleaved(cases: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each case; one warm-up call each, then `repeats` rounds in which
    every case runs once (so that a slow spell of the machine hits all of them)."""
    for fn in cases.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            _sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(v) for name, v in times.items()}


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ----------------------------------------------------------------------------- the limit
def matmul_limit(batch: int, input_dim: int, n_latents: int, n_steps: int, per_step: int,
                 device: torch.device) -> Callable[[], None]:
    """The matrix products of n_steps steps alone: per_step products of [B, K] x [K, M] size,
    in the three shapes a step uses (z W^T, e W, and the weight gradient e^T z)."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(input_dim, n_latents, generator=gen).to(device)
    z = torch.randn(batch, n_latents, generator=gen).to(device)
    e = torch.randn(batch, input_dim, generator=gen).to(device)
    shapes = (lambda: z @ w.T, lambda: e @ w, lambda: e.T @ z)

    def run() -> None:
        for _ in range(n_steps):
            for i in range(per_step):
                shapes[i % 3]()
    return run


# ----------------------------------------------------------------------------- fondtrain
def train_temp(preset: str, s: BenchSettings) -> float:
    return s.train_temp if preset == "ipvae" else 1.0


def use_checkpoint(s: BenchSettings) -> BenchSettings:
    """The settings with the preset and sizes of `s.checkpoint`'s model (no change without)."""
    if not s.checkpoint:
        return s
    from fondtrain.run_files import load_model

    model, _ = load_model(s.checkpoint)
    c = model.config
    return replace(s, presets=(c.preset,), input_dim=c.input_dim, n_latents=c.n_latents,
                   t_train=c.t_train)


def paired_models(preset: str, s: BenchSettings, device: torch.device):
    """(fondtrain model, reference model or None, reference namespace or None) with the
    same parameters: the reference's initialisation (n_exp = s.n_exp in both), or with a
    checkpoint its trained parameters and per-step n_exp in both."""
    ref_model = ref = None
    if not s.checkpoint:
        if s.reference_dir:
            ref_model, ref = reference_setup(s, preset, device)
        return fondtrain_model(preset, s, ref_model, device), ref_model, ref
    from fondtrain.run_files import load_model

    ours = load_model(s.checkpoint)[0].train().to(device)
    if s.reference_dir:
        ref_model, ref = reference_setup(s, preset, device)
        ref_model.load_state_dict({**ref_model.state_dict(), **upstream.state_dict_to_upstream(ours)})
        if ours.is_poisson:  # per step; a longer schedule repeats the last value
            n_exp, theirs = ref_model.layer.n_exp, ours.n_exp.to(ref_model.layer.n_exp)
            n_exp.fill_(int(theirs[-1]))
            n_exp[: len(theirs)] = theirs[: len(n_exp)]
    return ours, ref_model, ref


def fondtrain_model(preset: str, s: BenchSettings, ref_model=None,
                    device: torch.device | None = None) -> IterativeVAE:
    cfg = ModelConfig(preset=preset, input_dim=s.input_dim, n_latents=s.n_latents,
                      t_train=s.t_train, seed=s.seed)
    model = IterativeVAE(cfg)
    if ref_model is not None:  # the very same parameters as the reference model
        ours = upstream.state_dict_from_upstream(ref_model.state_dict())
        ours.pop("n_exp", None)
        model.load_state_dict(ours, strict=False)
    if model.is_poisson:
        model.n_exp.fill_(s.n_exp)
        model._n_exp_host = None
    return model.to(device or _device())


def fondtrain_cycle(model: IterativeVAE, x: torch.Tensor, s: BenchSettings) -> Callable[[], None]:
    """One training cycle as train/loop.py runs it (one process, no accumulation)."""
    opt = torch.optim.Adamax(model.parameters(), lr=5e-3, betas=(0.9, 0.999), eps=1e-8,
                             weight_decay=3e-4)
    temp = train_temp(model.config.preset, s)
    beta = model.config.beta_outer

    def run() -> None:
        state = model.init_state(x.shape[0])
        out = model(x, state, 0, model.config.t_train, temp, beta, 1.0)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 300.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return run


def _r2_mse(x: torch.Tensor, x_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    res = (x - x_hat).pow(2).sum(-1)
    tot = (x - x.mean(-1, keepdim=True)).pow(2).sum(-1)
    return (1.0 - res / (tot + 1.1920929e-07)).sum(), res.sum()


def fondtrain_eval_every_step(model: IterativeVAE, x: torch.Tensor, n_steps: int):
    """n_steps inference steps reporting MSE and R^2 on every step (device sums, read once)."""
    temp = EVAL_TEMP[model.config.preset]

    @torch.no_grad()
    def run():
        state = model.init_state(x.shape[0])
        sums = torch.zeros(n_steps, 2, device=x.device)
        for t in range(n_steps):
            out = model.step(x, state, temp, 0.0, 1.0, t)
            state = out.state
            sums[t, 0], sums[t, 1] = _r2_mse(x, out.x_hat)
        return sums.cpu()
    return run


def log_grid(n_steps: int) -> list[int]:
    """1, 2, 3, 5, 7, 10, 20, 30, 50, 70, 100, ... up to n_steps (1-based)."""
    steps, decade = set(), 1
    while decade <= n_steps:
        steps.update(m * decade for m in (1, 2, 3, 5, 7) if m * decade <= n_steps)
        decade *= 10
    return sorted(steps | {n_steps})


def fondtrain_eval_log_grid(model: IterativeVAE, x: torch.Tensor, n_steps: int):
    temp = EVAL_TEMP[model.config.preset]
    grid = log_grid(n_steps)

    def run():
        traces = model.infer(x, n_steps, temp, record_steps=grid, same_stream=False)
        res = (x - traces["x_hat"]).pow(2).sum(-1)
        return res.cpu()
    return run


# ----------------------------------------------------------------------------- reference
def reference_cycle(model, ref, x: torch.Tensor, s: BenchSettings) -> Callable[[], None]:
    """The reference's `Trainer.iteration` for one batch (stationary feeder, no warm-up):
    `_fun` per step with its host reads (loss.item(), rate.max().item()), then backward,
    clip (.item()), its NVAE Adamax step and `detach_inference_state`."""
    preset = "ipvae" if model.cfg.type == "poisson" else "igvae"
    optim = ref.Adamax(model.parameters(), lr=5e-3, betas=(0.9, 0.999), eps=1e-8,
                       weight_decay=3e-4)
    temp = train_temp(preset, s)
    beta = model.cfg.beta_outer
    scale = 256.0 / float(math.prod(model.cfg.input_sz))
    t_train = model.cfg.t_train

    def run() -> None:
        model.train()
        model.update_temp(temp)
        model.update_eps(1.0)
        optim.zero_grad()
        loss_seq, counter = 0, 0
        stats = []
        for t in range(t_train):
            model.update_time(t)
            output = model(x)
            loss = torch.mean(output["loss_recon"] + torch.sum(output["loss_kl"], dim=-1) * beta)
            loss = loss * scale
            loss_seq += loss
            counter += 1
            with torch.no_grad():
                stats.append(loss.item())
                if model.cfg.type == "poisson":
                    stats.append(output["posterior"].rate.max().item())
        (loss_seq / counter).backward()
        stats.append(torch.nn.utils.clip_grad_norm_(model.parameters(), 300.0).item())
        optim.step()
        optim.zero_grad()
        model.detach_inference_state()
    return run


def reference_eval(model, x: torch.Tensor, n_steps: int, save_freq: int = 100):
    """The reference's `Trainer.xtract_ftr` loop for one batch: per step `xtract_ftr` with
    u, du, samples, r2 and mse, their sums to numpy, u and samples every save_freq steps."""
    extras = ["u", "du", "samples", "r2", "mse"]

    @torch.no_grad()
    def run():
        model.eval()
        kept, sums = [], []
        for t in range(n_steps):
            model.update_time(t)
            output = model.xtract_ftr(x, return_extras=extras)
            norms = torch.linalg.norm(output["du"], dim=-1)
            sums.append((norms.sum().cpu().numpy(), output["r2"].sum().cpu().numpy(),
                         output["mse"].sum().cpu().numpy()))
            if t == 0 or (t + 1) % save_freq == 0:
                kept.append((output["u"].cpu().numpy(), output["samples"].cpu().numpy()))
        return sums
    return run


def reference_setup(s: BenchSettings, preset: str, device: torch.device):
    from fondtrain.bench_reference import reference_model

    model, ref = reference_model(s.reference_dir, preset, n_latents=s.n_latents,
                                 t_train=s.t_train, seed=s.seed,
                                 input_side=int(round(math.sqrt(s.input_dim))))
    if model.cfg.type == "poisson":
        model.layer.n_exp.fill_(s.n_exp)
    return model.to(device), ref


# ----------------------------------------------------------------------------- one job
def _inputs(s: BenchSettings, device: torch.device, batch: int | None = None) -> torch.Tensor:
    gen = torch.Generator().manual_seed(s.seed + 1)
    return torch.randn(batch or s.batch_size, s.input_dim, generator=gen).to(device)


def bench_speed(s: BenchSettings, log=print) -> dict:
    """Cycle and evaluation times of every preset, their limits and the reference's."""
    device = _device()
    x = _inputs(s, device)
    out: dict = {}
    for preset in s.presets:
        ours, ref_model, ref = paired_models(preset, s, device)
        cases = {
            "limit_cycle": matmul_limit(s.batch_size, s.input_dim, s.n_latents, s.t_train, 9, device),
            "fondtrain_cycle": fondtrain_cycle(ours, x, s),
        }
        if ref_model is not None:
            cases["reference_cycle"] = reference_cycle(ref_model, ref, x, s)
        compile_s = None
        if s.compile:
            # one compiled model per process in training; here presets follow each other,
            # so start each from an empty dynamo cache (no recompile limit across models)
            torch._dynamo.reset()
            compiled = paired_models(preset, s, device)[0]
            if compiled.enable_compile(s.compile_mode):
                first = fondtrain_cycle(compiled, x, s)
                start = time.perf_counter()
                first()
                _sync()
                compile_s = time.perf_counter() - start
                if compiled._compiled_update is not None:  # still compiled: it worked
                    cases["fondtrain_compiled_cycle"] = first
            log(f"[{preset}] torch.compile: first cycle {compile_s} s")
        log(f"[{preset}] training cycle ({len(cases)} candidates x {s.repeats} rounds)")
        cycle = interleaved(cases, s.repeats)
        # evaluation: fresh copies of the same starting parameters
        ours_eval, ref_eval, _ = paired_models(preset, s, device)
        cases = {
            "limit_eval": matmul_limit(s.batch_size, s.input_dim, s.n_latents, s.eval_steps, 3, device),
            "fondtrain_eval": fondtrain_eval_every_step(ours_eval, x, s.eval_steps),
            "fondtrain_eval_log_grid": fondtrain_eval_log_grid(ours_eval, x, s.eval_steps),
        }
        if ref_eval is not None:
            cases["reference_eval"] = reference_eval(ref_eval, x, s.eval_steps)
        log(f"[{preset}] {s.eval_steps} evaluation steps ({len(cases)} candidates x "
            f"{s.repeats} rounds)")
        evaluation = interleaved(cases, s.repeats)
        row = {**cycle, **evaluation}
        if compile_s is not None:
            row["compile_first_cycle_s"] = compile_s
        row["fondtrain_samples_per_s"] = s.batch_size / row["fondtrain_cycle"]
        row["fondtrain_cycle_over_limit"] = row["fondtrain_cycle"] / row["limit_cycle"]
        row["fondtrain_eval_over_limit"] = row["fondtrain_eval"] / row["limit_eval"]
        row["projected_run_hours"] = (s.epochs * s.n_train / row["fondtrain_samples_per_s"] / 3600)
        if ref_model is not None:
            row["reference_samples_per_s"] = s.batch_size / row["reference_cycle"]
            row["reference_cycle_over_limit"] = row["reference_cycle"] / row["limit_cycle"]
            row["reference_eval_over_limit"] = row["reference_eval"] / row["limit_eval"]
            row["cycle_speedup"] = row["reference_cycle"] / row["fondtrain_cycle"]
            row["eval_speedup"] = row["reference_eval"] / row["fondtrain_eval"]
            row["eval_log_grid_speedup"] = row["reference_eval"] / row["fondtrain_eval_log_grid"]
            row["reference_projected_run_hours"] = (
                s.epochs * s.n_train / row["reference_samples_per_s"] / 3600)
        out[preset] = row
        log(format_speed_row(preset, row, s))
    return out


def format_speed_row(preset: str, r: dict, s: BenchSettings) -> str:
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


def bench_scaling(s: BenchSettings, log=print) -> list[dict]:
    """ipvae cycle time and its limit as K, batch and t_train vary one at a time."""
    device = _device()
    variants = [("n_latents", v) for v in (256, 512, 1024)] + \
               [("batch_size", v) for v in (100, 400)] + [("t_train", v) for v in (8, 32)]
    rows = []
    for name, value in variants:
        v = BenchSettings(**{**asdict(s), name: value, "results": {}})
        x = _inputs(v, device)
        model = fondtrain_model("ipvae", v, None, device)
        times = interleaved({
            "limit": matmul_limit(v.batch_size, v.input_dim, v.n_latents, v.t_train, 9, device),
            "cycle": fondtrain_cycle(model, x, v),
        }, max(1, s.repeats - 1))
        row = {"vary": name, "value": value, "cycle_s": times["cycle"], "limit_s": times["limit"],
               "over_limit": times["cycle"] / times["limit"],
               "samples_per_s": v.batch_size / times["cycle"]}
        rows.append(row)
        log(f"  ipvae {name}={value}: cycle {1e3 * row['cycle_s']:.0f} ms, "
            f"{row['samples_per_s']:.0f} samples/s, {row['over_limit']:.2f}x limit")
    return rows


# ----------------------------------------------------------------------------- subprocesses
def _python() -> list[str]:
    return [sys.executable, "-m", "fondtrain.bench"]


def _settings_arg(s: BenchSettings) -> str:
    d = asdict(s)
    d.pop("results")
    return json.dumps(d)


def _job(args: list[str], env: dict | None = None, launcher: list[str] | None = None) -> dict:
    cmd = (launcher or _python()) + args
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})},
                          timeout=1800)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"benchmark job {' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")


def bench_memory(s: BenchSettings, log=print) -> dict:
    """Peak memory of one training cycle per preset and implementation, each in a fresh
    process (CPU: growth of the peak resident set over the set-up; GPU: the allocator's peak)."""
    out: dict = {}
    impls = ["fondtrain"] + (["reference"] if s.reference_dir else [])
    for preset in s.presets:
        for impl in impls:
            out.setdefault(preset, {})[impl] = _job(
                ["--memory_job", impl, preset, "--settings", _settings_arg(s)])
        line = "; ".join(f"{k} peak {v['peak_mb']:.0f} MB, saved for backward {v['saved_mb']:.0f} MB"
                         for k, v in out[preset].items())
        log(f"  {preset} memory of a cycle: {line}")
    return out


def _memory_job(impl: str, preset: str, s: BenchSettings) -> dict:
    device = _device()
    x = _inputs(s, device)
    if impl == "reference":
        model, ref = reference_setup(s, preset, device)
        run = reference_cycle(model, ref, x, s)
    else:
        run = fondtrain_cycle(fondtrain_model(preset, s, None, device), x, s)
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:  # tensors autograd keeps for backward
        storage = t.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return t

    def counted() -> None:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            run()

    result = {}
    if device.type == "cuda":
        run()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        counted()
        torch.cuda.synchronize()
        result["peak_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        import psutil

        # The first cycle: after it the allocator keeps the freed pages, and a later
        # cycle's high-water mark would only show what it needs beyond them.
        base = psutil.Process().memory_info().rss
        if _reset_peak_rss():
            counted()
            peak = _peak_rss()
        else:
            counted()
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        result["peak_mb"] = max(0, peak - base) / 2**20
    result["saved_mb"] = sum(saved.values()) / 2**20
    return result


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux: clear_refs 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _accelerate() -> str:
    """The `accelerate` command of this environment."""
    beside = Path(sys.executable).parent / "accelerate"
    return str(beside) if beside.exists() else "accelerate"


def bench_processes(s: BenchSettings, log=print) -> dict:
    """Samples/s of ipvae cycles with 1 and 2 data-parallel processes (same global batch,
    split over ranks; CPU: gloo DDP through `accelerate launch`, cores split evenly)."""
    out: dict = {}
    cores = os.cpu_count() or 1
    for n in s.processes:
        threads = max(1, cores // n)
        env = {"OMP_NUM_THREADS": str(threads), "ACCELERATE_USE_CPU": "1" if not torch.cuda.is_available() else "0"}
        args = ["--ddp_job", "--settings", _settings_arg(s)]
        if n == 1:
            r = _job(args, env)
        else:
            launcher = [_accelerate(), "launch", "--multi_gpu",
                        "--num_processes", str(n), "--num_machines", "1", "--mixed_precision", "no",
                        "--dynamo_backend", "no", "-m", "fondtrain.bench"]
            r = _job(args, env, launcher)
        out[str(n)] = r
        log(f"  {n} process(es) x {threads} thread(s): cycle {1e3 * r['cycle_s']:.0f} ms, "
            f"{r['samples_per_s']:.0f} samples/s (global batch {s.batch_size})")
    return out


def _ddp_job(s: BenchSettings) -> dict:
    from accelerate import Accelerator

    from fondtrain.runtime import quiet_deepspeed_on_cpu

    quiet_deepspeed_on_cpu()
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    world = accelerator.num_processes
    if s.batch_size % world:
        raise UserError(f"batch {s.batch_size} does not split over {world} processes")
    torch.manual_seed(s.seed + accelerator.process_index)
    local = BenchSettings(**{**asdict(s), "batch_size": s.batch_size // world, "results": {}})
    model = fondtrain_model("ipvae", local, None, accelerator.device)
    opt = torch.optim.Adamax(model.parameters(), lr=5e-3, weight_decay=3e-4)
    model, opt = accelerator.prepare(model, opt)
    x = _inputs(local, accelerator.device)
    core = accelerator.unwrap_model(model)

    def run() -> None:
        out = model(x, core.init_state(x.shape[0]), 0, core.config.t_train, 0.5,
                    core.config.beta_outer, 1.0)
        accelerator.backward(out.loss)
        accelerator.clip_grad_norm_(model.parameters(), 300.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    times = interleaved({"cycle": run}, s.repeats)
    t = torch.tensor([times["cycle"]], device=accelerator.device)
    t = accelerator.reduce(t, "max")  # the slowest rank sets the pace
    return {"cycle_s": float(t), "samples_per_s": s.batch_size / float(t), "world": world,
            "threads": torch.get_num_threads(), "rank": accelerator.process_index}


# ----------------------------------------------------------------------------- entry point
def run(s: BenchSettings, out: str | None = None, log=print) -> dict:
    """Every figure of the benchmark; written as JSON to `out` when given."""
    if s.threads:
        torch.set_num_threads(s.threads)
    if s.reference_dir:
        from fondtrain.bench_reference import load_reference

        load_reference(s.reference_dir)  # fail early on a wrong path
    if s.checkpoint:  # its sizes; figures about other sizes or processes do not apply
        s = replace(use_checkpoint(s), scaling=False, processes=(), memory=False)
    n_exp = "the checkpoint's" if s.checkpoint else s.n_exp
    log(f"fondtrain bench: B={s.batch_size} M={s.input_dim} K={s.n_latents} "
        f"t_train={s.t_train} n_exp={n_exp}, Poisson training temperature {s.train_temp}, "
        f"eval {s.eval_steps} steps, {s.repeats} rounds, "
        f"{torch.get_num_threads()} thread(s), device {_device()}, torch {torch.__version__}")
    results: dict = {"settings": {k: v for k, v in asdict(s).items() if k != "results"},
                     "threads": torch.get_num_threads(), "device": str(_device()),
                     "torch": torch.__version__}
    results["speed"] = bench_speed(s, log)
    if s.memory:
        results["memory_mb"] = bench_memory(s, log)
    if s.scaling:
        results["scaling"] = bench_scaling(s, log)
    if s.processes:
        results["processes"] = bench_processes(s, log)
    log(f"projection: {s.epochs} epochs x {s.n_train} training samples"
        + (" (assumed N; pass --n_train)" if s.n_train == ASSUMED_N_TRAIN else ""))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        text = markdown(results) if out.endswith(".md") else json.dumps(results, indent=1)
        Path(out).write_text(text)
    return results


def markdown(results: dict) -> str:
    """The figures of `run` as Markdown tables (for benchmarks/RESULTS.md)."""
    s = results["settings"]
    ms = lambda v: f"{1e3 * v:,.0f}"  # noqa: E731
    n_exp = f"the checkpoint's ({s['checkpoint']})" if s.get("checkpoint") else s["n_exp"]
    lines = [f"B={s['batch_size']}, M={s['input_dim']}, K={s['n_latents']}, t_train={s['t_train']}, "
             f"n_exp={n_exp}, Poisson training temperature {s.get('train_temp', 0.5)}; "
             f"{results['threads']} thread(s), {results['device']}, "
             f"torch {results['torch']}; medians of {s['repeats']} interleaved rounds.", "",
             "| preset | cycle ms | samples/s | matmul limit ms | x limit | reference cycle ms "
             "| ref x limit | speed-up | projected run h (ref) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for preset, r in results["speed"].items():
        ref = "reference_cycle" in r
        lines.append(
            f"| {preset} | {ms(r['fondtrain_cycle'])} | {r['fondtrain_samples_per_s']:,.0f} | "
            f"{ms(r['limit_cycle'])} | {r['fondtrain_cycle_over_limit']:.2f} | "
            + (f"{ms(r['reference_cycle'])} | {r['reference_cycle_over_limit']:.2f} | "
               f"**{r['cycle_speedup']:.2f}x** | {r['projected_run_hours']:,.1f} "
               f"({r['reference_projected_run_hours']:,.1f}) |" if ref else
               f"- | - | - | {r['projected_run_hours']:,.1f} |"))
        if "fondtrain_compiled_cycle" in r:
            lines.append(f"| {preset}, compiled | {ms(r['fondtrain_compiled_cycle'])} | "
                         f"{s['batch_size'] / r['fondtrain_compiled_cycle']:,.0f} | "
                         f"{ms(r['limit_cycle'])} | "
                         f"{r['fondtrain_compiled_cycle'] / r['limit_cycle']:.2f} | | | "
                         + (f"{r['reference_cycle'] / r['fondtrain_compiled_cycle']:.2f}x" if ref else "")
                         + f" | first cycle {r['compile_first_cycle_s']:.0f} s |")
    lines += ["", f"Evaluation, {s['eval_steps']} steps at evaluation temperature on "
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
    if "memory_mb" in results:
        lines += ["", "| preset | peak MB | saved for backward MB | reference peak MB | "
                  "reference saved MB |", "|---|---:|---:|---:|---:|"]
        for preset, m in results["memory_mb"].items():
            f, r = m["fondtrain"], m.get("reference", {})
            lines.append(f"| {preset} | {f['peak_mb']:.0f} | {f['saved_mb']:.0f} | "
                         f"{r.get('peak_mb', float('nan')):.0f} | {r.get('saved_mb', float('nan')):.0f} |")
    if "scaling" in results:
        lines += ["", "| ipvae, vary | value | cycle ms | samples/s | x limit |",
                  "|---|---:|---:|---:|---:|"]
        lines += [f"| {r['vary']} | {r['value']} | {ms(r['cycle_s'])} | {r['samples_per_s']:,.0f} | "
                  f"{r['over_limit']:.2f} |" for r in results["scaling"]]
    if "processes" in results:
        lines += ["", "| processes x threads | cycle ms | samples/s (global batch) |",
                  "|---|---:|---:|"]
        lines += [f"| {n} x {r['threads']} | {ms(r['cycle_s'])} | {r['samples_per_s']:,.0f} |"
                  for n, r in results["processes"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Worker entry (`python -m fondtrain.bench --memory_job ... | --ddp_job`)."""
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--memory_job", nargs=2)
    p.add_argument("--ddp_job", action="store_true")
    p.add_argument("--settings", required=True)
    a = p.parse_args(argv)
    raw = json.loads(a.settings)
    s = BenchSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    if s.threads and not a.ddp_job:
        torch.set_num_threads(s.threads)
    if a.memory_job:
        print(json.dumps(_memory_job(*a.memory_job, s)))
    elif a.ddp_job:
        r = _ddp_job(s)
        if r["rank"] == 0:
            print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
