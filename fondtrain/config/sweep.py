"""A sweep: the members of a population run (SPEC 9), from a grid or a list of settings.

Members share every shape (preset, sizes, t_train, iterations, batch, data) and differ
only in per-member settings (`PER_MEMBER`). Three forms, all giving `Member`s:

    --sweep "beta_outer=8,16,24,32 seed=0,1,2"        a grid: 12 members, b8-s0 ... b32-s2
    sweep: {beta_outer: [8, 16], seed: [0, 1, 2]}     the same grid as a YAML `sweep:` section
    sweep: [{beta_outer: 8, lr: 2e-3}, {beta_outer: 16}]   explicit members

A grid is the product of its value lists, the first setting varying slowest. Every
member carries every setting the sweep names (the base config's value where a listed
member leaves one out), and is named from those values in sweep order (`member_name`).
A bad sweep raises one UserError before anything is written. A plain run is a population of
one member, named "", whose outputs are the run's own (`run_members`).

What a sweep keeps in its run folder:

    runs/<sweep>/members.tsv              name, the swept settings, final val R^2, % zeros
    runs/<sweep>/members/<member>/        a member's own outputs (its TensorBoard run: tb/)

The table is written when the run starts (results "nan") and rewritten with each member's
final validation; it is replaced atomically, so a reader never sees half a file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fondtrain.atomic_write import write_text_atomic
from fondtrain.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from fondtrain.errors import UserError

# Per-member setting -> (its config fields as (section, field), short name in member names).
# `seed` seeds a member's initial weights and its sampler noise (and its data order when
# members read the data in their own order); data.seed, which builds the built-in data
# sets, stays the run's.
PER_MEMBER: dict[str, tuple[tuple[tuple[str, str], ...], str]] = {
    "seed": ((("model", "seed"), ("train", "seed")), "s"),
    "beta_outer": ((("model", "beta_outer"),), "b"),
    "beta_inner": ((("model", "beta_inner"),), "bi"),
    "init_scale": ((("model", "init_scale"),), "is"),
    "poisson_kl": ((("model", "poisson_kl"),), "kl"),
    "lr": ((("train", "lr"),), "lr"),
    "lr_min": ((("train", "lr_min"),), "lrmin"),
    "weight_decay": ((("train", "weight_decay"),), "wd"),
    "grad_clip": ((("train", "grad_clip"),), "gc"),
    "warmup_portion": ((("train", "warmup_portion"),), "wu"),
    "beta_min": ((("train", "beta_min"),), "bmin"),
    "kl_const_portion": ((("train", "kl_const_portion"),), "klc"),
    "kl_anneal_portion": ((("train", "kl_anneal_portion"),), "kla"),
    "temp_start": ((("train", "temp_start"),), "ts"),
    "temp_stop": ((("train", "temp_stop"),), "te"),
    "temp_anneal_portion": ((("train", "temp_anneal_portion"),), "ta"),
}
# Settings that fix the models' shapes or their data: different values are different runs.
SHAPE_DEFINING = frozenset({
    "preset", "input_dim", "n_latents", "t_train", "n_iters_outer", "n_iters_inner",
    "batch_size", "grad_accum", "dataset", "path", "shards_root", "feeder",
})
_INT_SETTINGS = frozenset({"seed"})
_STR_SETTINGS = frozenset({"poisson_kl"})
_SAFE_NAME = re.compile(r"^[A-Za-z0-9._+-]+$")


@dataclass(frozen=True)
class Member:
    """One model of a population: its name, the swept settings' values (in sweep order)
    and the complete config of the single-model run it is equivalent to."""

    name: str
    settings: dict[str, Any]
    config: RunConfig


def run_members(config: RunConfig) -> list[Member]:
    """The members of the run `config` describes: its sweep's, or the run itself as its one
    member (named "", no swept settings)."""
    if not config.train.sweep:
        return [Member("", {}, config)]
    return members_from_sweep(config, config.train.sweep)


def members_from_sweep(base: RunConfig, sweep: str | dict | list) -> list[Member]:
    """The members of `sweep` over `base` (the run's config with every flag applied).

    sweep: the `--sweep` string ("name=v1,v2 name2=v3,..." a grid; a string starting
    with '[' or '{' is read as YAML), a dict (a grid: setting -> value or list of values)
    or a list of dicts (explicit members). Raises UserError on an empty sweep, an unknown,
    shape-defining or run-wide setting, a bad value or two members with equal settings.
    """
    if isinstance(sweep, str):
        sweep = _parse_string(sweep)
    if isinstance(sweep, dict):
        rows = _grid_rows(sweep)
    elif isinstance(sweep, list | tuple):
        rows = _list_rows(sweep)
    else:
        raise UserError(f"a sweep is a grid (setting: values) or a list of members, not {type(sweep).__name__}.")
    order: list[str] = []
    for row in rows:
        order.extend(name for name in row if name not in order)
    if not rows or not order:
        raise UserError("the sweep is empty: give at least one setting with values, e.g. --sweep 'seed=0,1,2'.")
    members, seen = [], {}
    for row in rows:
        settings = {name: row[name] if name in row else _base_value(base, name) for name in order}
        name = member_name(settings)
        if name in seen:
            raise UserError(f"the sweep has member {name} twice: every member needs its own settings.")
        seen[name] = True
        members.append(Member(name, settings, _member_config(base, settings, name)))
    return members


def member_name(settings: dict[str, Any]) -> str:
    """A filesystem-safe name from settings in order: {beta_outer: 8, seed: 0} -> 'b8-s0'.

    Distinct values give distinct names (integral floats print as integers, others in
    Python's shortest round-trip form: 0.005, 1e-05)."""
    parts = []
    for setting, value in settings.items():
        text = format_value(value)
        if not _SAFE_NAME.match(text):
            raise UserError(f"sweep value {value!r} of {setting} cannot be part of a member name: "
                            "use letters, digits, '.', '+' or '-'.")
        parts.append(PER_MEMBER[setting][1] + text)
    return "-".join(parts)


def split_sweep(raw: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """A YAML config mapping without its `sweep:` section, and that section (None if
    absent): `RunConfig.from_dict` takes the first, `members_from_sweep` the second. A
    --sweep flag replaces the file's section."""
    rest = {key: value for key, value in raw.items() if key != "sweep"}
    return rest, raw.get("sweep")


def sweep_digest(members: list[Member]) -> str:
    """8 hex digits identifying the member list (for a deterministic default run name,
    so that re-running the same sweep command resumes its run)."""
    return hashlib.sha1("\n".join(m.name for m in members).encode()).hexdigest()[:8]


# ----------------------------------------------------------------------------- parsing
def _parse_string(text: str) -> dict | list:
    text = text.strip()
    if text.startswith(("[", "{")):
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise UserError(f"--sweep {text!r} is not valid YAML ({err.__class__.__name__}).") from err
    grid: dict[str, list[str]] = {}
    for item in text.split():
        name, sep, values = item.partition("=")
        if not sep or not name:
            raise UserError(f"sweep item {item!r} is not name=value[,value...]: "
                            "e.g. --sweep 'beta_outer=8,16 seed=0,1'.")
        if name in grid:
            raise UserError(f"the sweep names {name} twice: list all its values once, e.g. {name}=1,2,3.")
        grid[name] = [v for v in values.split(",") if v]
    return grid


def _grid_rows(grid: dict) -> list[dict[str, Any]]:
    names = list(grid)
    for name in names:
        _check_setting(name)
    lists = []
    for name in names:
        values = grid[name] if isinstance(grid[name], list | tuple) else [grid[name]]
        if not values:
            raise UserError(f"the sweep gives no values for {name}: list at least one, e.g. {name}=1,2.")
        lists.append([coerce_value(name, v) for v in values])
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*lists)]


def _list_rows(items: list | tuple) -> list[dict[str, Any]]:
    rows = []
    for item in items:
        if not isinstance(item, dict):
            raise UserError(f"each listed sweep member is a mapping of settings, not {item!r}.")
        for name in item:
            _check_setting(name)
        rows.append({name: coerce_value(name, value) for name, value in item.items()})
    return rows


def _check_setting(name: Any) -> None:
    if name in PER_MEMBER:
        return
    if name in SHAPE_DEFINING:
        raise UserError(f"{name} changes the models' shapes or data, which a population's members share: "
                        "run those as separate runs, one per value.")
    fields = {f.name for kind in (ModelConfig, DataConfig, TrainConfig) for f in dataclasses.fields(kind)}
    if name in fields:
        raise UserError(f"{name} is a setting of the whole run, not of a member: set it once outside the sweep "
                        "(or run separate runs).")
    raise UserError(f"unknown sweep setting {name!r}: a sweep varies {', '.join(PER_MEMBER)}.")


def coerce_value(name: str, value: Any) -> Any:
    """A sweep value as its setting's type (strings from --sweep or members.tsv are parsed)."""
    if name in _STR_SETTINGS:
        if not isinstance(value, str):
            raise UserError(f"{name} takes a word, not {value!r}.")
        return value
    if isinstance(value, str):
        try:
            value = int(value) if name in _INT_SETTINGS else float(value)
        except ValueError:
            kind = "a whole number" if name in _INT_SETTINGS else "a number"
            raise UserError(f"sweep value {value!r} of {name} is not {kind}.") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UserError(f"sweep value {value!r} of {name} is not a number.")
    if name in _INT_SETTINGS:
        if isinstance(value, float) and not value.is_integer():
            raise UserError(f"sweep value {value!r} of {name} is not a whole number.")
        return int(value)
    if not math.isfinite(value):
        raise UserError(f"sweep value {value!r} of {name} is not a finite number.")
    return float(value)


def format_value(value: Any) -> str:
    """A setting's value as text, exactly (member names and members.tsv)."""
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    return str(value)


def _base_value(base: RunConfig, name: str) -> Any:
    section, field_name = PER_MEMBER[name][0][0]
    return getattr(getattr(base, section), field_name)


def _member_config(base: RunConfig, settings: dict[str, Any], name: str) -> RunConfig:
    """`base` with the member's settings, validated by the config dataclasses."""
    changes: dict[str, dict[str, Any]] = {"model": {}, "data": {}, "train": {}}
    for setting, value in settings.items():
        for section, field_name in PER_MEMBER[setting][0]:
            changes[section][field_name] = value
    try:
        return RunConfig(**{section: dataclasses.replace(getattr(base, section), **values)
                            for section, values in changes.items()})
    except UserError as err:
        raise UserError(f"sweep member {name}: {err}") from None


# ----------------------------------------------------------------------------- member table
MEMBERS_TSV = "members.tsv"
MEMBERS_DIR = "members"
R2_COLUMN = "val_r2_pooled"
# the same column in tables written before it was named for which R^2 it holds
LEGACY_R2_COLUMN = "val_r2"
ZEROS_COLUMN = "zeros_pct"


def member_dir(run_dir: str | Path, name: str) -> Path:
    """The folder of member `name` of the run in `run_dir`: runs/<sweep>/members/<name>,
    and for a plain run's one member (named "") the run folder itself."""
    return Path(run_dir) / MEMBERS_DIR / name if name else Path(run_dir)


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
    return write_text_atomic(path, "\n".join(lines) + "\n")


def read_members_tsv(run_dir: str | Path) -> list[MemberRow]:
    """The member table of the population run in `run_dir` (settings as their types)."""
    path = Path(run_dir) / MEMBERS_TSV
    if not path.is_file():
        raise UserError(f"{run_dir} has no {MEMBERS_TSV}: it is not a population run (train one with --sweep).")
    header, *lines = [line.split("\t") for line in path.read_text().splitlines() if line]
    if header[:1] != ["name"] or header[-2] not in (R2_COLUMN, LEGACY_R2_COLUMN) or header[-1] != ZEROS_COLUMN:
        raise UserError(f"{path} is not a member table (columns name, settings, {R2_COLUMN}, {ZEROS_COLUMN}).")
    names = header[1:-2]
    rows = []
    for cells in lines:
        if len(cells) != len(header):
            raise UserError(f"{path} has a line with {len(cells)} columns instead of {len(header)}.")
        settings = {n: coerce_value(n, v) for n, v in zip(names, cells[1:-2], strict=True)}
        rows.append(MemberRow(cells[0], settings, float(cells[-2]), float(cells[-1])))
    return rows
