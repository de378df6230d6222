"""The sparse-coding frontier of a sweep's rate-distortion figure: what a linear sparse code
of the same data reaches, drawn beside the members (the paper's LCA points).

One point per sparsity weight alpha. scikit-learn's MiniBatchDictionaryLearning learns K
atoms (K = the run's n_latents, unit norm) from a seeded random subset of the evaluated
data set's training split, minimising 0.5 ||x - c D||^2 + alpha ||c||_1 per sample; then
the validation samples the members were evaluated on are coded at the same alpha by the
Lasso (coordinate descent, exact zeros). The point is (% exact zeros of those codes, R^2 of their
reconstructions c D), the R^2 computed by `fondtrain.stats.r2_three_ways` exactly as the
members' (pooled, the paper's per-sample mean, median). A larger alpha gives sparser
codes and a lower R^2.

The codes are signed, as in standard sparse coding (Olshausen & Field, LCA): the
baseline is the classical one, not a non-negative variant fitted to spike counts.

Every alpha learns its own dictionary from the same patches and the same initial
dictionary (both seeded by `stream_seed(seed, "frontier", ...)`), so the points differ
by alpha alone and a frontier is reproducible. Cost: at most PASSES x n_train / BATCH_SIZE mini-batch
steps per alpha (scikit-learn stops earlier once its cost has not improved for 10 steps)
plus one Lasso per validation sample; smaller alphas cost more (more active atoms).
docs/science.md gives the measured seconds.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fondtrain import stats as Mx
from fondtrain.atomic_write import write_text_atomic
from fondtrain.seeding import stream_seed

FRONTIER_TSV = "sparse_coding_frontier.tsv"
# On natural16 at K 128: 63% to 96% zeros, around the members' range (docs/science.md).
DEFAULT_ALPHAS = (0.25, 0.5, 1.0, 2.0, 4.0)
DEFAULT_SAMPLES = 10_000
PASSES = 2  # passes of the mini-batches over the training patches, per alpha
BATCH_SIZE = 200
COLUMNS = ("alpha", "zeros_pct", "r2_pooled", "r2_paper", "r2_median", "seconds")


@dataclass(frozen=True)
class FrontierPoint:
    """One sparsity weight's result on the validation samples: % exact zeros of the codes,
    R^2 pooled, the paper's R^2 (per-sample mean) and the median R^2 of the
    reconstructions, and the seconds it took (learning and coding)."""

    alpha: float
    zeros_pct: float
    r2_pooled: float
    r2_paper: float
    r2_median: float
    seconds: float


@dataclass(frozen=True)
class Frontier:
    """The points (alpha ascending) and how they were made: K atoms learnt from n_train
    training patches of `dataset` (PASSES passes of BATCH_SIZE), codes of n_val
    validation samples, seed."""

    points: tuple[FrontierPoint, ...]
    n_atoms: int
    n_train: int
    n_val: int
    dataset: str
    seed: int

    @property
    def seconds(self) -> float:
        return sum(p.seconds for p in self.points)

    def describe(self) -> str:
        return (f"sparse coding (MiniBatchDictionaryLearning, K {self.n_atoms}, {self.n_train} training "
                f"patches of {self.dataset or 'the data set'}, at most {PASSES} passes of batch {BATCH_SIZE}, "
                f"seed {self.seed}; Lasso codes of the {self.n_val} validation samples the members "
                "were evaluated on)")


def training_subset(x_train: np.ndarray, n_samples: int, seed: int) -> np.ndarray:
    """n_samples rows of x_train drawn without replacement (all of them when it has no
    more), in stored order; seeded, so every alpha and every rerun learns from the same."""
    if n_samples >= len(x_train):
        return x_train
    rng = np.random.default_rng(stream_seed(seed, "frontier", 0))
    return x_train[np.sort(rng.choice(len(x_train), n_samples, replace=False))]


@contextlib.contextmanager
def _quiet_lasso() -> Iterator[None]:
    """scikit-learn's fixed Lasso tolerance (1e-8) sits below float32 round-off, so codes
    that have converged still warn; LARS gives the same points (see learn_dictionary)."""
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


def learn_dictionary(x_train: np.ndarray, n_atoms: int, alpha: float, seed: int):
    """A fitted sklearn MiniBatchDictionaryLearning (K n_atoms, sparsity weight alpha,
    Lasso codes at the same alpha); its initial dictionary and batch order seeded."""
    from sklearn.decomposition import MiniBatchDictionaryLearning

    # Coordinate descent: the same Lasso solutions as LARS here (measured: equal % zeros and
    # R^2 to 3 digits at K 128 on natural16) in a third of the time.
    learner = MiniBatchDictionaryLearning(
        n_components=n_atoms, alpha=alpha, batch_size=BATCH_SIZE, max_iter=PASSES, fit_algorithm="cd",
        transform_algorithm="lasso_cd", transform_alpha=alpha,
        random_state=stream_seed(seed, "frontier", 1) % 2**32)  # numpy's RandomState takes 32 bits
    with _quiet_lasso():
        return learner.fit(np.ascontiguousarray(x_train, dtype=np.float32))


def sparse_codes(learner, x: np.ndarray) -> np.ndarray:
    """The codes [N, K] of x [N, M] by a fitted learner (`learn_dictionary`)."""
    with _quiet_lasso():
        return learner.transform(np.ascontiguousarray(x, dtype=np.float32))


def score_codes(x_val: np.ndarray, codes: np.ndarray, atoms: np.ndarray, alpha: float,
                seconds: float = 0.0) -> FrontierPoint:
    """The point of codes [N, K] of x_val [N, M] with atoms [K, M]: % exact zeros, and the
    members' three R^2 of the reconstructions codes @ atoms (float64)."""
    x = torch.from_numpy(np.asarray(x_val, dtype=np.float64))
    x_hat = torch.from_numpy(np.asarray(codes, dtype=np.float64) @ np.asarray(atoms, dtype=np.float64))
    r2 = Mx.r2_three_ways(x, x_hat)
    return FrontierPoint(float(alpha), 100.0 * Mx.fraction_zeros(torch.from_numpy(np.asarray(codes))),
                         r2["r2_pooled"], r2["r2_mean"], r2["r2_median"], float(seconds))


