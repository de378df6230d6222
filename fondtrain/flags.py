"""The training flags: one typed table generated from the config dataclasses.

`fondtrain train` and launch/train.py read this table (through cli.train_command): every
field of ModelConfig, DataConfig and TrainConfig is a flag with the reference's name
(`--t_train 16 --n_iters_outer 1 --beta_outer 24 --n_latents 512`), its real type
(typing.get_type_hints), its allowed values where it has fixed choices (field_choices) and
a one-line description (DESCRIPTIONS). `--config file.yaml` is read first and flags
override it; `--seed` seeds every section. YAML values are converted and checked the same
way as flags. The parsing rules are fondtrain/commandline.py's.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from typing import Any

from fondtrain.commandline import BOOLEAN_NOTE, Option, convert, format_options, parse_flags, unknown_option, wants_help
from fondtrain.config import (
    BACKENDS,
    MEMBER_DATA_ORDERS,
    MIXED_PRECISIONS,
    POISSON_KL_FORMS,
    POPULATION_PARALLEL,
    PRESETS,
    RESUME_MODES,
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    load_yaml,
)
from fondtrain.errors import UserError
from fondtrain.sweep import members_from_sweep, split_sweep

SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}
# Other names users type for a field (the reference's and the README's).
ALIASES = {"model": "preset", "data_path": "path"}

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
    "member_data_order": "a population's batches: shared (every member the same) or own (each member its own order)",
    "population_parallel": "a population on N processes: split (each process trains its own block of members, "
                           "the default) or data (every member data-parallel over all processes)",
    "sweep": "train a population in one run: a grid such as 'beta_outer=8,16 seed=0,1' or a YAML list of members",
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
    "compile": "each TBPTT window (forward, backward, clip, Adamax) as one torch.compile graph; one process, "
               "accelerate back end, float32 (else, or if compiling fails, eager with a warning); a population "
               "(--sweep) compiles its state update and step outputs instead",
    "log_every": "steps between logged training scalars",
    "eval_every": "steps between validations (0: never)",
    "ckpt_every": "steps between checkpoints (0: at the end and on a signal only)",
    "keep_last": "complete checkpoints kept (older ones are deleted)",
    "ckpt_minutes": "minutes of training between checkpoints, on top of ckpt_every (0: off)",
    "resume": "auto: resume runs/NAME only if its settings match; force: resume despite changed settings "
              "(recorded in resume_log.txt); never: stop if runs/NAME has a checkpoint",
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
            "mixed_precision": MIXED_PRECISIONS, "resume": RESUME_MODES,
            "member_data_order": MEMBER_DATA_ORDERS, "population_parallel": POPULATION_PARALLEL,
            "feeder": tuple(FEEDERS),
            "dataset": tuple(SOURCES)}


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
    sweep_section = None
    if config_path:
        file_values, sweep_section = split_sweep(load_yaml(config_path))
        for section, values in file_values.items():
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
    if sweep_section is not None and "sweep" not in raw["train"]:
        raw["train"]["sweep"] = json.dumps(sweep_section)  # JSON is YAML: members_from_sweep reads it
    config = RunConfig.from_dict(raw)
    if config.train.sweep:
        members_from_sweep(config, config.train.sweep)  # a bad sweep stops here, before any file
    return config


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
