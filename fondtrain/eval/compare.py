"""`fondtrain compare`: several runs' evaluation metrics side by side (a table printed and
written as Markdown, CSV or JSON) and their convergence curves in one figure. The table's
R^2 columns are the paper's (per-sample mean), pooled and median; the Markdown names
each below the table. `step` is the training step of the evaluated checkpoint, so that the
evaluations of one run's checkpoints (`fondtrain eval --checkpoint ... --out ...`) compare
as its trajectory; Gabor good/used counts the used units whose Gabor fit explains >= 80%
of the element's variance, the median VE is over the used units."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fondtrain.atomic_write import write_text_atomic
from fondtrain.errors import UserError
from fondtrain.eval import figures as Fg
from fondtrain.eval.report import METRICS_FILE
from fondtrain.runs import pretrained
from fondtrain.stats import R2_LABELS


def _gabor_count(m: dict) -> str | None:
    gabor = m.get("gabor") or {}
    return f"{gabor['n_good']}/{gabor['n_used']}" if "n_good" in gabor else None


COMPARE_COLUMNS = (
    ("step", lambda m: m.get("training_step")),
    ("preset", lambda m: m["model"]["preset"]),
    ("K", lambda m: m["model"]["n_latents"]),
    ("dataset", lambda m: m["dataset"] + (" (OOD)" if m.get("out_of_distribution") else "")),
    ("T", lambda m: m["n_steps"]),
    ("MSE", lambda m: m["final"].get("mse")),
    ("R2 paper", lambda m: m["final"].get("r2_mean")),
    ("R2 pooled", lambda m: m["final"].get("r2_pooled")),
    ("R2 median", lambda m: m["final"].get("r2_median")),
    ("zeros", lambda m: m["final"].get("frac_zeros")),
    ("lifetime", lambda m: m["final"].get("lifetime_sparseness")),
    ("population", lambda m: m["final"].get("population_sparseness")),
    ("loss", lambda m: m["final"].get("loss")),
    ("KL", lambda m: m["final"].get("kl", m["final"].get("kl_reference"))),
    ("probe digits", lambda m: ((m.get("probe") or {}).get("digits") or {}).get("latent_acc")),
    ("pixels digits", lambda m: ((m.get("probe") or {}).get("digits") or {}).get("pixel_acc")),
    ("Gabor good/used", _gabor_count),
    ("Gabor median VE", lambda m: (m.get("gabor") or {}).get("r2_median")),
    ("OSI median", lambda m: ((m.get("tuning") or {}).get("bar") or {}).get("osi_median")),
    ("selective", lambda m: ((m.get("tuning") or {}).get("bar") or {}).get("frac_selective")),
)


def find_metrics(entry: str | Path) -> Path:
    """metrics.json of a run directory, an eval folder, the file itself, or the one a
    pretrained model ships with (`pretrained:NAME`: its recorded evaluation)."""
    if pretrained.is_name(entry):
        path = pretrained.folder(entry) / METRICS_FILE
        if not path.is_file():
            raise UserError(f"{entry} ships no {METRICS_FILE}: evaluate it (fondtrain eval {entry}) and compare "
                            f"{pretrained.output_run_dir(pretrained.name_of(entry))} instead.")
        return path
    path = Path(entry)
    for candidate in (path, path / METRICS_FILE, path / "eval" / METRICS_FILE):
        if candidate.is_file():
            return candidate
    if not path.exists():
        raise UserError(f"{path} does not exist: give run directories (or their eval folders).")
    raise UserError(f"{path} has no {METRICS_FILE} (looked in {path} and {path / 'eval'}): "
                    f"run `fondtrain eval {path}` first.")


def _label(metrics_file: Path) -> str:
    folder = metrics_file.parent
    if folder.name.startswith("eval"):
        suffix = folder.name[4:]
        return folder.parent.name + suffix
    return folder.name


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def compare(runs: list[str | Path], out: str | Path = "compare.md", verbose: bool = True) -> str:
    """Put several runs' metrics side by side: a table (printed and written to `out`:
    Markdown, or CSV / JSON by its suffix) and their convergence curves (`out` with .png)."""
    if not runs:
        raise UserError("give at least one run directory: fondtrain compare runs/A runs/B ...")
    loaded: dict[str, dict] = {}
    for entry in runs:
        path = find_metrics(entry)
        label = str(entry) if pretrained.is_name(entry) else _label(path)
        while label in loaded:
            label += "'"
        try:
            loaded[label] = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise UserError(f"{path} is not valid JSON: run `fondtrain eval` again.") from err
    header = ["run", *[name for name, _ in COMPARE_COLUMNS]]
    rows = []
    for label, m in loaded.items():
        try:
            rows.append([label, *[_cell(get(m)) for _, get in COMPARE_COLUMNS]])
        except (KeyError, TypeError) as err:
            raise UserError(f"metrics of {label} lack {err}: re-run `fondtrain eval` on it.") from err
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    key = {"R2 paper": "r2_mean", "R2 pooled": "r2_pooled", "R2 median": "r2_median"}
    markdown = "\n".join(["| " + " | ".join(header) + " |",
                          "|" + "|".join("---" for _ in header) + "|",
                          *["| " + " | ".join(row) + " |" for row in rows], "",
                          *[f"{column}: {R2_LABELS[k]}  " for column, k in key.items()]])
    if out.suffix == ".csv":
        import csv
        import io

        text = io.StringIO(newline="")
        csv.writer(text).writerows([header, *rows])
        write_text_atomic(out, text.getvalue())
    elif out.suffix == ".json":
        write_text_atomic(out, json.dumps([dict(zip(header, row, strict=True)) for row in rows], indent=1))
    else:
        write_text_atomic(out, markdown + "\n")
    plot = out.with_suffix(".png")
    Fg.plot_compare({label: m["convergence"] for label, m in loaded.items()}, plot,
                    "convergence over inference steps")
    if verbose:
        print(markdown)
        print(f"wrote {out} and {plot}")
    return markdown
