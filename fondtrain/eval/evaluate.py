"""`fondtrain eval`: what the paper measures, one command away.

`evaluate(run)` loads the newest complete checkpoint of a run (or any checkpoint given,
a reference `.pt` included) with every member (`run_files.load_run`; a plain run is one
member) and writes, for each member,

    <out>/metrics.json        the per-step convergence table and every summary number
    <out>/figures/*.png       convergence, dictionary, reconstructions, latent activity,
                              orientation tuning (bars, gratings)
    <out>/tuning.npz          raw tuning responses, for further analysis

(`fondtrain.eval.report` writes them) where <out> is `runs/<name>/eval` for a plain run
and `runs/<name>/eval/members/<member>` for a sweep's members (`eval-<dataset>` instead
of `eval` when evaluating on another data set than the run's own; `runs/pretrained-NAME`
stands for the run of a model shipped in the package, `pretrained:NAME`), with the same scalars
and images in TensorBoard under `runs/<name>/tb/eval` (a member's: `<out>/tb`; tags
`eval/<dataset>/...`; the per-step curves are logged with the inference step as x, the
summaries at the checkpoint's training step). A sweep also gets its summary,
`runs/<name>/eval/sweep_summary.tsv` and `rate_distortion.png` (SPEC 9.4), and (unless
--nofrontier) the sparse-coding frontier of the same validation samples drawn beside the
members (`runs/<name>/eval/sparse_coding_frontier.tsv`; `fondtrain.eval.frontier`).

The stages that run the model (`infer`: the convergence table on the validation rows,
the probes' features, the tuning responses) run every member in one batched inference
through the inference engine. Member i samples from its own generator, seeded as its
evaluation alone (`evaluate(..., member=NAME)`: a population of one) would seed it, with
its own beta_outer and clamp opening eps: its numbers are that evaluation's.

Under `accelerate launch` the inference is data-parallel (each rank takes a contiguous
part of the rows; see `fondtrain.eval.dist`); only the main process writes files.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fondtrain.config import RunConfig
from fondtrain.config.sweep import member_dir
from fondtrain.errors import UserError
from fondtrain.eval.convergence import run_convergence
from fondtrain.eval.data import EvalData, fit_to_model, limit_rows, load_eval_data
from fondtrain.eval.dist import Ranks
from fondtrain.eval.frontier import (
    DEFAULT_ALPHAS,
    DEFAULT_SAMPLES,
    FRONTIER_TSV,
    Frontier,
    sparse_coding_frontier,
    write_frontier_tsv,
)
from fondtrain.eval.report import ModelResults, ReportTarget, write_report
from fondtrain.eval.sweep_summary import (
    eval_rows,
    format_sweep_table,
    frontier_left_out,
    group_members,
    write_eval_summary,
)
from fondtrain.model import inference
from fondtrain.model.vae import IterativeVAE
from fondtrain.runs.files import (
    checkpoint_eps,
    load_run,
    member_index,
    one_member,
    output_run_dir,
    resolve_checkpoint,
    training_step,
)

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
    (default: Accelerate's choice); seed: sampling seed (and the frontier's);
    frontier: a sweep's summary also draws the sparse-coding frontier (zero-code
    families only), one dictionary per alpha of frontier_alphas learnt from
    frontier_samples training patches.
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
    frontier: bool = True
    frontier_samples: int = DEFAULT_SAMPLES
    frontier_alphas: tuple[float, ...] = DEFAULT_ALPHAS

    def __post_init__(self) -> None:
        for name in ("n_steps", "batch_size", "window", "n_orientations", "probe_max_samples",
                     "frontier_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"--{name} must be a whole number of at least 1, got {value!r}.")
        for name in ("n_val", "probe_steps", "tuning_steps"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise UserError(f"--{name} must be a whole number of at least 1, got {value!r}.")
        if self.temp is not None and float(self.temp) < 0:
            raise UserError(f"--temp must be zero or positive, got {self.temp!r}.")
        alphas = tuple(self.frontier_alphas)
        if not alphas or not all(isinstance(a, int | float) and 0 < a < float("inf") for a in alphas):
            raise UserError(f"--frontier_alphas must be positive numbers (e.g. 0.5,1,2), got {alphas!r}.")


# ----------------------------------------------------------------------------- context
@dataclass
class EvalContext:
    """What an evaluation reads and where it writes, shared by the members: the
    checkpoint, its run (None for a bare checkpoint) and config (None for reference
    checkpoints), the data set evaluated on (`own`: the run's) and its validation rows
    x_val [N, M], and `out`: RUN/eval (RUN/eval-DATASET, or --out; one member evaluated
    alone: RUN/eval/members/MEMBER, or --out). RUN is `runs.files.output_run_dir`'s: for a
    pretrained model runs/pretrained-NAME, never the package."""

    target: Path
    run_dir: Path | None
    config: RunConfig | None
    dataset: str
    own: str | None
    path: str | None
    shards_root: str
    data_seed: int
    data: EvalData
    x_val: np.ndarray
    out: Path
    ranks: Ranks

    def about(self) -> dict[str, Any]:
        """The metrics entries every member of the evaluation shares."""
        return {"run": str(self.run_dir) if self.run_dir is not None else None,
                "checkpoint": str(self.target), "training_step": training_step(self.target),
                "dataset": self.dataset,
                "trained_on": self.config.data.dataset if self.config is not None else None,
                "out_of_distribution": self.config is not None and self.dataset != self.own,
                "data": self.data.meta, "n_processes": self.ranks.world}

    def name(self) -> str:
        return self.run_dir.name if self.run_dir else self.target.name


def eval_context(run: str | Path | None, target: Path, config: RunConfig | None, input_dim: int,
                 opts: EvalOptions, ranks: Ranks, member: str | None) -> EvalContext:
    """Resolve the data set and the output folder of the evaluation of `target` (of its
    member `member` alone, when given)."""
    run_dir = output_run_dir(run, target)
    own = config.data.dataset if config is not None else DEFAULT_DATASET_BY_DIM.get(input_dim)
    dataset = opts.dataset or own
    if dataset is None:
        raise UserError(
            f"the checkpoint carries no run config and its input size {input_dim} has no "
            "default data set: pass --dataset NAME (and --path if it is read from files)."
        )
    same = config is not None and dataset == config.data.dataset
    path = opts.path if opts.path is not None else (config.data.path if same else None)
    shards_root = opts.shards_root or (config.data.shards_root if config is not None else "shards")
    seed = config.data.seed if same else 0
    data = fit_to_model(load_eval_data(dataset, path, shards_root, seed), input_dim)
    x_val, _ = limit_rows(data.x_val, None, opts.n_val)
    if len(x_val) == 0:
        raise UserError(f"data set {dataset} has no validation samples to evaluate on.")
    if opts.out is not None:
        out = Path(opts.out)
    else:
        base = run_dir if run_dir is not None else (target if target.is_dir() else target.parent)
        out = member_dir(base / ("eval" if dataset == own else f"eval-{dataset}"), member or "")
    return EvalContext(target, run_dir, config, dataset, own, path, shards_root, seed, data,
                       x_val, out, ranks)


# ----------------------------------------------------------------------------- inference
def infer(model: IterativeVAE, ctx: EvalContext, opts: EvalOptions, temp: float, eps: torch.Tensor,
          say) -> list[ModelResults]:
    """Every stage of the evaluation that runs the model, each one batched inference of
    all members (eps: each member's clamp opening [P]): the convergence table on the
    validation rows, the probes' latent features and the tuning responses. One
    ModelResults per member."""
    ranks, n = ctx.ranks, model.n_members
    t0 = time.time()
    convs = run_convergence(model, torch.from_numpy(np.ascontiguousarray(ctx.x_val)), opts.n_steps, temp,
                            batch_size=opts.batch_size, ranks=ranks, seed=opts.seed, eps=eps)
    timing = {"convergence_s": time.time() - t0}

    probes: list[dict | None] = [None] * n
    if opts.probe:
        from fondtrain.eval.probe import linear_probe

        t0 = time.time()
        steps = opts.probe_steps or opts.n_steps
        sources = {"digits": ("digits", None, ctx.shards_root)}
        if opts.mnist:
            sources["mnist"] = ("mnist", opts.mnist, None)
        if ctx.data.y_val is not None and ctx.dataset not in sources:
            sources[ctx.dataset] = (ctx.dataset, ctx.path, ctx.shards_root)
        probes = [{} if ranks.is_main else None for _ in range(n)]
        for name, (source, source_path, root) in sources.items():
            labelled = load_eval_data(source, source_path, root,
                                      ctx.data_seed if source == ctx.dataset else 0, need_train=True)
            if labelled.y_val is None:
                continue
            say(f"linear probe on {name} ({steps} steps)")
            scores = linear_probe(model, labelled, steps, opts.window, ranks, opts.batch_size,
                                  opts.probe_max_samples, opts.seed, eps)
            if ranks.is_main:
                for member_probes, score in zip(probes, scores, strict=True):
                    member_probes[name] = score
        timing["probe_s"] = time.time() - t0

    tunings: list[dict] = [{} for _ in range(n)]
    if opts.tuning and ranks.is_main:
        from fondtrain.eval.tuning import bar_of_light

        t0 = time.time()
        steps = opts.tuning_steps or opts.n_steps
        say(f"bar-of-light tuning ({steps} steps)")
        for kind in ("bar", "grating"):
            results = bar_of_light(model, kind, steps, opts.window, opts.n_orientations,
                                   device=ranks.device, seed=opts.seed, eps=eps)
            for member_tuning, result in zip(tunings, results, strict=True):
                member_tuning[kind] = result
        timing["tuning_s"] = time.time() - t0
    timing["batched_members"] = n
    return [ModelResults(conv, probe, tuning, dict(timing))
            for conv, probe, tuning in zip(convs, probes, tunings, strict=True)]


def say_to(ranks: Ranks, verbose: bool):
    """print on the main process (nothing when not verbose)."""
    def say(message: str) -> None:
        if verbose and ranks.is_main:
            print(message, flush=True)
    return say


# ----------------------------------------------------------------------------- evaluate
def evaluate(run: str | Path | None = None, checkpoint: str | Path | None = None,
             options: EvalOptions | None = None, verbose: bool = True,
             member: str | None = None) -> dict[str, dict] | None:
    """Evaluate every member of a run's newest complete checkpoint (or of `checkpoint`)
    in one batched inference per stage; write each member's results and, for a sweep,
    the sweep summary (see the module docstring).

    `member`: that member of a sweep alone, as a population of one (its results in
    RUN/eval/members/MEMBER, or --out; no sweep summary).
    Returns {member name: its metrics dict (what its metrics.json holds)} ("" names a
    plain run's one member) on the main process, None on the others.
    """
    opts = options or EvalOptions()
    if run is None and checkpoint is None:
        raise UserError("give a run directory (fondtrain eval runs/NAME) or --checkpoint PATH.")
    started = time.time()
    target = resolve_checkpoint(checkpoint if checkpoint is not None else run)
    model, config, members = load_run(target)
    indices = list(range(len(members)))
    if member is not None:  # that member alone, as a population of one
        indices = [member_index(members, member, target)]
        model, members = one_member(model, indices[0]), [members[indices[0]]]
    # The soft clamps as the run left them: a run stopped early (the quickstart) still has
    # them partly closed, and opening them fully would let its inference run away.
    eps = torch.tensor([checkpoint_eps(target, i) for i in indices], dtype=torch.float64)
    ranks = Ranks(opts.device)
    say = say_to(ranks, verbose)
    mc = model.config
    ctx = eval_context(run, target, config, mc.input_dim, opts, ranks, member)
    model = model.to(ranks.device)
    temp = inference.eval_temperature(model) if opts.temp is None else float(opts.temp)
    tags = [ctx.name() + (f"/{m.name}" if m.name else "") for m in members]
    say(f"evaluating {', '.join(tags)} ({mc.preset}, K={mc.n_latents}, M={mc.input_dim}) on {ctx.dataset}: "
        f"{len(ctx.x_val)} samples x {opts.n_steps} steps at temperature {temp:g}, clamp eps "
        f"{', '.join(f'{e:.3g}' for e in eps.tolist())}, {ranks.world} process(es) on {ranks.device}")
    results = infer(model, ctx, opts, temp, eps, say)
    ranks.barrier()
    if not ranks.is_main:
        return None
    weights = model.W.detach().cpu().numpy()
    metrics = {}
    for i, (m, tag) in enumerate(zip(members, tags, strict=True)):
        out_dir = ctx.out if member is not None else member_dir(ctx.out, m.name)
        # a plain run's evaluation logs to the run's TensorBoard, beside its training curves
        in_run_tb = member is None and not m.name and ctx.run_dir is not None
        tb_dir = ctx.run_dir / "tb" / "eval" if in_run_tb else out_dir / "tb"
        if m.name:
            say(f"member {m.name}:")
        report = ReportTarget(tag, model.members[i], weights[i], float(eps[i]), out_dir, tb_dir)
        metrics[m.name] = write_report(results[i], report, ctx.about(), opts, temp, started, say)
    if member is None and any(m.name for m in members):
        frontier, note = sweep_frontier(ctx, mc.preset, mc.n_latents, opts, say)
        table, figure = write_eval_summary(members, metrics, ctx.out, ctx.name(), frontier, note)
        say(format_sweep_table(group_members(eval_rows(members, metrics))))
        say(f"sweep summary: {table} and {figure}")
    return metrics


def sweep_frontier(ctx: EvalContext, preset: str, n_latents: int, opts: EvalOptions,
                   say) -> tuple[Frontier | None, str]:
    """(the sparse-coding frontier of ctx's validation rows, written to
    OUT/sparse_coding_frontier.tsv, or None; the line saying why it is left out, or '')
    for a sweep of `preset` with K n_latents, when opts.frontier asks for it."""
    if not opts.frontier:
        return None, ""
    note = frontier_left_out(preset)
    x_train = ctx.data.x_train
    if not note and not len(x_train):  # shards are read without their training split
        data = load_eval_data(ctx.dataset, ctx.path, ctx.shards_root, ctx.data_seed, need_train=True)
        x_train = fit_to_model(data, ctx.x_val.shape[1]).x_train
        if not len(x_train):
            note = f"sparse-coding frontier left out: {ctx.dataset} has no training split to learn from"
    if note:
        say(note)
        return None, note
    n_train = min(opts.frontier_samples, len(x_train))
    alphas = ", ".join(f"{a:g}" for a in sorted(opts.frontier_alphas))
    say(f"sparse-coding frontier: K {n_latents}, alpha {alphas}, each learnt from {n_train} training "
        f"patches of {ctx.dataset} and coding the {len(ctx.x_val)} validation samples")
    frontier = sparse_coding_frontier(x_train, ctx.x_val, n_latents, opts.frontier_alphas,
                                      opts.frontier_samples, opts.seed, ctx.dataset, say)
    path = write_frontier_tsv(frontier, ctx.out / FRONTIER_TSV)
    say(f"sparse-coding frontier: {path} ({frontier.seconds:.0f} s)")
    return frontier, ""
