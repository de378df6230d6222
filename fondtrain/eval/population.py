"""`fondtrain eval RUN` on a population run: every member's evaluation in one batched
inference, and the sweep summary (SPEC 9.4).

The population is loaded once as the population model (`run_files.load_population`:
member i at index i of the leading axis P) and each stage that runs the model (the
convergence table on the validation rows, the probes' features, the tuning responses;
`evaluate.infer`) runs all members at once through the inference engine. Member i
samples from its own generator, seeded as its single evaluation's
(`evaluate(..., member=NAME)`), with its own beta_outer and clamp opening eps: its
numbers are that evaluation's, up to the rounding of batched products (tested). Then the
per-member work that runs no model (Gabor fits of its dictionary, the probes' logistic
regressions, tuning curves, figures) writes RUN/eval/members/NAME/ exactly as the single
evaluation does, and RUN/eval/sweep_summary.tsv and RUN/eval/rate_distortion.png put the
members side by side: the pooled R^2 at the last step against the percentage of zero
latents, seeds of the same settings as error bars.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from fondtrain.eval.convergence import eval_temperature
from fondtrain.eval.dist import Ranks
from fondtrain.eval.evaluate import EvalOptions, eval_context, infer, say_to
from fondtrain.eval.report import ReportTarget, write_report
from fondtrain.eval.sweep_summary import write_sweep_summary
from fondtrain.members_table import MemberRow
from fondtrain.run_files import checkpoint_eps, load_population, resolve_checkpoint


def evaluate_population(run: str | Path | None, checkpoint: str | Path | None,
                        options: EvalOptions | None = None, verbose: bool = True) -> dict[str, dict]:
    """Evaluate every member of the population at `run` (or `checkpoint`) in one batched
    inference; write each member's results and the sweep summary. Returns {member name:
    its metrics} (empty on ranks other than the main one)."""
    opts = options or EvalOptions()
    started = time.time()
    target = resolve_checkpoint(checkpoint if checkpoint is not None else run)
    model, config, members = load_population(target)
    ranks = Ranks(opts.device)
    say = say_to(ranks, verbose)
    mc = model.config
    ctx = eval_context(run, target, config, mc.input_dim, opts, ranks)
    model = model.to(ranks.device)
    temp = eval_temperature(model) if opts.temp is None else float(opts.temp)
    eps_list = [checkpoint_eps(target, i) for i in range(len(members))]
    # one float when the members share it (the usual case: schedules alike): the clamp
    # constants are then computed exactly as a single evaluation's
    eps = eps_list[0] if len(set(eps_list)) == 1 else torch.tensor(eps_list)
    say(f"evaluating {ctx.name()} ({mc.preset}, K={mc.n_latents}, M={mc.input_dim}), "
        f"{len(members)} members batched, on {ctx.dataset}: {len(ctx.x_val)} samples x "
        f"{opts.n_steps} steps at temperature {temp:g}, {ranks.world} process(es) on {ranks.device}")
    results = infer(model, ctx, opts, temp, eps, say)
    ranks.barrier()
    if not ranks.is_main:
        return {}
    weights = model.W.detach().cpu().numpy()
    metrics = {}
    for i, (member, member_results) in enumerate(zip(members, results, strict=True)):
        out_dir = ctx.out / "members" / member.name
        say(f"member {member.name}:")
        report = ReportTarget(f"{ctx.name()}/{member.name}", member.config.model, weights[i],
                              eps_list[i], out_dir, out_dir / "tb")
        metrics[member.name] = write_report(member_results, report, ctx.about(), opts, temp,
                                            started, say)
    rows = [MemberRow(m.name, m.settings, _final(metrics[m.name], "r2_pooled"),
                      100.0 * _final(metrics[m.name], "frac_zeros")) for m in members]
    table, figure = write_sweep_summary(rows, ctx.out, title=ctx.name())
    say(f"sweep summary: {table} and {figure}")
    return metrics


def _final(metrics: dict, key: str) -> float:
    value = metrics.get("final", {}).get(key)
    return math.nan if value is None else float(value)
