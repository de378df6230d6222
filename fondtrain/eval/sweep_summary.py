"""A population's sweep summary (SPEC 9.4): the members side by side in the rate-distortion
plane (the paper's figure 4), drawn for the model family.

Members that differ only in their seed form a group: one point at the group's mean with
the seeds' standard deviations (ddof 1) as error bars, the single members as small dots
behind. When the groups differ in one setting only (a beta sweep), the points are joined
in that setting's order.

The rate axis depends on the family. Poisson (ipvae) and relu (igrelu) codes have exact
zeros: x is the percentage of zero latents, as in the paper. Gaussian latents (igvae) are
never exactly zero, so that axis would hold 0 for every member: x is the rate itself, the
KL per sample (nats, summed over latents) when the members' evaluations give it, else
the swept setting (e.g. beta_outer), else the groups side by side.

Distortion (y) is R^2 on the validation set, pooled (1 - sum SS_res / sum SS_tot) and,
where the members' evaluations give it, the paper's (the mean over samples of the
per-sample R^2). Writes

    sweep_summary.tsv     one line per group: its settings, n seeds, and the mean and sd
                          over seeds of R^2 pooled (r2_pooled_seed_mean / _seed_sd), of the
                          paper's R^2 (r2_paper_seed_*, evaluations only), of the % of zero
                          latents (zeros_pct_seed_*) and of the KL (kl_seed_*, evaluations
                          only)
    rate_distortion.png   the figure

With a sparse-coding frontier (`fondtrain.eval.frontier`, computed by `fondtrain eval`),
the figure of a family with exact zeros also draws it: dashed, one point per sparsity
weight, for each R^2 the members show. A Gaussian family's figure leaves it out and says
why in a line under the axes (`frontier_left_out`).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fondtrain.atomic_write import write_text_atomic
from fondtrain.config.sweep import Member, MemberRow, format_value, member_name, read_members_tsv
from fondtrain.eval import figures as Fg
from fondtrain.eval.frontier import Frontier
from fondtrain.stats import R2_LABELS

SUMMARY_TSV = "sweep_summary.tsv"
FIGURE_PNG = "rate_distortion.png"
# Presets whose activity has exact zeros (Poisson counts, relu rates): % zeros is their rate
# axis. Gaussian latents (igvae) have none.
ZERO_CODE_PRESETS = ("ipvae", "igrelu")
# The per-member numbers a summary averages over seeds, in the table's column order.
STATS = ("r2_pooled", "r2_paper", "zeros_pct", "kl")


@dataclass(frozen=True)
class SummaryRow:
    """One member's final numbers: R^2 pooled, the paper's R^2 (per-sample mean), % zero
    latents and KL per sample (NaN where unknown or not validated yet)."""

    name: str
    settings: dict[str, Any]
    r2_pooled: float
    zeros_pct: float
    r2_paper: float = math.nan
    kl: float = math.nan

    @classmethod
    def of(cls, row: MemberRow | SummaryRow) -> SummaryRow:
        """A members.tsv line (R^2 pooled and % zeros only) as a SummaryRow."""
        if isinstance(row, SummaryRow):
            return row
        return cls(row.name, row.settings, row.r2, row.zeros_pct)


@dataclass(frozen=True)
class SweepGroup:
    """Members with the same settings but their seed: n of them validated, and over those
    the mean and sd (ddof 1) of each of STATS (NaN where no member has it)."""

    label: str
    settings: dict[str, Any]
    members: tuple[str, ...]
    n: int
    mean: dict[str, float] = field(default_factory=dict)
    sd: dict[str, float] = field(default_factory=dict)


def group_members(rows: Sequence[MemberRow | SummaryRow]) -> list[SweepGroup]:
    """Groups of members that differ only in `seed`, in order of first appearance; a
    member counts once validated (finite R^2 pooled and % zeros)."""
    grouped: dict[tuple, list[SummaryRow]] = {}
    for row in map(SummaryRow.of, rows):
        key = tuple((k, v) for k, v in row.settings.items() if k != "seed")
        grouped.setdefault(key, []).append(row)
    groups = []
    for key, members in grouped.items():
        settings = dict(key)
        done = [m for m in members if math.isfinite(m.r2_pooled) and math.isfinite(m.zeros_pct)]
        values = {s: np.array([getattr(m, s) for m in done], dtype=float) for s in STATS}
        groups.append(SweepGroup(
            label=member_name(settings) if settings else "all", settings=settings,
            members=tuple(m.name for m in members), n=len(done),
            mean={s: _mean(v) for s, v in values.items()}, sd={s: _sd(v) for s, v in values.items()}))
    return groups


def _mean(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else math.nan


def _sd(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(values.std(ddof=1)) if values.size > 1 else 0.0 if values.size else math.nan


def _known(groups: Sequence[SweepGroup], stat: str) -> bool:
    return any(math.isfinite(g.mean[stat]) for g in groups)


def format_sweep_table(groups: Sequence[SweepGroup]) -> str:
    """The groups as an aligned text table (printed by `fondtrain eval`), each number the
    mean +- sd over seeds, and a line naming each R^2."""
    columns = [("R2 pooled", "r2_pooled", 3), ("R2 paper", "r2_paper", 3), ("zeros %", "zeros_pct", 1),
               ("KL", "kl", 1)]
    columns = [c for c in columns if _known(groups, c[1])]
    header = ["group", "seeds", *[name for name, _, _ in columns]]
    lines = [[g.label, str(g.n), *[f"{g.mean[s]:.{d}f} +- {g.sd[s]:.{d}f}" for _, s, d in columns]]
             for g in groups]
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]
    table = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
             for r in [header, *lines]]
    table.append("mean +- sd over seeds. " + R2_LABELS["r2_pooled"] + "; "
                 + (R2_LABELS["r2_mean"] if _known(groups, "r2_paper") else "the paper's R^2 needs an evaluation"))
    return "\n".join(table)


def frontier_left_out(preset: str) -> str:
    """Why the sparse-coding frontier has no place on `preset`'s figure ('' when it has)."""
    if preset in ZERO_CODE_PRESETS:
        return ""
    return (f"sparse-coding frontier left out: {preset} latents are Gaussian, never exactly zero, "
            "so a sparse code's % zeros has no place on this figure's rate axis")


