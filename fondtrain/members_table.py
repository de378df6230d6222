"""A population run's member table and member folders (below train/ and eval/, which
both use them):

    runs/<sweep>/members.tsv              name, the swept settings, final val R^2, % zeros
    runs/<sweep>/members/<member>/        a member's own outputs (its TensorBoard run: tb/)

The table is written when the run starts (results "nan") and rewritten with each
member's final validation; it is replaced atomically, so a reader never sees half a file.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fondtrain.errors import UserError
from fondtrain.sweep import Member, coerce_value, format_value

MEMBERS_TSV = "members.tsv"
MEMBERS_DIR = "members"
R2_COLUMN = "val_r2"
ZEROS_COLUMN = "zeros_pct"


def member_dir(run_dir: str | Path, name: str) -> Path:
    """The folder of member `name` of the population run in `run_dir`."""
    return Path(run_dir) / MEMBERS_DIR / name


@dataclass(frozen=True)
class MemberRow:
    """One line of members.tsv: R^2 pooled over the validation set and the percentage of
    zero latents (NaN until the member has been validated)."""

    name: str
    settings: dict[str, Any]
    r2: float
    zeros_pct: float


def write_members_tsv(run_dir: str | Path, members: Sequence[Member],
                      results: Mapping[str, Mapping[str, float]] | None = None) -> Path:
    """Write runs/<sweep>/members.tsv. results[name]: a member's validation metrics with
    'val/r2_pooled' and 'val/zeros' (a fraction); members without results get nan."""
    results = results or {}
    settings = list(members[0].settings) if members else []
    lines = ["\t".join(["name", *settings, R2_COLUMN, ZEROS_COLUMN])]
    for member in members:
        values = results.get(member.name, {})
        r2 = float(values.get("val/r2_pooled", math.nan))
        zeros = 100.0 * float(values.get("val/zeros", math.nan))
        lines.append("\t".join([member.name, *(format_value(member.settings[s]) for s in settings),
                                repr(r2), repr(zeros)]))
    path = Path(run_dir) / MEMBERS_TSV
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tsv.partial")
    partial.write_text("\n".join(lines) + "\n")
    os.replace(partial, path)
    return path


def read_members_tsv(run_dir: str | Path) -> list[MemberRow]:
    """The member table of the population run in `run_dir` (settings as their types)."""
    path = Path(run_dir) / MEMBERS_TSV
    if not path.is_file():
        raise UserError(f"{run_dir} has no {MEMBERS_TSV}: it is not a population run (train one with --sweep).")
    header, *lines = [line.split("\t") for line in path.read_text().splitlines() if line]
    if header[:1] != ["name"] or header[-2:] != [R2_COLUMN, ZEROS_COLUMN]:
        raise UserError(f"{path} is not a member table (columns name, settings, {R2_COLUMN}, {ZEROS_COLUMN}).")
    names = header[1:-2]
    rows = []
    for cells in lines:
        if len(cells) != len(header):
            raise UserError(f"{path} has a line with {len(cells)} columns instead of {len(header)}.")
        settings = {n: coerce_value(n, v) for n, v in zip(names, cells[1:-2], strict=True)}
        rows.append(MemberRow(cells[0], settings, float(cells[-2]), float(cells[-1])))
    return rows
