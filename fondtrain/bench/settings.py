"""What one `fondtrain bench` run measures: `BenchSettings`, the settings of a checkpoint,
the precisions a device runs quickly, and the paper's run the projection is about."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from fondtrain.config import PRESETS

# natural16's training patches when its shards are not built (the data set's documented
# default, `fondtrain shard --dataset natural16`); built shards give their manifest's count.
NATURAL16_N_TRAIN = 100_000
ASSUMED_N_TRAIN = NATURAL16_N_TRAIN  # the name earlier versions exported
PRECISIONS = ("fp32", "bf16")

# The relaxed Poisson sampler lengths n_exp[t] of a trained model, used by the projection
# when no --checkpoint is given: those of a natural16 ipvae run with the paper's recipe
# (300 epochs of batch 200, beta_outer 24, t_train 16; K 128) at step 6,375 of 150,000.
# They rise from 10 as the rates grow and were still rising there (the run's last n_exp
# went 10, 19, 27, 35, 45, 56, 69, 86 at steps 500, 1000, 2000, ..., 7000, its first
# 10, 4, 17, 31, 43, 46, 45, 47): a trained model's sampler is longer still, so the
# projection of a fresh model with them remains a lower bound.
TRAINED_N_EXP = (45, 79, 85, 86, 85, 85, 82, 81, 81, 78, 79, 77, 78, 80, 82, 77)
TRAINED_N_EXP_SOURCE = "a natural16 ipvae run's (paper's recipe, K 128) at step 6,375"


@dataclass
class BenchSettings:
    presets: tuple[str, ...] = PRESETS
    batch_size: int = 200
    input_dim: int = 256
    n_latents: int = 512
    t_train: int = 16
    eval_steps: int = 1000
    repeats: int = 3
    n_exp: int = 10  # relaxed Poisson sampler length (both implementations; 10 at start)
    reference_dir: str | None = None
    threads: int = 0  # 0: torch's default
    scaling: bool = True
    processes: tuple[int, ...] = (1, 2)
    memory: bool = True
    # training samples per epoch of the projected run; 0: natural16's (`paper_n_train`)
    n_train: int = 0
    epochs: int = 300
    seed: int = 0
    # compiled vs eager cycles (cases.compiled_cycle; issue 16 compiles the whole cycle)
    compile: bool = False
    compile_mode: str | None = None  # e.g. "reduce-overhead": CUDA graphs on GPU
    # population cycles of P members each, e.g. (1, 4, 16, 64) (cases.population_cycles;
    # issue 15); () skips them
    population: tuple[int, ...] = ()
    # Poisson training temperature of the cycles (Gaussian: 1). The reference's sampler
    # costs the same at any; fondtrain's CPU sampler less where entries finish early
    # (low rates, low temperature).
    train_temp: float = 0.5
    # a fondtrain run or checkpoint: time its trained parameters (and n_exp) instead of a
    # fresh initialisation; sizes and preset come from it
    checkpoint: str | None = None
    # precisions of the cycles besides float32 ("bf16": torch.autocast around the
    # forward, as Accelerate's --mixed_precision bf16) and of the projection; ():
    # `default_precisions` of the device
    precisions: tuple[str, ...] = ()
    # the projected wall time of the paper's run (cases.projection)
    projection: bool = True
    # project steps 0..projection_steps-1 of the run's schedule (0: every step), e.g. 5000
    # to compare with a --max_steps 5000 run
    projection_steps: int = 0
    shards_root: str = "shards"  # where natural16's manifest is looked for
    results: dict = field(default_factory=dict)

    def varied(self, **changes) -> BenchSettings:
        """A copy with `changes` and no results."""
        return replace(self, results={}, **changes)

    def to_json(self) -> str:
        d = asdict(self)
        d.pop("results")
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str) -> BenchSettings:
        raw = json.loads(text)
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


def use_checkpoint(s: BenchSettings) -> BenchSettings:
    """The settings with the preset and sizes of `s.checkpoint`'s model (no change without)."""
    if not s.checkpoint:
        return s
    from fondtrain.runs.files import load_model

    model, _ = load_model(s.checkpoint)
    c = model.config
    return replace(s, presets=(c.preset,), input_dim=c.input_dim, n_latents=c.n_latents,
                   t_train=c.t_train)


# ----------------------------------------------------------------------------- precisions
def bf16_is_fast(device: torch.device) -> bool:
    """Whether `device` multiplies bfloat16 matrices in hardware: a CUDA GPU that supports
    bf16, or a CPU with AVX512-BF16 or AMX (elsewhere oneDNN emulates bf16, slower than
    float32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    cpu = getattr(torch, "cpu", None)
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(cpu, probe, None)
        if check is not None and check():
            return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def default_precisions(device: torch.device) -> tuple[str, ...]:
    """fp32 and bf16 where the device runs bf16 products in hardware, else fp32 alone."""
    return PRECISIONS if bf16_is_fast(device) else ("fp32",)


def check_precisions(precisions) -> tuple[str, ...]:
    """`precisions` as a tuple of known names (a UserError naming the wrong one)."""
    from fondtrain.errors import UserError

    out = tuple(str(p).strip().lower() for p in precisions)
    for p in out:
        if p not in PRECISIONS:
            raise UserError(f"unknown precision {p!r} for --precision: choose from {', '.join(PRECISIONS)}.")
    return out


# ----------------------------------------------------------------------------- the paper's run
def paper_n_train(shards_root: str | Path = "shards") -> tuple[int, str]:
    """(natural16's training patches, where the number comes from): the shard manifest
    SHARDS_ROOT/natural16/manifest.json if built, else the documented 100,000."""
    manifest = Path(shards_root) / "natural16" / "manifest.json"
    try:
        n = int(json.loads(manifest.read_text())["splits"]["train"]["n_samples"])
    except (OSError, ValueError, KeyError, TypeError):
        return NATURAL16_N_TRAIN, "natural16's documented default (shards not built)"
    return n, f"{manifest}"