def write_sweep_summary(rows: Sequence[MemberRow | SummaryRow], out_dir: str | Path, title: str = "",
                        preset: str = "ipvae", frontier: Frontier | None = None,
                        note: str = "") -> tuple[Path, Path]:
    """Write sweep_summary.tsv and rate_distortion.png (drawn for `preset`'s family, with
    the sparse-coding `frontier` where its axes allow, and `note` under the axes) for
    `rows` into out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [SummaryRow.of(r) for r in rows]
    groups = group_members(rows)
    names = list(groups[0].settings) if groups else []
    stats = [s for s in STATS if s in ("r2_pooled", "zeros_pct") or _known(groups, s)]
    header = ["group", *names, "seeds", *[f"{s}_seed_{m}" for s in stats for m in ("mean", "sd")]]
    lines = ["\t".join(header)]
    for g in groups:
        lines.append("\t".join([g.label, *(format_value(g.settings[s]) for s in names), str(g.n),
                                *(repr(d[s]) for s in stats for d in (g.mean, g.sd))]))
    table = write_text_atomic(out_dir / SUMMARY_TSV, "\n".join(lines) + "\n")
    if frontier is not None and frontier_left_out(preset):
        frontier, note = None, note or frontier_left_out(preset)
    return table, _rate_distortion_figure(rows, groups, out_dir / FIGURE_PNG, title, preset, frontier, note)


def eval_rows(members: Sequence[Member], metrics: dict[str, dict]) -> list[SummaryRow]:
    """Each member's final R^2 pooled, paper's R^2, % zero latents and KL (its configured
    form, for Poisson) from its metrics.json dict metrics[name]."""
    rows = []
    for m in members:
        final, model = metrics[m.name]["final"], metrics[m.name]["model"]
        kl = "kl" if "kl" in final else f"kl_{model.get('poisson_kl') or 'reference'}"
        rows.append(SummaryRow(m.name, m.settings, _final(final, "r2_pooled"),
                               100.0 * _final(final, "frac_zeros"), _final(final, "r2_mean"),
                               _final(final, kl)))
    return rows


def write_eval_summary(members: Sequence[Member], metrics: dict[str, dict], out_dir: str | Path,
                       title: str = "", frontier: Frontier | None = None, note: str = "") -> tuple[Path, Path]:
    """The summary of an evaluation of a sweep's members (`eval_rows`) at the last
    inference step (metrics[name]: a member's metrics.json), with the sparse-coding
    frontier of the same validation samples where given."""
    preset = next(iter(metrics.values()))["model"]["preset"] if metrics else "ipvae"
    return write_sweep_summary(eval_rows(members, metrics), out_dir, title, preset, frontier, note)


def _final(final: dict, key: str) -> float:
    value = final.get(key)
    return math.nan if value is None else float(value)


def summarise_sweep(run_dir: str | Path, out_dir: str | Path | None = None) -> tuple[Path, Path]:
    """The summary of the population run in run_dir from its members.tsv (drawn for the
    preset in its config.yaml)."""
    from fondtrain.config import load_yaml

    config = Path(run_dir) / "config.yaml"
    preset = (load_yaml(config).get("model") or {}).get("preset", "ipvae") if config.is_file() else "ipvae"
    return write_sweep_summary(read_members_tsv(run_dir), out_dir or run_dir, title=Path(run_dir).name,
                               preset=preset)


def _rate_axis(rows: Sequence[SummaryRow], groups: Sequence[SweepGroup], preset: str):
    """(value of a row, (mean, sd) of a group, axis label, tick labels or None) for the x
    axis of `preset`'s family (see the module docstring)."""
    if preset in ZERO_CODE_PRESETS:
        return (lambda r: r.zeros_pct), (lambda g: (g.mean["zeros_pct"], g.sd["zeros_pct"])), \
            "zero latents (%)", None
    if _known(groups, "kl"):
        return (lambda r: r.kl), (lambda g: (g.mean["kl"], g.sd["kl"])), \
            "rate: KL per sample (nats, sum over latents)", None
    varying = _varying(groups)
    if len(varying) == 1 and all(isinstance(g.settings[varying[0]], int | float) for g in groups):
        name = varying[0]
        return (lambda r: float(r.settings[name])), (lambda g: (float(g.settings[name]), 0.0)), name, None
    index = {g.label: i for i, g in enumerate(groups)}
    label_of = {m: g.label for g in groups for m in g.members}
    return (lambda r: float(index[label_of[r.name]])), (lambda g: (float(index[g.label]), 0.0)), \
        "group", [g.label for g in groups]


def _varying(groups: Sequence[SweepGroup]) -> list[str]:
    shown = [g for g in groups if g.n]
    return [k for k in (shown[0].settings if shown else {}) if len({g.settings[k] for g in shown}) > 1]


def _rate_distortion_figure(rows: Sequence[SummaryRow], groups: Sequence[SweepGroup], path: Path,
                            title: str, preset: str, frontier: Frontier | None = None, note: str = "") -> Path:
    fig = Fg.new_figure(6.4, 4.8)
    ax = fig.add_axes((0.12, 0.17, 0.84, 0.69) if note else (0.12, 0.12, 0.84, 0.74))
    x_row, x_group, x_label, ticks = _rate_axis(rows, groups, preset)
    shown = [g for g in groups if g.n]
    varying = _varying(groups)
    ys = [("r2_pooled", "C0", "o", "R^2 pooled")]
    if _known(groups, "r2_paper"):
        ys.append(("r2_paper", "C1", "s", "R^2 paper (per-sample mean)"))
    for stat, color, marker, label in ys:
        done = [r for r in rows if math.isfinite(getattr(r, stat)) and math.isfinite(x_row(r))]
        ax.scatter([x_row(r) for r in done], [getattr(r, stat) for r in done], s=10, color=color,
                   alpha=0.35, zorder=1)
        points = [g for g in shown if math.isfinite(g.mean[stat]) and math.isfinite(x_group(g)[0])]
        if len(varying) == 1:  # one setting swept (besides seeds): draw the curve in its order
            line = sorted(points, key=lambda g: g.settings[varying[0]])
            ax.plot([x_group(g)[0] for g in line], [g.mean[stat] for g in line], color=color, lw=1, zorder=2)
        for i, g in enumerate(points):
            x, x_sd = x_group(g)
            ax.errorbar(x, g.mean[stat], xerr=x_sd, yerr=g.sd[stat], fmt=marker, color=color, capsize=3,
                        zorder=3, label=label if i == 0 else None)
            if stat == "r2_pooled":
                ax.annotate(g.label, (x, g.mean[stat]), textcoords="offset points", xytext=(5, 5), fontsize=8)
        if frontier is not None:
            _draw_frontier(ax, frontier, stat, color, label)
    if ticks is not None:
        ax.set_xticks(range(len(ticks)), ticks, fontsize=8)
    ax.set_xlabel(x_label)
    ax.set_ylabel("R$^2$ (validation)")
    ax.legend(fontsize=8, loc="best")
    family = "exact zeros" if preset in ZERO_CODE_PRESETS else "Gaussian latents, no exact zeros"
    dashed = f"; dashed: sparse coding, K {frontier.n_atoms}" if frontier is not None else ""
    ax.set_title(f"{title + ': ' if title else ''}rate-distortion ({preset}, {family}),\n"
                 f"mean +- sd over seeds{dashed}", fontsize=10)
    ax.grid(alpha=0.3)
    if note:
        fig.text(0.01, 0.01, textwrap.fill(note, 110), fontsize=7, color="0.3")
    return Fg.save_figure(fig, path)


def _draw_frontier(ax, frontier: Frontier, stat: str, color: str, label: str) -> None:
    """The frontier's points for R^2 `stat` (the members' r2_pooled or r2_paper), dashed
    in the members' colour; the pooled curve names each point's alpha."""
    points = [p for p in frontier.points if math.isfinite(getattr(p, stat))]
    ax.plot([p.zeros_pct for p in points], [getattr(p, stat) for p in points], ls="--", marker="^",
            ms=5, lw=1, color=color, alpha=0.8, zorder=2, label=f"sparse coding, {label}")
    if stat == "r2_pooled":
        for p in points:
            ax.annotate(f"alpha {p.alpha:g}", (p.zeros_pct, p.r2_pooled), textcoords="offset points",
                        xytext=(4, -10), fontsize=7, color="0.35")