def sparse_coding_frontier(x_train: np.ndarray, x_val: np.ndarray, n_atoms: int,
                           alphas: Sequence[float] = DEFAULT_ALPHAS, n_samples: int = DEFAULT_SAMPLES,
                           seed: int = 0, dataset: str = "",
                           say: Callable[[str], None] = lambda message: None) -> Frontier:
    """The frontier of K = n_atoms sparse codes of x_val [N, M] learnt from n_samples rows
    of x_train, one point per alpha (ascending); `say` gets a line per alpha."""
    if len(x_train) == 0 or len(x_val) == 0:
        raise ValueError("the sparse-coding frontier needs training and validation samples")
    patches = training_subset(x_train, n_samples, seed)
    points = []
    for alpha in sorted(float(a) for a in alphas):
        started = time.time()
        learner = learn_dictionary(patches, n_atoms, alpha, seed)
        codes = sparse_codes(learner, x_val)
        point = score_codes(x_val, codes, learner.components_, alpha, time.time() - started)
        say(f"  alpha {alpha:g}: {point.zeros_pct:.1f}% zeros, R^2 pooled {point.r2_pooled:.3f}, "
            f"paper {point.r2_paper:.3f} ({point.seconds:.0f} s)")
        points.append(point)
    return Frontier(tuple(points), n_atoms, len(patches), len(x_val), dataset, seed)


def write_frontier_tsv(frontier: Frontier, path: str | Path) -> Path:
    """The points as a table, after `#` lines saying how they were made and naming each R^2."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = {"r2_pooled": Mx.R2_LABELS["r2_pooled"], "r2_paper": Mx.R2_LABELS["r2_mean"],
             "r2_median": Mx.R2_LABELS["r2_median"]}
    lines = [f"# {frontier.describe()}",
             "# zeros_pct: % exact zeros of the codes; seconds: learning and coding, per alpha",
             *(f"# {column}: {label}" for column, label in names.items()),
             "\t".join(COLUMNS)]
    lines += ["\t".join(repr(float(getattr(p, c))) for c in COLUMNS) for p in frontier.points]
    return write_text_atomic(path, "\n".join(lines) + "\n")


def read_frontier_tsv(path: str | Path) -> list[dict[str, float]]:
    """The points of a sparse_coding_frontier.tsv, one dict per line (its `#` lines skipped)."""
    rows = [line.split("\t") for line in Path(path).read_text().splitlines() if line and line[0] != "#"]
    return [dict(zip(rows[0], map(float, row), strict=True)) for row in rows[1:]]
