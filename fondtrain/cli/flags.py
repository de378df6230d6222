"""The typed flag layer in front of fire: every flag is checked and converted before a command runs.

A command's flags are a table of Options. `train`'s is made from the config dataclasses
(every field of ModelConfig, DataConfig and TrainConfig with its real type, its choices and
the description in its class's `Attributes:`); every other command's from its signature
and the `Args:` of its docstring. Rules: exact names only (no abbreviations; `-` and `_`
are the same letter), `--flag value` or `--flag=value`, booleans as `--flag`, `--noflag` or
`--flag true|false|yes|no|1|0` (any case), `none` for an optional value, tuples as
`0.9,0.999`. A bad flag or value raises UserError with one sentence.

fire alone would read values as Python literals (`false` a string, `1e5` a float,
`--name 1` an int) and answer --help with its own pager, so `fire_command` hands it each
converted value as the literal its parser reads back exactly, and fondtrain/cli/help.py
prints the table.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fondtrain import config as cfg
from fondtrain.config.sweep import members_from_sweep, split_sweep
from fondtrain.errors import UserError

TRUE_WORDS, FALSE_WORDS = ("true", "yes", "1"), ("false", "no", "0")
SECTIONS = {"model": cfg.ModelConfig, "data": cfg.DataConfig, "train": cfg.TrainConfig}
ALIASES = {"model": "preset", "data_path": "path"}  # the names the reference and the README use
CONFIG_HELP = "YAML file with model/data/train sections, read before the flags"


@dataclass(frozen=True)
class Option:
    """One flag, `--name VALUE` of the real type `kind` (e.g. int, tuple[float, ...] | None);
    `fields`: the config (section, field) pairs a training flag sets (--seed sets three)."""

    name: str
    kind: Any
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    fields: tuple[tuple[str, str], ...] = ()
    group: str = ""
    required: bool = False


# ------------------------------------------------------------------ types and values

def split_optional(kind: Any) -> tuple[Any, bool]:
    """(the type without None, whether None is allowed) for `X | None`; flags hold one type."""
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        return next(a for a in typing.get_args(kind) if a is not type(None)), True
    return kind, False


def type_name(kind: Any) -> str:
    """How a type reads in the help: int, str | none, float,float, float,... ."""
    base, optional = split_optional(kind)
    args = typing.get_args(base)
    if typing.get_origin(base) is tuple:
        name = f"{args[0].__name__},..." if args[-1] is Ellipsis else ",".join(a.__name__ for a in args)
    else:
        name = base.__name__
    return f"{name} | none" if optional else name


def _scalar(value: Any, kind: type) -> Any:
    """A word or a YAML value as bool, int, float or str; ValueError if it is not one."""
    if kind is str:
        return str(value)
    if isinstance(value, bool) or kind is bool:
        word = str(value).strip().lower()
        if kind is not bool or word not in TRUE_WORDS + FALSE_WORDS:
            raise ValueError(value)
        return word in TRUE_WORDS
    if kind is int and (isinstance(value, int) or (  # exact, where a float would round a large seed
            isinstance(value, str) and value.strip().lstrip("+-").replace("_", "").isdigit())):
        return int(value)
    number = float(value)
    if math.isnan(number) or (kind is int and not number.is_integer()):  # 1e5 is a fine count, 2.5 is not
        raise ValueError(value)
    return int(number) if kind is int else number


def convert(name: str, kind: Any, value: Any, choices: tuple[str, ...] = ()) -> Any:
    """`value` (a word from the command line or a YAML value) as type `kind`; UserError if it is not."""
    base, optional = split_optional(kind)
    if value is None or (optional and isinstance(value, str) and value.strip().lower() == "none"):
        if optional:
            return None
        raise UserError(f"--{name} needs a value of type {type_name(kind)}, not none.")
    try:
        if typing.get_origin(base) is tuple:
            return _tuple(name, base, value)
        out = _scalar(value, base)
    except (TypeError, ValueError):
        hint = " (true/false, yes/no or 1/0)" if base is bool else ""
        raise UserError(f"--{name} got {value!r}, which is not a valid {type_name(kind)}{hint}.") from None
    if choices and out not in choices:
        close = difflib.get_close_matches(str(out), choices, n=1)
        guess = f" (did you mean {close[0]}?)" if close else ""
        raise UserError(f"--{name} {out!r} is not one of {', '.join(choices)}{guess}.")
    return out


def _tuple(name: str, kind: Any, value: Any) -> tuple:
    args = typing.get_args(kind)
    if isinstance(value, str):
        items = [v for v in value.replace("(", "").replace(")", "").split(",") if v.strip()]
    else:
        items = list(value) if isinstance(value, list | tuple) else [value]
    if args[-1] is not Ellipsis and len(items) != len(args):
        example = ",".join(["x"] * len(args))
        raise UserError(f"--{name} needs {len(args)} numbers separated by a comma ({example}), got {value!r}.")
    kinds = args if args[-1] is not Ellipsis else [args[0]] * len(items)
    return tuple(_scalar(v, k) for v, k in zip(items, kinds, strict=True))


def literal(value: Any) -> str:
    """`value` as a Python literal that fire's parser reads back exactly (it reads `inf` as a word)."""
    if isinstance(value, tuple):
        return "(" + "".join(f"{literal(v)}, " for v in value) + ")"
    if isinstance(value, float) and math.isinf(value):
        return "1e999" if value > 0 else "-1e999"
    return repr(value)


