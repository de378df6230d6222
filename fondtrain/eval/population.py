"""`fondtrain eval RUN` on a population run: every member's evaluation and the sweep
summary (SPEC 9.4).

Each member is evaluated as the single model it is (`evaluate(..., member=NAME)`:
RUN/eval/members/NAME/metrics.json and figures), one after another; then
RUN/eval/sweep_summary.tsv and RUN/eval/rate_distortion.png put the members side by side:
the evaluation's pooled R^2 at the last step against its percentage of zero latents,
seeds of the same settings as error bars.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from fondtrain.eval.evaluate import EvalOptions, evaluate
from fondtrain.eval.sweep_summary import write_sweep_summary
from fondtrain.members_table import MemberRow
from fondtrain.run_files import resolve_checkpoint, run_members


def evaluate_population(run: str | Path | None, checkpoint: str | Path | None,
                        options: EvalOptions | None = None, verbose: bool = True) -> dict[str, dict]:
    """Evaluate every member of the population at `run` (or `checkpoint`); write the sweep
    summary. Returns {member name: its metrics} (empty on ranks other than the main one)."""
    opts = options or EvalOptions()
    target = resolve_checkpoint(checkpoint if checkpoint is not None else run)
    members = run_members(target)
    results: dict[str, dict] = {}
    for member in members:
        member_opts = opts if opts.out is None else _with_out(opts, Path(opts.out) / "members" / member.name)
        metrics = evaluate(run, checkpoint, member_opts, verbose, member=member.name)
        if metrics is not None:
            results[member.name] = metrics
    if not results:
        return results
    rows = [MemberRow(m.name, m.settings, _final(results[m.name], "r2_pooled"),
                      100.0 * _final(results[m.name], "frac_zeros")) for m in members]
    base = Path(opts.out) if opts.out is not None else (Path(run) if run is not None else target) / "eval"
    table, figure = write_sweep_summary(rows, base, title=Path(run or target).name)
    if verbose:
        print(f"sweep summary: {table} and {figure}", flush=True)
    return results


def _final(metrics: dict, key: str) -> float:
    value = metrics.get("final", {}).get(key)
    return math.nan if value is None else float(value)


def _with_out(opts: EvalOptions, out: Path) -> EvalOptions:
    return dataclasses.replace(opts, out=str(out))
