"""A population's sweep summary (SPEC 9.4): the members side by side in the rate-distortion
plane, R^2 against the percentage of zero latents (the paper's figure 4).

Members that differ only in their seed form a group: one point at the group's mean with
the seeds' standard deviations (ddof 1) as error bars in both directions, the single
members as small dots behind. When the groups differ in one setting only (a beta sweep),
the points are joined in that setting's order. Writes

    sweep_summary.tsv     one line per group: its settings, n seeds, R^2 and % zeros mean/sd
    rate_distortion.png   the figure
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fondtrain.eval.figures import DPI
from fondtrain.sweep import Member, MemberRow, format_value, member_name, read_members_tsv

SUMMARY_TSV = "sweep_summary.tsv"
FIGURE_PNG = "rate_distortion.png"


@dataclass(frozen=True)
class SweepGroup:
    """Members with the same settings but their seed; statistics over those validated."""

    label: str
    settings: dict[str, Any]
    members: tuple[str, ...]
    n: int
    r2_mean: float
    r2_sd: float
    zeros_mean: float
    zeros_sd: float


def group_members(rows: Sequence[MemberRow]) -> list[SweepGroup]:
    """Groups of members that differ only in `seed`, in order of first appearance."""
    grouped: dict[tuple, list[MemberRow]] = {}
    for row in rows:
        key = tuple((k, v) for k, v in row.settings.items() if k != "seed")
        grouped.setdefault(key, []).append(row)
    groups = []
    for key, members in grouped.items():
        settings = dict(key)
        done = [m for m in members if math.isfinite(m.r2) and math.isfinite(m.zeros_pct)]
        r2 = np.array([m.r2 for m in done])
        zeros = np.array([m.zeros_pct for m in done])
        groups.append(SweepGroup(
            label=member_name(settings) if settings else "all", settings=settings,
            members=tuple(m.name for m in members), n=len(done),
            r2_mean=_mean(r2), r2_sd=_sd(r2), zeros_mean=_mean(zeros), zeros_sd=_sd(zeros)))
    return groups


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else math.nan


def _sd(values: np.ndarray) -> float:
    return float(values.std(ddof=1)) if values.size > 1 else 0.0 if values.size else math.nan


def format_sweep_table(groups: Sequence[SweepGroup]) -> str:
    """The groups as an aligned text table (printed by `fondtrain eval`)."""
    header = ["group", "seeds", "R2", "zeros %"]
    lines = [[g.label, str(g.n), f"{g.r2_mean:.3f} +- {g.r2_sd:.3f}", f"{g.zeros_mean:.1f} +- {g.zeros_sd:.1f}"]
             for g in groups]
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
                     for r in [header, *lines])


def write_sweep_summary(rows: Sequence[MemberRow], out_dir: str | Path, title: str = "") -> tuple[Path, Path]:
    """Write sweep_summary.tsv and rate_distortion.png for `rows` into out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = group_members(rows)
    names = list(groups[0].settings) if groups else []
    lines = ["\t".join(["group", *names, "seeds", "r2_mean", "r2_sd", "zeros_pct_mean", "zeros_pct_sd"])]
    for g in groups:
        lines.append("\t".join([g.label, *(format_value(g.settings[s]) for s in names), str(g.n),
                                *(repr(v) for v in (g.r2_mean, g.r2_sd, g.zeros_mean, g.zeros_sd))]))
    table = out_dir / SUMMARY_TSV
    table.write_text("\n".join(lines) + "\n")
    return table, _rate_distortion_figure(rows, groups, out_dir / FIGURE_PNG, title)


def write_eval_summary(members: Sequence[Member], metrics: dict[str, dict], out_dir: str | Path,
                       title: str = "") -> tuple[Path, Path]:
    """The summary of an evaluation of a sweep's members: R^2 pooled and the percentage
    of zero latents at the last inference step (metrics[name]: a member's metrics.json)."""
    rows = [MemberRow(m.name, m.settings, _final(metrics[m.name], "r2_pooled"),
                      100.0 * _final(metrics[m.name], "frac_zeros")) for m in members]
    return write_sweep_summary(rows, out_dir, title)


def _final(metrics: dict, key: str) -> float:
    value = metrics["final"].get(key)
    return math.nan if value is None else float(value)


def summarise_sweep(run_dir: str | Path, out_dir: str | Path | None = None) -> tuple[Path, Path]:
    """The summary of the population run in run_dir from its members.tsv."""
    return write_sweep_summary(read_members_tsv(run_dir), out_dir or run_dir, title=Path(run_dir).name)


def _rate_distortion_figure(rows: Sequence[MemberRow], groups: Sequence[SweepGroup], path: Path,
                            title: str) -> Path:
    fig = Figure(figsize=(6.0, 4.5), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.12, 0.12, 0.84, 0.78))
    done = [r for r in rows if math.isfinite(r.r2) and math.isfinite(r.zeros_pct)]
    ax.scatter([r.zeros_pct for r in done], [r.r2 for r in done], s=10, color="0.6", zorder=1)
    shown = [g for g in groups if g.n]
    varying = [k for k in (shown[0].settings if shown else {}) if len({g.settings[k] for g in shown}) > 1]
    if len(varying) == 1:  # one setting swept (besides seeds): draw the curve in its order
        line = sorted(shown, key=lambda g: g.settings[varying[0]])
        ax.plot([g.zeros_mean for g in line], [g.r2_mean for g in line], color="C0", lw=1, zorder=2)
    for g in shown:
        ax.errorbar(g.zeros_mean, g.r2_mean, xerr=g.zeros_sd, yerr=g.r2_sd, fmt="o", color="C0",
                    capsize=3, zorder=3)
        ax.annotate(g.label, (g.zeros_mean, g.r2_mean), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel("zero latents (%)")
    ax.set_ylabel("R$^2$ (validation)")
    ax.set_title(f"{title + ': ' if title else ''}rate-distortion, mean +- sd over seeds", fontsize=10)
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=DPI)
    return path