# ------------------------------------------------------------------ the tables

def described(obj: Any) -> tuple[str, dict[str, str]]:
    """(obj's docstring before its `Args:` / `Attributes:`, each name listed there -> its description)."""
    text, section = [*re.split(r"\n(?:Args|Attributes):\n", inspect.getdoc(obj) or "", maxsplit=1), ""][:2]
    descriptions: dict[str, str] = {}
    name = None
    for line in section.splitlines():
        entry = re.match(r" {4}(\w+): (.*)", line)
        if entry:
            name, descriptions[entry[1]] = entry[1], entry[2]
        elif name and line.strip():
            descriptions[name] += " " + line.strip()
    return text.strip(), descriptions


def field_choices() -> dict[str, tuple[str, ...]]:
    """Config fields with a fixed set of values -> those values."""
    from fondtrain.data.feeders import FEEDERS  # imports torch: only when the table is made
    from fondtrain.data.sources import SOURCES

    return {"preset": cfg.PRESETS, "poisson_kl": cfg.POISSON_KL_FORMS, "backend": cfg.BACKENDS,
            "mixed_precision": cfg.MIXED_PRECISIONS, "resume": cfg.RESUME_MODES,
            "member_data_order": cfg.MEMBER_DATA_ORDERS, "population_parallel": cfg.POPULATION_PARALLEL,
            "feeder": tuple(FEEDERS), "dataset": tuple(SOURCES)}


def train_options() -> list[Option]:
    """One Option per config field (a field of several sections, seed, is one flag), plus --config."""
    choices = field_choices()
    options = {"config": Option("config", str | None, None, CONFIG_HELP, group="run")}
    for section, kind in SECTIONS.items():
        hints, (_, help_of) = typing.get_type_hints(kind), described(kind)
        for f in dataclasses.fields(kind):
            if f.name in options:  # seed: one flag sets every section's
                known = options[f.name]
                options[f.name] = dataclasses.replace(known, fields=(*known.fields, (section, f.name)), group="run")
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            aliases = tuple(a for a, target in ALIASES.items() if target == f.name)
            options[f.name] = Option(f.name, hints[f.name], default, help_of.get(f.name, ""),
                                     choices.get(f.name, ()), aliases, ((section, f.name),), section)
    groups = ["run", *SECTIONS]
    return sorted(options.values(), key=lambda o: groups.index(o.group))


def parameters(fn: Callable[..., Any]) -> list[inspect.Parameter]:
    return list(inspect.signature(fn).parameters.values())


