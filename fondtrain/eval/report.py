"""What an evaluation writes for each member: metrics.json, the figures, the Gabor fits,
the tuning responses and TensorBoard, from the results of its inference
(`fondtrain.eval.evaluate.infer`, batched over the members).

    <out>/metrics.json        the per-step convergence table and every summary number
    <out>/figures/*.png       convergence, dictionary, reconstructions, latent activity,
                              Gabor fits, orientation tuning (bars, gratings)
    <out>/gabor.npz           the Gabor fit of every used dictionary element
    <out>/tuning.npz          raw tuning responses, for further analysis
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fondtrain.atomic_write import write_text_atomic
from fondtrain.config import ModelConfig
from fondtrain.eval import figures as Fg
from fondtrain.eval.convergence import ConvergenceResult
from fondtrain.eval.tuning import TuningResult
from fondtrain.stats import R2_LABELS, safe_float

METRICS_FILE = "metrics.json"
SUMMARY_KEYS = ("mse", "r2_pooled", "r2_median", "r2_mean", "frac_zeros", "lifetime_sparseness",
                "population_sparseness", "nll", "loss", "kl_reference", "kl_exact", "kl")


@dataclass
class ModelResults:
    """One member's inference results: the convergence table and final-step arrays, the
    probe scores by data set (None: not run; on ranks other than the main one, None), the
    tuning by stimulus kind, and the inference stages' wall times (the batched stages',
    shared by all members)."""

    conv: ConvergenceResult
    probe: dict[str, dict] | None
    tuning: dict[str, TuningResult]
    timing: dict[str, float]


@dataclass
class ReportTarget:
    """Which member a report is of and where it goes: tag names it in titles (run, or
    run/member); mc its config; weight its dictionary W [M, K]; eps its clamp opening."""

    tag: str
    mc: ModelConfig
    weight: np.ndarray
    eps: float
    out_dir: Path
    tb_dir: Path


def write_report(results: ModelResults, target: ReportTarget, about: dict[str, Any],
                 opts, temp: float, started: float, say) -> dict:
    """Assemble the metrics of one member, fit its dictionary's Gabors, draw its figures
    and write metrics.json (and TensorBoard). `about`: the entries every member shares
    (run, checkpoint, training_step, dataset, trained_on, out_of_distribution, data,
    n_processes). Main process only. Returns the metrics dict."""
    mc, conv = target.mc, results.conv
    out_dir, fig_dir = target.out_dir, target.out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    table = conv.table
    horizon = mc.t_total
    final = {k: table[k][-1] for k in SUMMARY_KEYS if k in table}
    at_horizon = ({k: table[k][table["step"].index(horizon)] for k in SUMMARY_KEYS if k in table}
                  if horizon in table["step"] else None)
    usage = conv.usage.numpy()
    weight = target.weight
    timing = dict(results.timing)
    metrics: dict[str, Any] = {
        "run": about["run"],
        "checkpoint": about["checkpoint"],
        "training_step": about["training_step"],
        "model": {"preset": mc.preset, "n_latents": mc.n_latents, "input_dim": mc.input_dim,
                  "t_total": mc.t_total, "beta_outer": mc.beta_outer, "poisson_kl": mc.poisson_kl},
        "dataset": about["dataset"],
        "trained_on": about["trained_on"],
        "out_of_distribution": about["out_of_distribution"],
        "data": about["data"],
        "n_samples": conv.n_samples,
        "n_steps": opts.n_steps,
        "temp": temp,
        "eps": target.eps,
        "beta": mc.beta_outer,
        "n_processes": about["n_processes"],
        "final": final,
        "r2_definitions": R2_LABELS,
        "at_training_horizon": at_horizon,
        "usage": {"n_units": int(len(usage)), "n_silent": int((usage == 0).sum()),
                  "mean_activity": float(usage.mean()),
                  "max_activity": float(usage.max()) if len(usage) else None},
        "convergence": table,
        "options": asdict(opts),
    }
    figures: dict[str, Path] = {}
    title = f"{target.tag}: {mc.preset} K={mc.n_latents} on {about['dataset']}"
    if opts.figures:
        figures["convergence"] = Fg.plot_convergence(
            table, fig_dir / "convergence.png", f"{title}, {conv.n_samples} samples, "
            f"T={opts.n_steps}, temperature {temp:g}", t_train=horizon)
        figures["dictionary"] = Fg.plot_dictionary(weight, usage, fig_dir / "dictionary.png", title)
        figures["reconstructions"] = Fg.plot_reconstructions(
            conv.x.numpy(), conv.x_hat.numpy(), fig_dir / "reconstructions.png",
            f"{title}: input | reconstruction at step {opts.n_steps}")
        figures["latents"] = Fg.plot_latent_activity(
            conv.activity.numpy(), usage, fig_dir / "latents.png",
            f"{title}: latent activity at step {opts.n_steps}", discrete=mc.posterior == "poisson")
    if opts.gabor:
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
    if results.probe is not None:
        metrics["probe"] = results.probe
    if results.tuning:
        for kind, result in results.tuning.items():
            if opts.figures:
                figures[f"tuning_{kind}"] = Fg.plot_tuning(
                    result, weight, fig_dir / f"tuning_{kind}.png",
                    f"{target.tag} ({mc.preset}): orientation tuning to flashed {kind}s, "
                    f"{result.stimuli.shape[1]} phases x {len(result.orientations)} orientations; "
                    "curve = max evoked response over phases; dotted: the noise level a responsive "
                    "unit exceeds")
        metrics["tuning"] = {kind: r.summary() for kind, r in results.tuning.items()}
        np.savez_compressed(out_dir / "tuning.npz", **{
            f"{kind}_{name}": getattr(r, name) for kind, r in results.tuning.items()
            for name in ("orientations", "responses", "blank", "tuning", "osi", "preferred", "noise",
                         "responsive")})

    timing["total_s"] = time.time() - started
    metrics["timing"] = timing
    metrics["figures"] = {k: str(v.relative_to(out_dir)) for k, v in figures.items()}
    metrics = _clean(metrics)
    _write_json(out_dir / METRICS_FILE, metrics)
    if opts.tensorboard:
        log_tensorboard(metrics, figures, target.tb_dir)
    say(format_summary(metrics))
    say(f"wrote {out_dir / METRICS_FILE} and {len(figures)} figures in {fig_dir}")
    return metrics


def _write_json(path: Path, payload: dict) -> None:
    write_text_atomic(path, json.dumps(payload, indent=1, allow_nan=False))


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
        writer.add_text(f"{prefix}/r2_definitions",
                        "\n\n".join(f"`{key}`: {label}" for key, label in R2_LABELS.items()), step)
        for name, path in figures.items():
            writer.add_image(f"{prefix}/{name}", Fg.png_as_array(path), step, dataformats="HWC")
    finally:
        writer.close()


def format_summary(metrics: dict) -> str:
    """A few lines for the terminal: the three R^2 (each named), the other final metrics,
    probes, Gabor fits, tuning."""
    final = metrics["final"]
    lines = [f"after {metrics['n_steps']} steps on {metrics['n_samples']} {metrics['dataset']} samples:"]
    width = max(len(label) for label in R2_LABELS.values())
    for key, label in R2_LABELS.items():
        if final.get(key) is not None:
            lines.append(f"  {label:<{width}}  {final[key]:7.4f}  [{key}]")
    lines.append("  " + "  ".join(f"{k} {final[k]:.4g}" for k in
                                  ("mse", "frac_zeros", "lifetime_sparseness", "population_sparseness", "loss")
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
        lines.append(f"  tuning ({kind}s, {summary['activity_unit']}): {summary['n_responsive']}/"
                     f"{summary['n_units']} responsive ({summary['responsive_rule']}), "
                     f"median OSI {'-' if osi is None else f'{osi:.3f}'}, "
                     f"selective (OSI > 0.3) {'-' if sel is None else f'{sel:.2f}'}")
    return "\n".join(lines)
