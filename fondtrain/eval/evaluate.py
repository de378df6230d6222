"""`fondtrain eval` and `fondtrain compare`: what the paper measures, one command away.

`evaluate(run)` loads the newest complete checkpoint of a run (or any checkpoint given,
a reference `.pt` included) and writes

    <out>/metrics.json        the per-step convergence table and every summary number
    <out>/figures/*.png       convergence, dictionary, reconstructions, latent activity,
                              orientation tuning (bars, gratings)
    <out>/tuning.npz          raw tuning responses, for further analysis

where <out> is `runs/<name>/eval` (or `eval-<dataset>` when evaluating on another data
set than the run's own), and the same scalars and images to TensorBoard under
`runs/<name>/tb/eval` (tags `eval/<dataset>/...`; the per-step curves are logged with the
inference step as x, the summaries at the checkpoint's training step).

Under `accelerate launch` the inference is data-parallel (each rank takes a contiguous
part of the rows; see `fondtrain.eval.dist`); only the main process writes files.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fondtrain.errors import UserError
from fondtrain.eval import figures as Fg
from fondtrain.eval.convergence import eval_temperature, run_convergence
from fondtrain.eval.data import fit_to_model, limit_rows, load_eval_data
from fondtrain.eval.dist import Ranks
from fondtrain.run_files import checkpoint_eps, run_members
from fondtrain.stats import safe_float

METRICS_FILE = "metrics.json"
SUMMARY_KEYS = ("mse", "r2_pooled", "r2_median", "r2_mean", "frac_zeros", "lifetime_sparseness",
                "population_sparseness", "nll", "loss", "kl_reference", "kl_exact", "kl")
# Default data set for checkpoints that carry no run config (reference .pt), by input size.
DEFAULT_DATASET_BY_DIM = {256: "natural16", 64: "digits"}


@dataclass
class EvalOptions:
    """What `evaluate` does (each is a `fondtrain eval --flag`).

    n_steps: inference steps from u_init (SPEC 7: 1000); temp: sampling temperature
    (None: Poisson 0, Gaussian 1); dataset / path: evaluate on this data set (default the
    run's own; path for data sets read from files, e.g. vh16, mnist); shards_root: where
    built shards are looked for (default the run's); n_val: use only the first n_val
    validation samples; batch_size: inputs per inference batch; window: steps at the end
    averaged into a unit's response (probe features, tuning); probe: run the linear
    probes (digits always, MNIST when `mnist` gives its folder, and the data set itself
    when labelled); probe_steps / tuning_steps: inference steps there (default n_steps);
    probe_max_samples: cap per split; tuning: run the bar-of-light experiment;
    gabor: fit a 2-D Gabor to every used dictionary element (fondtrain.eval.gabor);
    out: output folder; figures: draw the PNG figures; tensorboard: also log to
    TensorBoard; device: e.g. cpu, cuda:1
    (default: Accelerate's choice); seed: sampling seed.
    """

    n_steps: int = 1000
    temp: float | None = None
    dataset: str | None = None
    path: str | None = None
    shards_root: str | None = None
    n_val: int | None = None
    batch_size: int = 2048
    window: int = 100
    probe: bool = True
    probe_steps: int | None = None
    probe_max_samples: int = 10_000
    mnist: str | None = None
    tuning: bool = True
    tuning_steps: int | None = None
    n_orientations: int = 16
    gabor: bool = True
    out: str | None = None
    figures: bool = True
    tensorboard: bool = True
    device: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_steps", "batch_size", "window", "n_orientations", "probe_max_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"--{name} must be a whole number of at least 1, got {value!r}.")
        for name in ("n_val", "probe_steps", "tuning_steps"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise UserError(f"--{name} must be a whole number of at least 1, got {value!r}.")
        if self.temp is not None and float(self.temp) < 0:
            raise UserError(f"--temp must be zero or positive, got {self.temp!r}.")


# ----------------------------------------------------------------------------- helpers
def _run_dir_of(checkpoint: Path) -> Path | None:
    """The run directory holding checkpoint `ckpt/step-N` (or its model file), if any."""
    folder = checkpoint if checkpoint.is_dir() else checkpoint.parent
    if folder.parent.name == "ckpt":
        return folder.parent.parent
    return None


def _training_step(checkpoint: Path) -> int:
    folder = checkpoint if checkpoint.is_dir() else checkpoint.parent
    state = folder / "trainer_state.json"
    if state.is_file():
        try:
            return int(json.loads(state.read_text()).get("global_step", 0))
        except (ValueError, json.JSONDecodeError):
            pass
    name = folder.name
    return int(name[5:]) if name.startswith("step-") and name[5:].isdigit() else 0


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, allow_nan=False))
    os.replace(tmp, path)


def _clean(obj: Any) -> Any:
    """JSON-safe copy: NaN / inf -> None, numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return safe_float(obj)
    return obj


def _say(ranks: Ranks, message: str) -> None:
    if ranks.is_main:
        print(message, flush=True)


# ----------------------------------------------------------------------------- evaluate
def evaluate(run: str | Path | None = None, checkpoint: str | Path | None = None,
             options: EvalOptions | None = None, verbose: bool = True,
             member: str | None = None) -> dict | None:
    """Evaluate a run's newest complete checkpoint (or `checkpoint`) and write the results.

    `member`: one member of a population run (its results in RUN/eval/members/MEMBER;
    `fondtrain.eval.population` evaluates them all).
    Returns the metrics dict (what metrics.json holds) on the main process, None on others.
    """
    from fondtrain.run_files import load_model, resolve_checkpoint

    opts = options or EvalOptions()
    if run is None and checkpoint is None:
        raise UserError("give a run directory (fondtrain eval runs/NAME) or --checkpoint PATH.")
    started = time.time()
    target = resolve_checkpoint(checkpoint if checkpoint is not None else run)
    model, config = load_model(target, member)
    run_dir = Path(run) if run is not None else _run_dir_of(target)
    ranks = Ranks(opts.device)
    say = (lambda msg: _say(ranks, msg)) if verbose else (lambda msg: None)
    mc = model.config

    # ------------------------------------------------------------------ data
    own = config.data.dataset if config is not None else DEFAULT_DATASET_BY_DIM.get(mc.input_dim)
    dataset = opts.dataset or own
    if dataset is None:
        raise UserError(
            f"the checkpoint carries no run config and its input size {mc.input_dim} has no "
            "default data set: pass --dataset NAME (and --path if it is read from files)."
        )
    same = config is not None and dataset == config.data.dataset
    path = opts.path if opts.path is not None else (config.data.path if same else None)
    shards_root = opts.shards_root or (config.data.shards_root if config is not None else "shards")
    seed = config.data.seed if same else 0
    data = fit_to_model(load_eval_data(dataset, path, shards_root, seed), mc.input_dim)
    x_val, _ = limit_rows(data.x_val, None, opts.n_val)
    if len(x_val) == 0:
        raise UserError(f"data set {dataset} has no validation samples to evaluate on.")

    if opts.out is not None:
        out_dir = Path(opts.out)
    else:
        base = run_dir if run_dir is not None else (target if target.is_dir() else target.parent)
        out_dir = base / ("eval" if dataset == own else f"eval-{dataset}")
        out_dir = out_dir if member is None else out_dir / "members" / member
    fig_dir = out_dir / "figures"
    if ranks.is_main:
        fig_dir.mkdir(parents=True, exist_ok=True)
    model = model.to(ranks.device)
    temp = eval_temperature(model) if opts.temp is None else float(opts.temp)
    # The soft clamps as the run left them: a run stopped early (the quickstart) still has
    # them partly closed, and opening them fully would let its inference run away.
    index = 0 if member is None else [m.name for m in run_members(target)].index(member)
    eps = checkpoint_eps(target, index) if target.is_dir() else 1.0
    tag = f"{run_dir.name if run_dir else target.name}" + ("" if member is None else f"/{member}")
    say(f"evaluating {tag} ({mc.preset}, K={mc.n_latents}, M={mc.input_dim}) on {dataset}: "
        f"{len(x_val)} samples x {opts.n_steps} steps at temperature {temp:g}, clamp eps {eps:.3g}, "
        f"{ranks.world} process(es) on {ranks.device}")

    # ------------------------------------------------------------------ convergence
    t0 = time.time()
    conv = run_convergence(model, torch.from_numpy(np.ascontiguousarray(x_val)), opts.n_steps, temp,
                           batch_size=opts.batch_size, ranks=ranks, seed=opts.seed, eps=eps)
    timing = {"convergence_s": time.time() - t0}
    table = conv.table
    final = {k: table[k][-1] for k in SUMMARY_KEYS if k in table}
    horizon = mc.t_total
    at_horizon = ({k: table[k][table["step"].index(horizon)] for k in SUMMARY_KEYS if k in table}
                  if horizon in table["step"] else None)
    usage = conv.usage.numpy()
    weight = model.W.detach().cpu().numpy()
    metrics: dict[str, Any] = {
        "run": str(run_dir) if run_dir is not None else None,
        "checkpoint": str(target),
        "training_step": _training_step(target),
        "model": {"preset": mc.preset, "n_latents": mc.n_latents, "input_dim": mc.input_dim,
                  "t_total": mc.t_total, "beta_outer": mc.beta_outer, "poisson_kl": mc.poisson_kl},
        "dataset": dataset,
        "trained_on": config.data.dataset if config is not None else None,
        "out_of_distribution": config is not None and dataset != own,
        "data": data.meta,
        "n_samples": conv.n_samples,
        "n_steps": opts.n_steps,
        "temp": temp,
        "eps": eps,
        "beta": mc.beta_outer,
        "n_processes": ranks.world,
        "final": final,
        "at_training_horizon": at_horizon,
        "usage": {"n_units": int(len(usage)), "n_silent": int((usage == 0).sum()),
                  "mean_activity": float(usage.mean()),
                  "max_activity": float(usage.max()) if len(usage) else None},
        "convergence": table,
        "options": asdict(opts),
    }
    figures: dict[str, Path] = {}
    if ranks.is_main and opts.figures:
        title = f"{tag}: {mc.preset} K={mc.n_latents} on {dataset}"
        figures["convergence"] = Fg.plot_convergence(table, fig_dir / "convergence.png",
                                                     f"{title}, {conv.n_samples} samples, T={opts.n_steps}, "
                                                     f"temperature {temp:g}", t_train=horizon)
        figures["dictionary"] = Fg.plot_dictionary(weight, usage, fig_dir / "dictionary.png", title)
        figures["reconstructions"] = Fg.plot_reconstructions(
            conv.x.numpy(), conv.x_hat.numpy(), fig_dir / "reconstructions.png",
            f"{title}: input | reconstruction at step {opts.n_steps}")
        figures["latents"] = Fg.plot_latent_activity(
            conv.activity.numpy(), usage, fig_dir / "latents.png",
            f"{title}: latent activity at step {opts.n_steps}", discrete=model.is_poisson)

    # ------------------------------------------------------------------ Gabor fits
    if opts.gabor and ranks.is_main:
        from fondtrain.eval import gabor_figure
        from fondtrain.eval.gabor import fit_dictionary

        t0 = time.time()
        say("Gabor fits of the used dictionary elements")
        fits = fit_dictionary(weight, usage)
        metrics["gabor"] = fits.summary()
        np.savez_compressed(out_dir / "gabor.npz", units=fits.units, **fits.table())
        if opts.figures:
            figures["gabor"] = gabor_figure.plot_gabor_summary(
                fits, fig_dir / "gabor.png", f"{title}: Gabor fits of the used elements")
            figures["gabor_fits"] = gabor_figure.plot_gabor_fits(
                fits, weight, np.argsort(-usage, kind="stable"), fig_dir / "gabor_fits.png",
                f"{title}: element | fitted Gabor, most used first")
        timing["gabor_s"] = time.time() - t0

    # ------------------------------------------------------------------ linear probes
    if opts.probe:
        from fondtrain.eval.probe import linear_probe

        t0 = time.time()
        steps = opts.probe_steps or opts.n_steps
        probes = {"digits": ("digits", None, shards_root)}
        if opts.mnist:
            probes["mnist"] = ("mnist", opts.mnist, None)
        if data.y_val is not None and dataset not in probes:
            probes[dataset] = (dataset, path, shards_root)
        results = {}
        for name, (source, source_path, root) in probes.items():
            labelled = load_eval_data(source, source_path, root, seed if source == dataset else 0,
                                      need_train=True)
            if labelled.y_val is None:
                continue
            say(f"linear probe on {name} ({steps} steps)")
            results[name] = linear_probe(model, labelled, steps, opts.window, ranks,
                                         opts.batch_size, opts.probe_max_samples, opts.seed, eps)
        metrics["probe"] = results if ranks.is_main else None
        timing["probe_s"] = time.time() - t0

    # ------------------------------------------------------------------ bar of light
    tuning_results = {}
    if opts.tuning and ranks.is_main:
        from fondtrain.eval.tuning import bar_of_light

        t0 = time.time()
        steps = opts.tuning_steps or opts.n_steps
        say(f"bar-of-light tuning ({steps} steps)")
        for kind in ("bar", "grating"):
            result = bar_of_light(model, kind, steps, opts.window, opts.n_orientations,
                                  device=ranks.device, seed=opts.seed, eps=eps)
            tuning_results[kind] = result
            if opts.figures:
                figures[f"tuning_{kind}"] = Fg.plot_tuning(
                    result, weight, fig_dir / f"tuning_{kind}.png",
                    f"{tag} ({mc.preset}): orientation tuning to flashed {kind}s, "
                    f"{result.stimuli.shape[1]} phases x {len(result.orientations)} orientations; "
                    "curve = max evoked response over phases")
        metrics["tuning"] = {kind: r.summary() for kind, r in tuning_results.items()}
        np.savez_compressed(out_dir / "tuning.npz", **{
            f"{kind}_{name}": getattr(r, name) for kind, r in tuning_results.items()
            for name in ("orientations", "responses", "blank", "tuning", "osi", "preferred",
                         "responsive")})
        timing["tuning_s"] = time.time() - t0
    ranks.barrier()
    if not ranks.is_main:
        return None

    timing["total_s"] = time.time() - started
    metrics["timing"] = timing
    metrics["figures"] = {k: str(v.relative_to(out_dir)) for k, v in figures.items()}
    metrics = _clean(metrics)
    _write_json(out_dir / METRICS_FILE, metrics)
    if opts.tensorboard:
        tb_dir = (run_dir / "tb" / "eval") if run_dir is not None else (out_dir / "tb")
        tb_dir = tb_dir if member is None else out_dir / "tb"
        log_tensorboard(metrics, figures, tb_dir)
    say(format_summary(metrics))
    say(f"wrote {out_dir / METRICS_FILE} and {len(figures)} figures in {fig_dir}")
    return metrics


def log_tensorboard(metrics: dict, figures: dict[str, Path], tb_dir: Path) -> None:
    """Scalars (per-step curves against the inference step; summaries at the training
    step) and the figures as images, under tags eval/<dataset>/..."""
    from torch.utils.tensorboard import SummaryWriter

    prefix = f"eval/{metrics['dataset']}"
    step = int(metrics.get("training_step") or 0)
    writer = SummaryWriter(str(tb_dir))
    try:
        table = metrics["convergence"]
        for key, values in table.items():
            if key == "step":
                continue
            for t, value in zip(table["step"], values, strict=True):
                if value is not None:
                    writer.add_scalar(f"{prefix}/convergence/{key}", value, int(t))
        for key, value in (metrics.get("final") or {}).items():
            if value is not None:
                writer.add_scalar(f"{prefix}/final/{key}", value, step)
        for name, probe in (metrics.get("probe") or {}).items():
            for key in ("latent_acc", "pixel_acc"):
                writer.add_scalar(f"{prefix}/probe_{name}/{key}", probe[key], step)
        for kind, summary in (metrics.get("tuning") or {}).items():
            for key in ("osi_mean", "osi_median", "frac_selective", "n_responsive"):
                if summary.get(key) is not None:
                    writer.add_scalar(f"{prefix}/tuning_{kind}/{key}", summary[key], step)
        for key in ("frac_good", "r2_median", "frequency_median", "size_median"):
            if (metrics.get("gabor") or {}).get(key) is not None:
                writer.add_scalar(f"{prefix}/gabor/{key}", metrics["gabor"][key], step)
        for name, path in figures.items():
            writer.add_image(f"{prefix}/{name}", Fg.png_as_array(path), step, dataformats="HWC")
    finally:
        writer.close()


def format_summary(metrics: dict) -> str:
    """A few lines for the terminal: final metrics, probes, tuning."""
    final = metrics["final"]
    lines = [f"after {metrics['n_steps']} steps on {metrics['n_samples']} {metrics['dataset']} samples:"]
    lines.append("  " + "  ".join(f"{k} {final[k]:.4g}" for k in
                                  ("mse", "r2_pooled", "r2_median", "r2_mean", "frac_zeros",
                                   "lifetime_sparseness", "population_sparseness", "loss")
                                  if final.get(k) is not None))
    for name, probe in (metrics.get("probe") or {}).items():
        lines.append(f"  probe {name}: latents {probe['latent_acc']:.3f}, pixels "
                     f"{probe['pixel_acc']:.3f} (chance {probe['chance']:.2f})")
    if metrics.get("gabor"):
        g = metrics["gabor"]
        lines.append(f"  Gabor fits: {g['n_good']}/{g['n_used']} used units with variance explained "
                     f">= {g['good_r2']}")
    for kind, summary in (metrics.get("tuning") or {}).items():
        osi, sel = summary.get("osi_median"), summary.get("frac_selective")
        lines.append(f"  tuning ({kind}s): {summary['n_responsive']}/{summary['n_units']} responsive "
                     f"(>= {summary['responsive_min_spikes']:g} evoked spikes per "
                     f"{summary['responsive_window']}-step window), "
                     f"median OSI {'-' if osi is None else f'{osi:.3f}'}, "
                     f"selective (OSI > 0.3) {'-' if sel is None else f'{sel:.2f}'}")
    return "\n".join(lines)