def command_options(fn: Callable[..., Any]) -> list[Option]:
    """A command's flags: its parameters (real types, docstring Args), or the training flags
    for a command that takes every config field (`**settings`, train)."""
    if any(p.kind is p.VAR_KEYWORD for p in parameters(fn)):
        return train_options()
    hints, (_, help_of) = typing.get_type_hints(fn), described(fn)
    return [Option(p.name, hints[p.name], None if p.default is p.empty else p.default,
                   help_of.get(p.name, ""), required=p.default is p.empty)
            for p in parameters(fn) if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def positional(fn: Callable[..., Any]) -> list[inspect.Parameter]:
    """The parameters a command's usage shows as words: the required ones, an optional first
    one (eval [RUN]) and *args (compare RUNS...); fire takes the others positionally too."""
    return [p for i, p in enumerate(parameters(fn)) if p.kind is p.VAR_POSITIONAL or (
        p.kind is p.POSITIONAL_OR_KEYWORD and (p.default is p.empty or i == 0))]


# ------------------------------------------------------------------ parsing

def wants_help(argv: list[str]) -> bool:
    """-h or --help among the flags (before a `--`)."""
    return any(a in ("-h", "--help") for a in (argv[:argv.index("--")] if "--" in argv else argv))


def unknown_option(flag: str, names: list[str], prog: str) -> UserError:
    close = difflib.get_close_matches(flag.lstrip("-").replace("-", "_"), names, n=1, cutoff=0.6)
    guess = f" (did you mean --{close[0]}?)" if close else ""
    return UserError(f"unknown option {flag}{guess}: `{prog} --help` lists the options.")


def extra_argument(word: str, prog: str) -> UserError:
    return UserError(f"{prog} got an extra argument {word!r}: `{prog} --help` lists its arguments.")


def _is_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


def parse_flags(argv: list[str], options: list[Option], prog: str,
                wants_word: Callable[[list[str], dict[str, Any]], bool] = lambda words, values: False,
                ) -> tuple[list[str], dict[str, Any]]:
    """argv -> (positional words, option name -> converted value of each flag given).

    A word after a boolean flag is its value if it is a boolean word, or if the command
    wants no positional word there (`wants_word(words so far, values so far)`): so
    `train --compile maybe` and `eval RUN --probe maybe` are refused as bad booleans,
    while `eval --probe RUN` reads RUN.
    """
    lookup = {o.name: o for o in options} | {a: o for o in options for a in o.aliases}
    words: list[str] = []
    values: dict[str, Any] = {}
    rest = list(argv)
    while rest:
        word = rest.pop(0)
        if word == "--":
            words += rest
            break
        if not word.startswith("-") or _is_number(word):
            words.append(word)
            continue
        name, has_value, value = word.lstrip("-").partition("=")
        name = name.replace("-", "_")
        option = lookup.get(name) if word.startswith("--") else None
        negated = lookup.get(name[2:].lstrip("_")) if word.startswith("--no") and not has_value else None
        if option is None and negated is not None and split_optional(negated.kind)[0] is bool:
            values[negated.name] = False  # --noprobe, --no-probe, --no_probe
            continue
        if option is None:
            raise unknown_option(word.partition("=")[0], sorted(lookup), prog)
        following = rest[0] if rest else None
        if has_value:
            pass
        elif split_optional(option.kind)[0] is bool:
            takes = following is not None and (following.lower() in TRUE_WORDS + FALSE_WORDS or (
                not following.startswith("-") and not wants_word(words, values)))
            value = rest.pop(0) if takes else "true"
        elif following is None or (following.startswith("--") and following != "--"):
            raise UserError(f"--{name} needs a value ({type_name(option.kind)}).")
        else:
            value = rest.pop(0)
        values[option.name] = convert(name, option.kind, value, option.choices)
    return words, values


def bind(fn: Callable[..., Any], words: list[str], values: dict[str, Any],
         prog: str) -> tuple[list[Any], dict[str, Any]]:
    """Positional words and flag values -> (*args, **kwargs) of fn, typed; words fill the
    parameters not given as flags in order, as fire does, and then *args."""
    hints = typing.get_type_hints(fn)
    args: list[Any] = []
    kwargs = dict(values)
    for p in parameters(fn):
        if p.kind is p.VAR_POSITIONAL:
            args, words = [convert(p.name, hints[p.name], w) for w in words], []
        elif p.name in kwargs or p.kind is p.VAR_KEYWORD:
            continue
        elif words and p.kind is not p.KEYWORD_ONLY:
            kwargs[p.name] = convert(p.name, hints[p.name], words.pop(0))
        elif p.default is p.empty:
            needed = f"--{p.name}" if p.kind is p.KEYWORD_ONLY else p.name.upper()
            raise UserError(f"{prog} needs {needed}: `{prog} --help` explains it.")
    if words:
        raise extra_argument(words[0], prog)
    return args, kwargs


def typed_arguments(fn: Callable[..., Any], argv: list[str], prog: str) -> tuple[list[Any], dict[str, Any]]:
    """argv checked against fn's flag table: (*args, **kwargs), every value of its type."""
    slots = positional(fn)

    def wants_word(words: list[str], values: dict[str, Any]) -> bool:
        return any(p.kind is p.VAR_POSITIONAL for p in slots) or \
            any(p.name not in values for p in slots[len(words):])

    return bind(fn, *parse_flags(argv, command_options(fn), prog, wants_word), prog)


def fire_command(name: str, fn: Callable[..., Any], argv: list[str], prog: str) -> list[str]:
    """The command line fire gets for command `name`: every value checked, converted and
    written as a literal (`--n_latents=8`, `--name='123'`)."""
    args, kwargs = typed_arguments(fn, argv, prog)
    return [name, *map(literal, args), *(f"--{k}={literal(v)}" for k, v in kwargs.items())]


# ------------------------------------------------------------------ the training flags

def resolve_config(config_path: str | None = None, overrides: dict[str, Any] | None = None) -> cfg.RunConfig:
    """The YAML file (if any), then flag overrides (flag names or aliases, words or values),
    each converted to its field's type and checked against its choices."""
    options = train_options()
    lookup = {o.name: o for o in options} | {a: o for o in options for a in o.aliases}
    raw: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    sweep_section = None
    if config_path:
        file_values, sweep_section = split_sweep(cfg.load_yaml(config_path))
        for section, values in file_values.items():
            if section not in SECTIONS or not isinstance(values, dict):
                raise UserError(f"config file {config_path} has an unknown section {section!r}: "
                                "use model, data and train.")
            names = [f.name for f in dataclasses.fields(SECTIONS[section])]
            for key, value in values.items():
                if key not in names:
                    close = difflib.get_close_matches(str(key), names, n=1)
                    guess = f" (did you mean {close[0]}?)" if close else ""
                    raise UserError(f"config file {config_path} has an unknown {section} option {key!r}{guess}.")
                raw[section][key] = convert(key, lookup[key].kind, value, lookup[key].choices)
    for name, value in (overrides or {}).items():
        o = lookup.get(name)
        if o is None or o.name == "config":
            raise unknown_option(f"--{name}", sorted(lookup), "fondtrain train")
        for section, field in o.fields:
            raw[section][field] = convert(name, o.kind, value, o.choices)
    if sweep_section is not None and "sweep" not in raw["train"]:
        raw["train"]["sweep"] = json.dumps(sweep_section)  # JSON is YAML: members_from_sweep reads it
    config = cfg.RunConfig.from_dict(raw)
    if config.train.sweep:
        members_from_sweep(config, config.train.sweep)  # a bad sweep stops here, before any file
    return config


def parse_args(argv: list[str], prog: str = "fondtrain train") -> cfg.RunConfig:
    """The run config that `fondtrain train ARGV` would train."""
    words, values = parse_flags(argv, train_options(), prog)
    if words:
        raise extra_argument(words[0], prog)
    return resolve_config(values.pop("config", None), values)
