"""Configuration dataclasses: one source of truth for every run.

Defaults follow SPEC.md (and the reference implementation's flag names). A YAML file and
command-line flags override them (`resolve_config`); the resolved config is saved with
every run and checkpoint.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fondtrain.errors import UserError

PRESETS = ("ipvae", "igvae", "igrelu")
POISSON_KL_FORMS = ("reference", "exact")
BACKENDS = ("accelerate", "deepspeed")
MIXED_PRECISIONS = ("no", "bf16", "fp16")
RESUME_MODES = ("auto", "force", "never")
MEMBER_DATA_ORDERS = ("shared", "own")
POPULATION_PARALLEL = ("auto", "split", "data")

# Posterior family and the number of state components C of each preset (SPEC 1-2).
PRESET_POSTERIOR = {"ipvae": "poisson", "igvae": "gaussian", "igrelu": "gaussian"}
PRESET_BETA_OUTER = {"ipvae": 24.0, "igvae": 8.0, "igrelu": 8.0}
# Soft-clamp ceilings at eps = 1 (SPEC 3): Poisson (u,), Gaussian (mu, xi).
PRESET_CLAMP_U = {"poisson": (10.0,), "gaussian": (7.0, 2.0)}
PRESET_CLAMP_DU = {"poisson": (10.0,), "gaussian": (7.0, 3.0)}


@dataclass
class ModelConfig:
    """The model: which iterative VAE, its size and its inference constants.

    `beta_outer`, `clamp_u` and `clamp_du` left as None take the preset's value
    (SPEC 1 and 3). `poisson_kl="reference"` reproduces the paper's code (posterior
    rate times f(delta)); `"exact"` is KL(Pois(r) || Pois(r0)). `input_dim` left as None
    is the data set's (the trainer fills it in, `with_input_dim`).

    Attributes:
        preset: which iterative VAE: ipvae (Poisson), igvae (Gaussian) or igrelu (Gaussian, relu rates)
        input_dim: input size M (pixels per sample); the data set decides it (digits 64, 16x16 patches
            256), so leave it out (none)
        n_latents: latent units K
        t_train: inference steps per TBPTT window (one gradient step)
        n_iters_outer: TBPTT windows per batch (the model runs t_train * n_iters_outer steps)
        n_iters_inner: repeats of each inference step on the same input
        beta_outer: weight of the KL term (none: the preset's, 24 for ipvae, 8 for igvae/igrelu)
        beta_inner: KL weight inside the inference update
        poisson_kl: Poisson KL form: reference (the paper's code) or exact KL(Pois(r) || Pois(r0))
        init_scale: standard deviation of the initial dictionary weights
        clamp_u: soft-clamp ceilings of the state, one per component (none: the preset's)
        clamp_du: soft-clamp ceilings of the state update, one per component (none: the preset's)
        u_init_low: lower bound of the uniform initial Poisson log-rates
        u_init_high: upper bound of the uniform initial Poisson log-rates
        n_exp_p: tail probability at which the relaxed Poisson sampler truncates (sets n_exp)
        seed: seed of model init, data order, sampler noise and feeders (every section)
    """

    preset: str = "ipvae"
    input_dim: int | None = None
    n_latents: int = 512
    t_train: int = 16
    n_iters_outer: int = 1
    n_iters_inner: int = 1
    beta_outer: float | None = None
    beta_inner: float = 1.0
    poisson_kl: str = "reference"
    init_scale: float = 1e-4
    clamp_u: tuple[float, ...] | None = None
    clamp_du: tuple[float, ...] | None = None
    # Poisson initial log-rates are drawn uniformly from [u_init_low, u_init_high].
    u_init_low: float = -6.0
    u_init_high: float = -4.0
    # Tail probability that the relaxed Poisson sampler truncates (SPEC 4).
    n_exp_p: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise UserError(
                f"unknown model preset {self.preset!r}: choose one of {', '.join(PRESETS)}."
            )
        for name in ("n_latents", "t_train", "n_iters_outer", "n_iters_inner"):
            _require_count(name, getattr(self, name), minimum=1)
        if self.input_dim is not None:
            _require_count("input_dim", self.input_dim, minimum=1)
        if self.beta_outer is None:
            self.beta_outer = PRESET_BETA_OUTER[self.preset]
        for name in ("beta_outer", "beta_inner", "init_scale"):
            if float(getattr(self, name)) < 0:
                raise UserError(f"{name} must be zero or positive, got {getattr(self, name)!r}.")
        if self.poisson_kl not in POISSON_KL_FORMS:
            raise UserError(
                f"poisson_kl must be 'reference' or 'exact', got {self.poisson_kl!r}."
            )
        if not 0 < self.n_exp_p < 1:
            raise UserError(f"n_exp_p must lie strictly between 0 and 1, got {self.n_exp_p!r}.")
        if self.u_init_low > self.u_init_high:
            raise UserError("u_init_low must not exceed u_init_high.")
        n_components = self.n_components
        defaults_u = PRESET_CLAMP_U[self.posterior]
        defaults_du = PRESET_CLAMP_DU[self.posterior]
        self.clamp_u = _as_clamp(self.clamp_u, defaults_u, n_components, "clamp_u")
        self.clamp_du = _as_clamp(self.clamp_du, defaults_du, n_components, "clamp_du")

    @property
    def posterior(self) -> str:
        """'poisson' or 'gaussian'."""
        return PRESET_POSTERIOR[self.preset]

    @property
    def n_components(self) -> int:
        """State components C: 1 (Poisson log-rate u) or 2 (Gaussian mu, xi)."""
        return 1 if self.posterior == "poisson" else 2

    @property
    def t_total(self) -> int:
        """Inference steps per batch: t_train * n_iters_outer."""
        return self.t_train * self.n_iters_outer


def with_input_dim(model: ModelConfig, input_dim: int, dataset: str) -> ModelConfig:
    """`model` with the input size M of the data set's samples; UserError if `model` names
    another (the data set decides M: a model of another size could not read its samples)."""
    if model.input_dim not in (None, input_dim):
        raise UserError(f"--input_dim {model.input_dim} does not fit data set {dataset}, whose samples "
                        f"have {input_dim} values: leave --input_dim out (the data set decides it).")
    return dataclasses.replace(model, input_dim=input_dim)


def _as_clamp(value: Any, default: tuple[float, ...], n: int, name: str) -> tuple[float, ...]:
    if value is None:
        return tuple(default)
    values = (value,) * n if isinstance(value, int | float) else tuple(value)
    if len(values) != n or any(float(v) <= 0 for v in values):
        raise UserError(f"{name} needs {n} positive value(s) for this preset, got {value!r}.")
    return tuple(float(v) for v in values)


@dataclass
class DataConfig:
    """Where the data comes from and how it is fed.

    Attributes:
        dataset: data set: natural16 and digits are built in; vh16, mnist, npy, npz, images need --path
        path: the file or folder a data set is read from (vh16: processed.npy, mnist: IDX folder, ...)
        shards_root: folder of the WebDataset shards; the data set's shards go to SHARDS_ROOT/DATASET
        feeder: input over the inference steps: stationary (the same input), jitter or rotate
        num_workers: data-loader worker processes (0: load in the training process)
        in_memory: hold the decoded shards in memory instead of streaming them
        seed: seeds the data order (the --seed flag sets every section's)
    """

    dataset: str = "natural16"
    path: str | None = None
    shards_root: str = "shards"
    feeder: str = "stationary"
    num_workers: int = 0
    in_memory: bool = True
    seed: int = 0


@dataclass
class TrainConfig:
    """Optimisation and run bookkeeping (SPEC 6).

    Attributes:
        batch_size: inputs per gradient step and process
        epochs: passes over the training split; sets the length of every schedule
        lr: peak learning rate (Adamax) after warm-up
        lr_min: learning rate at the end of the cosine decay
        weight_decay: Adamax weight decay
        betas: Adamax beta1,beta2
        grad_clip: gradient-norm clip
        warmup_portion: fraction of the run spent warming the learning rate up
        kl_const_portion: fraction of the run with the KL weight held at beta_min
        kl_anneal_portion: fraction of the run over which the KL weight rises to beta_outer
        beta_min: KL weight at the start of the run
        temp_start: Poisson sampling temperature at the start
        temp_stop: Poisson sampling temperature at the end of its anneal
        temp_anneal_portion: fraction of the run over which the temperature anneals
        n_exp_refresh_every: steps between refreshes of the Poisson sampler length n_exp
        grad_accum: batches accumulated per optimiser step
        mixed_precision: autocast precision: no, bf16 or fp16 (only matmul-class ops run low)
        backend: accelerate (DDP through Accelerate) or deepspeed (a ZeRO engine, see --deepspeed_config)
        deepspeed_config: DeepSpeed JSON config for --backend deepspeed (e.g. launch/deepspeed/zero1.json)
        compile: each TBPTT window (forward, backward, clip, Adamax) as one torch.compile graph; one
            process, accelerate back end, float32 (else, or if compiling fails, eager with a warning);
            a population (--sweep) compiles its state update and step outputs instead
        seed: seeds the optimisation's random streams (the --seed flag sets every section's)
        log_every: steps between logged training scalars
        eval_every: steps between validations (0: never)
        ckpt_every: steps between checkpoints (0: at the end and on a signal only)
        keep_last: complete checkpoints kept (older ones are deleted)
        max_steps: stop after this many steps (0: the whole schedule)
        runs_root: folder of the run folders
        name: run name (default: made from the data set, preset, K, t_train, beta and seed); a run
            with the same name resumes
        ckpt_minutes: minutes of training between checkpoints, on top of ckpt_every (0: off)
        resume: auto: resume runs/NAME only if its settings match; force: resume despite changed
            settings (recorded in resume_log.txt); never: stop if runs/NAME has a checkpoint
        sweep: train a population in one run: a grid such as 'beta_outer=8,16 seed=0,1' or a YAML list
            of members
        member_data_order: a population's batches: shared (every member the same) or own (each member
            its own order)
        population_parallel: a population on N processes: split (each process trains its own block of
            members, the default) or data (every member data-parallel over all processes)
    """

    batch_size: int = 200
    epochs: int = 300
    lr: float = 5e-3
    lr_min: float = 1e-5
    weight_decay: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 300.0
    warmup_portion: float = 0.005
    kl_const_portion: float = 1e-3
    kl_anneal_portion: float = 0.1
    beta_min: float = 1e-4
    temp_start: float = 1.0
    temp_stop: float = 0.01
    temp_anneal_portion: float = 0.5
    n_exp_refresh_every: int = 200
    grad_accum: int = 1
    mixed_precision: str = "no"
    # "accelerate" (DDP through Accelerate) or "deepspeed" (a DeepSpeed ZeRO engine driven
    # directly, launched with torchrun or the deepspeed launcher; config JSON below).
    backend: str = "accelerate"
    deepspeed_config: str = ""
    # Each TBPTT cycle as one compiled graph, forward and backward (fondtrain.model.cycle),
    # for every member; off by default (a long first compile, benchmarks/RESULTS.md); eager
    # with a warning if it fails.
    compile: bool = False
    seed: int = 0
    log_every: int = 20
    eval_every: int = 0
    ckpt_every: int = 0
    keep_last: int = 3
    max_steps: int = 0
    runs_root: str = "runs"
    name: str = ""
    # Also checkpoint when this many minutes have passed since the last checkpoint (0: off),
    # so that a long run with ckpt_every 0 still keeps its work.
    ckpt_minutes: float = 15.0
    resume: str = "auto"
    # A population run (SPEC 9): the members' settings as a grid "beta_outer=8,16 seed=0,1"
    # or YAML / JSON text (a YAML file's `sweep:` section lands here); "" trains one model.
    sweep: str = ""
    # A population's batches: "shared" (every member the same stream) or "own" (member i
    # in its own order, from its seed; the split is held in memory and gathered per member).
    member_data_order: str = "shared"
    # The members on N processes: "split" (each rank trains its own block of members),
    # "data" (every member on every rank, data-parallel) or "auto" (split when every rank
    # gets a member, else data). One process: the same run.
    population_parallel: str = "auto"

    def __post_init__(self) -> None:
        if self.resume not in RESUME_MODES:
            raise UserError(f"resume must be one of {', '.join(RESUME_MODES)}, got {self.resume!r}.")
        if self.member_data_order not in MEMBER_DATA_ORDERS:
            raise UserError(f"member_data_order must be shared or own, got {self.member_data_order!r}.")
        if self.population_parallel not in POPULATION_PARALLEL:
            raise UserError(f"population_parallel must be auto, split or data, got {self.population_parallel!r}.")
        if self.member_data_order == "own" and not self.sweep:
            raise UserError("--member_data_order own orders a population's data per member: "
                            "give the members with --sweep, or leave it out.")
        if self.sweep and self.backend == "deepspeed":
            raise UserError("a population run (--sweep) trains with the accelerate back end, because DeepSpeed's "
                            "ZeRO flattens the parameters into shared partitions that have no member axis for each "
                            "member's own clipping and Adamax: drop --backend deepspeed, or train the members as "
                            "separate runs.")
        if self.backend not in BACKENDS:
            raise UserError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}.")
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise UserError(f"mixed_precision must be one of {', '.join(MIXED_PRECISIONS)}, "
                            f"got {self.mixed_precision!r}.")
        for name in ("grad_accum", "batch_size", "epochs", "log_every", "keep_last", "n_exp_refresh_every"):
            _require_count(name, getattr(self, name), minimum=1)
        for name in ("max_steps", "eval_every", "ckpt_every"):
            _require_count(name, getattr(self, name), minimum=0)
        if isinstance(self.ckpt_minutes, bool) or not isinstance(self.ckpt_minutes, int | float) \
                or not self.ckpt_minutes >= 0:
            raise UserError(f"ckpt_minutes must be zero (off) or a positive number of minutes, "
                            f"got {self.ckpt_minutes!r}.")
        if not self.lr > 0 or self.lr_min < 0 or self.grad_clip <= 0 or self.weight_decay < 0:
            raise UserError("lr and grad_clip must be positive and lr_min, weight_decay not negative.")
        if not all(isinstance(b, int | float) and 0.0 <= b < 1.0 for b in self.betas):
            raise UserError(f"betas are Adamax's decay rates: give two numbers from 0 to below 1, e.g. "
                            f"--betas 0.9,0.999 (got {','.join(str(b) for b in self.betas)}).")
        for name in ("warmup_portion", "kl_const_portion", "kl_anneal_portion", "temp_anneal_portion"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UserError(f"{name} is a fraction of the run: give a value between 0 and 1, "
                                f"not {getattr(self, name)!r}.")


def _require_count(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{name} must be a whole number of at least {minimum}, got {value!r}.")


@dataclass
class RunConfig:
    """Everything a run needs; saved as `config.yaml` in the run directory."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunConfig:
        unknown = set(raw) - {"model", "data", "train"}
        if unknown:
            raise UserError(
                f"unknown config section(s) {sorted(unknown)}: use model, data and train."
            )
        return cls(
            model=_build(ModelConfig, raw.get("model", {}), "model"),
            data=_build(DataConfig, raw.get("data", {}), "data"),
            train=_build(TrainConfig, raw.get("train", {}), "train"),
        )


def _build(kind: type, values: dict[str, Any], section: str) -> Any:
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = set(values) - names
    if unknown:
        raise UserError(
            f"unknown {section} option(s) {sorted(unknown)}: see `fondtrain train --help`."
        )
    tuple_fields = {"clamp_u", "clamp_du", "betas"}
    cleaned = {k: tuple(v) if k in tuple_fields and isinstance(v, list) else v
               for k, v in values.items()}
    return kind(**cleaned)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a plain dict (sections model/data/train)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist: give the path of a YAML file.")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"config file {path} is not valid YAML ({err.__class__.__name__}).") from err
    if not isinstance(raw, dict):
        raise UserError(f"config file {path} must hold a mapping with model/data/train sections.")
    return raw


def save_yaml(config: RunConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (tuples as lists)."""
    import yaml

    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
