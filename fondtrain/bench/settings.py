"""What one `fondtrain bench` run measures: `BenchSettings`, and the settings of a checkpoint."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace

from fondtrain.config import PRESETS

# The reference's vH16 processed.npy patch count is stated neither in its code nor its
# README; the projection uses this many training patches unless --n_train is given.
ASSUMED_N_TRAIN = 1_000_000


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
    n_train: int = ASSUMED_N_TRAIN
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
    from fondtrain.run_files import load_model

    model, _ = load_model(s.checkpoint)
    c = model.config
    return replace(s, presets=(c.preset,), input_dim=c.input_dim, n_latents=c.n_latents,
                   t_train=c.t_train)
