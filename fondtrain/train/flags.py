"""Command-line flags for training: every config field is a flag, with the reference's names.

`--t_train 16 --n_iters_outer 1 --n_iters_inner 1 --beta_outer 24 --beta_inner 1
--n_latents 512` work as in the reference script; `--model` picks the preset and
`--dataset` the data set. `--config file.yaml` is read first; flags override it.
`--seed` seeds everything (model init, data order, sampler noise).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from fondtrain.config import DataConfig, ModelConfig, RunConfig, TrainConfig, load_yaml
from fondtrain.errors import UserError

SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}
# Short names users type, mapped to (section, field).
ALIASES = {
    "model": ("model", "preset"),
    "preset": ("model", "preset"),
    "dataset": ("data", "dataset"),
    "data_path": ("data", "path"),
    "path": ("data", "path"),
}
SHARED_SEED = "seed"


def flag_table() -> dict[str, tuple[str, str]]:
    """Flag name -> (section, field) for every config field and alias."""
    table: dict[str, tuple[str, str]] = {}
    for section, kind in SECTIONS.items():
        for f in dataclasses.fields(kind):
            if f.name != SHARED_SEED:
                table.setdefault(f.name, (section, f.name))
    table.update(ALIASES)
    return table


def _field_type(section: str, name: str) -> str:
    return next(str(f.type) for f in dataclasses.fields(SECTIONS[section]) if f.name == name)


def _convert(section: str, name: str, value: Any) -> Any:
    kind = _field_type(section, name)
    if value is None or (isinstance(value, str) and value.lower() == "none" and "None" in kind):
        return None
    try:
        if kind.startswith("tuple"):
            if isinstance(value, str):
                value = [v for v in value.replace("(", "").replace(")", "").split(",") if v.strip()]
            values = value if isinstance(value, list | tuple) else [value]
            return tuple(float(v) for v in values)
        if kind.startswith("bool"):
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if kind.startswith("int"):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if kind.startswith("float"):
            return float(value)
        return str(value)
    except (TypeError, ValueError) as err:
        raise UserError(f"--{name} got {value!r}, which is not a valid {kind}.") from err


def resolve_config(config_path: str | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """The YAML file (if any), then flag overrides (flat names, aliases allowed)."""
    raw: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    if config_path:
        for section, values in load_yaml(config_path).items():
            if section not in SECTIONS or not isinstance(values, dict):
                raise UserError(f"config file {config_path} has an unknown section {section!r}: "
                                "use model, data and train.")
            raw[section].update(values)
    table = flag_table()
    for name, value in (overrides or {}).items():
        if name == SHARED_SEED:
            for section in SECTIONS:
                raw[section][SHARED_SEED] = _convert(section, SHARED_SEED, value)
            continue
        if name not in table:
            raise UserError(f"unknown option --{name}: run with --help to see the options.")
        section, field = table[name]
        raw[section][field] = _convert(section, field, value)
    return RunConfig.from_dict(raw)


def build_parser() -> argparse.ArgumentParser:
    """argparse parser for launch/train.py; only given flags are returned."""
    parser = argparse.ArgumentParser(
        prog="launch/train.py",
        description="Train an iterative VAE (ipvae | igvae | igrelu) with Accelerate. "
                    "Every option of the model, data and train sections is a flag.",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--config", help="YAML file with model/data/train sections, read before the flags")
    parser.add_argument("--seed", help="seed for model init, data order and sampler noise (default 0)")
    for name, (section, field) in sorted(flag_table().items()):
        default = next(f.default for f in dataclasses.fields(SECTIONS[section]) if f.name == field)
        helptext = f"{section}.{field} (default {default!r})"
        parser.add_argument(f"--{name}", help=helptext, metavar=name.upper())
    return parser


def parse_args(argv: list[str] | None = None) -> RunConfig:
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:
        raise UserError(f"unknown option {unknown[0]}: run launch/train.py --help to see the options.")
    args = vars(args)
    config_path = args.pop("config", None)
    return resolve_config(config_path, args)
