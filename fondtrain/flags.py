"""Command-line flags: one typed table and one parser for every `fondtrain` command.

`fondtrain train` and launch/train.py read the same table, generated from the config
dataclasses (ModelConfig, DataConfig, TrainConfig): every field is a flag with the
reference's name (`--t_train 16 --n_iters_outer 1 --beta_outer 24 --n_latents 512`), its
real type (typing.get_type_hints), its allowed values where it has fixed choices, and a
one-line description from DESCRIPTIONS. `--config file.yaml` is read first, flags
override it; `--seed` seeds every section. The other commands' flags come from their
method signatures (cli.py) and go through the same parser.

Parsing rules: exact names only (no abbreviations; `-` and `_` are the same letter),
`--flag value` or `--flag=value`, booleans as `--flag`, `--noflag` or `--flag
true|false|yes|no|1|0` (any case), `none` for an optional value, tuples as `0.9,0.999`.
Every bad flag or value raises UserError with one sentence, before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass
from typing import Any

from fondtrain.config import (
    BACKENDS,
    MIXED_PRECISIONS,
    POISSON_KL_FORMS,
    PRESETS,
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    load_yaml,
)
from fondtrain.errors import UserError

SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}
# Other names users type for a field (the reference's and the README's).
ALIASES = {"model": "preset", "data_path": "path"}
TRUE_WORDS, FALSE_WORDS = ("true", "yes", "1"), ("false", "no", "0")
HELP_FLAGS = ("-h", "--help")

# One line per config field, keyed by field name (a field shared by several sections,
# like seed, has one entry). tests/test_cli_flags.py checks that every field has one.
DESCRIPTIONS = {
    # model
    "preset": "which iterative VAE: ipvae (Poisson), igvae (Gaussian) or igrelu (Gaussian, relu rates)",
    "input_dim": "input size M (pixels per sample); must match the data set (digits 64, 16x16 patches 256)",
    "n_latents": "latent units K",
    "t_train": "inference steps per TBPTT window (one gradient step)",
    "n_iters_outer": "TBPTT windows per batch (the model runs t_train * n_iters_outer steps)",
    "n_iters_inner": "repeats of each inference step on the same input",
    "beta_outer": "weight of the KL term (none: the preset's, 24 for ipvae, 8 for igvae/igrelu)",
    "beta_inner": "KL weight inside the inference update",
    "poisson_kl": "Poisson KL form: reference (the paper's code) or exact KL(Pois(r) || Pois(r0))",
    "init_scale": "standard deviation of the initial dictionary weights",
    "clamp_u": "soft-clamp ceilings of the state, one per component (none: the preset's)",
    "clamp_du": "soft-clamp ceilings of the state update, one per component (none: the preset's)",
    "u_init_low": "lower bound of the uniform initial Poisson log-rates",
    "u_init_high": "upper bound of the uniform initial Poisson log-rates",
    "n_exp_p": "tail probability at which the relaxed Poisson sampler truncates (sets n_exp)",
    "seed": "seed of model init, data order, sampler noise and feeders (every section)",
    # data
    "dataset": "data set: natural16 and digits are built in; vh16, mnist, npy, npz, images need --path",
    "path": "the file or folder a data set is read from (vh16: processed.npy, mnist: IDX folder, ...)",
    "shards_root": "folder of the WebDataset shards; the data set's shards go to SHARDS_ROOT/DATASET",
    "feeder": "input over the inference steps: stationary (the same input), jitter or rotate",
    "num_workers": "data-loader worker processes (0: load in the training process)",
    "in_memory": "hold the decoded shards in memory instead of streaming them",
    # train
    "batch_size": "inputs per gradient step and process",
    "epochs": "passes over the training split; sets the length of every schedule",
    "lr": "peak learning rate (AdamW) after warm-up",
    "lr_min": "learning rate at the end of the cosine decay",
    "weight_decay": "AdamW weight decay",
    "betas": "AdamW beta1,beta2",
    "grad_clip": "gradient-norm clip",
    "warmup_portion": "fraction of the run spent warming the learning rate up",
    "kl_const_portion": "fraction of the run with the KL weight held at beta_min",
    "kl_anneal_portion": "fraction of the run over which the KL weight rises to beta_outer",
    "beta_min": "KL weight at the start of the run",
    "temp_start": "Poisson sampling temperature at the start",
    "temp_stop": "Poisson sampling temperature at the end of its anneal",
    "temp_anneal_portion": "fraction of the run over which the temperature anneals",
    "n_exp_refresh_every": "steps between refreshes of the Poisson sampler length n_exp",
    "grad_accum": "batches accumulated per optimiser step",
    "mixed_precision": "autocast precision: no, bf16 or fp16 (only matmul-class ops run low)",
    "backend": "accelerate (DDP through Accelerate) or deepspeed (a ZeRO engine, see --deepspeed_config)",
    "deepspeed_config": "DeepSpeed JSON config for --backend deepspeed (e.g. launch/deepspeed/zero1.json)",
    "compile": "torch.compile the state update and step outputs (eager if compiling fails)",
    "log_every": "steps between logged training scalars",
    "eval_every": "steps between validations (0: never)",
    "ckpt_every": "steps between checkpoints (0: at the end and on a signal only)",
    "keep_last": "complete checkpoints kept (older ones are deleted)",
    "max_steps": "stop after this many steps (0: the whole schedule)",
    "runs_root": "folder of the run folders",
    "name": "run name (default: made from the data set, preset, K, t_train, beta and seed); a run "
            "with the same name resumes",
}
CONFIG_HELP = "YAML file with model/data/train sections, read before the flags"


def field_choices() -> dict[str, tuple[str, ...]]:
    """Config fields with a fixed set of values -> those values."""
    from fondtrain.data.feeders import FEEDERS  # imports torch: only when flags are parsed
    from fondtrain.data.sources import SOURCES

    return {"preset": PRESETS, "poisson_kl": POISSON_KL_FORMS, "backend": BACKENDS,
            "mixed_precision": MIXED_PRECISIONS, "feeder": tuple(FEEDERS), "dataset": tuple(SOURCES)}


@dataclass(frozen=True)
class Option:
    """One flag: `--name VALUE` of type `kind` (a real type such as int or tuple[float, ...]).

    `fields` lists the (section, field) pairs a training flag sets (seed sets three).
    """

    name: str
    kind: Any
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    fields: tuple[tuple[str, str], ...] = ()
    group: str = ""


# ------------------------------------------------------------------ types and values

def split_optional(kind: Any) -> tuple[Any, bool]:
    """(the type without None, whether None is allowed) for `X | None` / Optional[X]."""
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"flag type {kind} must be one type or that type | None")
        return args[0], True
    return kind, False


def type_name(kind: Any) -> str:
    """How a type reads in the help: int, float, str, bool, float,float, float,... ."""
    base, optional = split_optional(kind)
    if typing.get_origin(base) is tuple:
        args = typing.get_args(base)
        name = f"{args[0].__name__},..." if args[-1] is Ellipsis else ",".join(a.__name__ for a in args)
    else:
        name = getattr(base, "__name__", str(base))
    return f"{name} | none" if optional else name


def _scalar(text: Any, kind: Any) -> Any:
    """One value of type kind (bool, int, float, str) from a string or a YAML value; ValueError if not."""
    if kind is bool:
        if isinstance(text, bool):
            return text
        word = str(text).strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        raise ValueError(text)
    if kind is int:
        if isinstance(text, bool):
            raise ValueError(text)
        if isinstance(text, int):
            return text
        if isinstance(text, str) and text.strip().lstrip("+-").replace("_", "").isdigit():
            return int(text)
        as_float = float(text)  # 1e5 is a fine count, 2.5 is not
        if not as_float.is_integer():
            raise ValueError(text)
        return int(as_float)
    if kind is float:
        if isinstance(text, bool):
            raise ValueError(text)
        return float(text)
    if kind is str:
        return str(text)
    raise TypeError(f"flags cannot hold values of type {kind}")


def convert(name: str, kind: Any, value: Any, choices: tuple[str, ...] = ()) -> Any:
    """`value` (a string from the command line, or a YAML value) as type `kind`; UserError if not."""
    base, optional = split_optional(kind)
    if value is None or (optional and isinstance(value, str) and value.strip().lower() == "none"):
        if optional:
            return None
        raise UserError(f"--{name} needs a value of type {type_name(kind)}, not none.")
    if typing.get_origin(base) is tuple:
        return _convert_tuple(name, base, value)
    try:
        out = _scalar(value, base)
    except (TypeError, ValueError):
        hint = " (true/false, yes/no or 1/0)" if base is bool else ""
        raise UserError(f"--{name} got {value!r}, which is not a valid {type_name(kind)}{hint}.") from None
    if choices and out not in choices:
        close = difflib.get_close_matches(str(out), choices, n=1)
        guess = f" (did you mean {close[0]}?)" if close else ""
        raise UserError(f"--{name} {out!r} is not one of {', '.join(choices)}{guess}.")
    return out


def _convert_tuple(name: str, kind: Any, value: Any) -> tuple:
    args = typing.get_args(kind)
    if isinstance(value, str):
        items = [v for v in value.replace("(", "").replace(")", "").split(",") if v.strip()]
    else:
        items = list(value) if isinstance(value, list | tuple) else [value]
    fixed = args[-1] is not Ellipsis
    if fixed and len(items) != len(args):
        example = ",".join(["x"] * len(args))
        raise UserError(f"--{name} needs {len(args)} numbers separated by a comma ({example}), "
                        f"got {value!r}.")
    kinds = args if fixed else [args[0]] * len(items)
    try:
        return tuple(_scalar(v, k) for v, k in zip(items, kinds, strict=True))
    except (TypeError, ValueError):
        raise UserError(f"--{name} got {value!r}, which is not a valid {type_name(kind)}.") from None


# ------------------------------------------------------------------ the parser

class Parsed(typing.NamedTuple):
    positionals: list[str]
    values: dict[str, Any]  # option name -> converted value (only the flags given)


def wants_help(argv: list[str]) -> bool:
    """-h or --help among the flags (before a `--`)."""
    head = argv[:argv.index("--")] if "--" in argv else argv
    return any(a in HELP_FLAGS for a in head)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def unknown_option(flag: str, names: list[str], command: str) -> UserError:
    close = difflib.get_close_matches(flag.lstrip("-").replace("-", "_"), names, n=1, cutoff=0.6)
    guess = f" (did you mean --{close[0]}?)" if close else ""
    return UserError(f"unknown option {flag}{guess}: `{command} --help` lists the options.")


def parse_flags(argv: list[str], options: list[Option], command: str) -> Parsed:
    """Split argv into positional words and typed flag values; exact flag names only."""
    lookup = {o.name: o for o in options} | {a: o for o in options for a in o.aliases}
    positionals: list[str] = []
    values: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        word = argv[i]
        i += 1
        if word == "--":
            positionals.extend(argv[i:])
            break
        if not word.startswith("-") or _is_number(word):
            positionals.append(word)
            continue
        raw_name, has_value, value = word.lstrip("-").partition("=")
        name = raw_name.replace("-", "_")
        option = lookup.get(name) if word.startswith("--") else None
        if option is None and name.startswith("no") and not has_value and word.startswith("--"):
            negated = lookup.get(name[2:])
            if negated is not None and split_optional(negated.kind)[0] is bool:
                values[negated.name] = False
                continue
        if option is None:
            raise unknown_option(word.partition("=")[0], sorted(lookup), command)
        if not has_value:
            following = argv[i] if i < len(argv) else None
            if split_optional(option.kind)[0] is bool:
                takes = following is not None and following.lower() in TRUE_WORDS + FALSE_WORDS
                value = argv[i] if takes else "true"
                i += takes
            elif following is None or (following.startswith("--") and following != "--"):
                raise UserError(f"--{name} needs a value ({type_name(option.kind)}).")
            else:
                value = following
                i += 1
        values[option.name] = convert(name, option.kind, value, option.choices)
    return Parsed(positionals, values)


def format_options(options: list[Option]) -> str:
    """The flag table: per option its names, type or choices, default and description."""
    lines: list[str] = []
    group = None
    for o in options:
        if o.group != group:
            group = o.group
            lines.append(f"\n{group}:" if group else "")
        names = ", ".join(f"--{n}" for n in (o.name, *o.aliases))
        kind = "{" + "|".join(o.choices) + "}" if o.choices else type_name(o.kind)
        default = o.default
        if isinstance(default, tuple):
            default = ",".join(str(v) for v in default)
        shown = "none" if default is None else repr(default) if default == "" else default
        lines.append(f"  {names}  {kind}  (default: {shown})")
        lines.append(f"      {o.help}")
    return "\n".join(lines)


BOOLEAN_NOTE = ("Booleans: --flag, --noflag or --flag true|false|yes|no|1|0; `none` clears an "
                "optional value; names are exact (no abbreviations).")


# ------------------------------------------------------------------ training flags

def train_options() -> list[Option]:
    """One Option per config field (a field in several sections, seed, is one flag), plus --config."""
    choices = field_choices()
    by_name: dict[str, Option] = {}
    for section, kind in SECTIONS.items():
        hints = typing.get_type_hints(kind)
        for f in dataclasses.fields(kind):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            known = by_name.get(f.name)
            if known is not None:
                if known.kind != hints[f.name]:
                    raise TypeError(f"config field {f.name} has two types: {known.kind}, {hints[f.name]}")
                by_name[f.name] = dataclasses.replace(known, fields=(*known.fields, (section, f.name)),
                                                      group="run")
                continue
            aliases = tuple(a for a, target in ALIASES.items() if target == f.name)
            by_name[f.name] = Option(f.name, hints[f.name], default, DESCRIPTIONS.get(f.name, ""),
                                     choices.get(f.name, ()), aliases, ((section, f.name),), section)
    config = Option("config", str | None, None, CONFIG_HELP, group="run")
    order = {"run": 0, **{s: i + 1 for i, s in enumerate(SECTIONS)}}
    return sorted([config, *by_name.values()], key=lambda o: order[o.group])


def train_help(prog: str) -> str:
    return (f"usage: {prog} [--config FILE] [--FLAG VALUE ...]\n\n"
            "Train (or resume) an iterative VAE; re-running the same command resumes its run "
            "(RUNS_ROOT/NAME)\nfrom the newest complete checkpoint. "
            "`accelerate launch launch/train.py FLAGS` trains on many processes.\n"
            f"{BOOLEAN_NOTE}\n" + format_options(train_options()))


def resolve_config(config_path: str | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """The YAML file (if any), then flag overrides (flag names or aliases, strings or values).

    Every value is converted to its field's type and checked against its choices first.
    """
    options = train_options()
    by_field = {o.name: o for o in options}
    lookup = by_field | {a: o for o in options for a in o.aliases}
    raw: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    if config_path:
        for section, values in load_yaml(config_path).items():
            if section not in SECTIONS or not isinstance(values, dict):
                raise UserError(f"config file {config_path} has an unknown section {section!r}: "
                                "use model, data and train.")
            names = [f.name for f in dataclasses.fields(SECTIONS[section])]
            for key, value in values.items():
                if key not in names:
                    close = difflib.get_close_matches(str(key), names, n=1)
                    guess = f" (did you mean {close[0]}?)" if close else ""
                    raise UserError(f"config file {config_path} has an unknown {section} option "
                                    f"{key!r}{guess}.")
                o = by_field[key]
                raw[section][key] = convert(key, o.kind, value, o.choices)
    for name, value in (overrides or {}).items():
        o = lookup.get(name)
        if o is None or o.name == "config":
            raise unknown_option(f"--{name}", sorted(lookup), "fondtrain train")
        for section, field in o.fields:
            raw[section][field] = convert(name, o.kind, value, o.choices)
    return RunConfig.from_dict(raw)


def parse_args(argv: list[str], prog: str = "fondtrain train") -> RunConfig:
    """The run config from training flags; prints the flag table and exits 0 on -h / --help."""
    if wants_help(argv):
        print(train_help(prog))
        raise SystemExit(0)
    parsed = parse_flags(argv, train_options(), prog)
    if parsed.positionals:
        raise UserError(f"{prog} takes only --flags, not {parsed.positionals[0]!r}: "
                        f"`{prog} --help` lists them.")
    values = dict(parsed.values)
    return resolve_config(values.pop("config", None), values)
