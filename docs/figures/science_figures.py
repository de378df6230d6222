"""Tables and figures of docs/science.md from the runs' eval/metrics.json files.

    PYTHONPATH=. python docs/figures/science_figures.py RUNS

Prints the Markdown table and writes docs/figures/rate_distortion.png.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# The paper's iP-VAE beta trend on vH16 at T=16 (beta_outer 8 and 64).
PAPER = {8: (0.675, 0.916), 64: (0.905, 0.603)}


def _metrics(runs_root: Path) -> dict[str, dict]:
    found = {}
    for path in sorted(runs_root.glob("*/eval*/metrics.json")):
        label = path.parent.parent.name + path.parent.name[4:]
        found[label] = json.loads(path.read_text())
    return found


def table(found: dict[str, dict]) -> str:
    head = ("run", "preset", "beta", "step", "R2 pooled", "R2 median", "zeros", "lifetime",
            "population", "Gabor good / used")
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, m in found.items():
        f, g = m["final"], m.get("gabor") or {}
        rows.append("| " + " | ".join([
            label, m["model"]["preset"], f"{m['model']['beta_outer']:g}", str(m["training_step"]),
            f"{f['r2_pooled']:.3f}", f"{f['r2_median']:.3f}", f"{f['frac_zeros']:.3f}",
            f"{f['lifetime_sparseness']:.3f}", f"{f['population_sparseness']:.3f}",
            f"{g.get('n_good', '-')} / {g.get('n_used', '-')}"]) + " |")
    return "\n".join(rows)


def rate_distortion(found: dict[str, dict], path: Path) -> None:
    fig = Figure(figsize=(6.4, 4.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    # the beta trend: ipvae runs of the quickstart recipe on the current photo list (the
    # shards under sci-shards/natonly; qs-baseline used the list before issue 14)
    trend = sorted(((m["model"]["beta_outer"], m) for label, m in found.items()
                    if label.startswith("qs-") and m["model"]["preset"] == "ipvae"
                    and m["training_step"] == 1000 and "/natonly/" in str(m["data"].get("from"))),
                   key=lambda item: item[0])
    if trend:
        ax.plot([m["final"]["frac_zeros"] for _, m in trend],
                [m["final"]["r2_pooled"] for _, m in trend], "o-", color="C0",
                label="ipvae, first 1000 steps of the 100-epoch schedule (this machine)")
        for beta, m in trend:
            ax.annotate(f"{beta:g}", (m["final"]["frac_zeros"], m["final"]["r2_pooled"]),
                        textcoords="offset points", xytext=(4, 4), fontsize=8)
    in_trend = {id(m) for _, m in trend}
    for label, m in found.items():
        if label.startswith("qs-") and id(m) not in in_trend:
            ax.plot(m["final"]["frac_zeros"], m["final"]["r2_pooled"], "D", ms=7,
                    label=f"{label} (ipvae beta {m['model']['beta_outer']:g}, step "
                          f"{m['training_step']}, photo list before issue 14)")
        if label.startswith("full-"):
            ax.plot(m["final"]["frac_zeros"], m["final"]["r2_pooled"], "s", ms=8,
                    label=f"{m['model']['preset']} beta {m['model']['beta_outer']:g}, "
                          f"full {m['training_step']}-step schedule")
    zeros, r2 = zip(*PAPER.values(), strict=True)
    ax.plot(zeros, r2, "k^--", label="paper, ipvae on vH16 (beta 8, 64), T=16")
    ax.set(xlabel="fraction of zero latents", ylabel="R^2 pooled (validation)",
           title="rate-distortion, evaluated at T=1000")
    ax.legend(fontsize=7, loc="lower left")
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.12, top=0.92)
    fig.savefig(path)


if __name__ == "__main__":
    found = _metrics(Path(sys.argv[1]))
    print(table(found))
    rate_distortion(found, Path(__file__).with_name("rate_distortion.png"))
