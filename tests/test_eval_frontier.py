"""The sparse-coding frontier beside a sweep's members (`fondtrain.eval.frontier`): real
scikit-learn dictionary learning on synthetic sparse signals of a known dictionary and on
the digits shards; its points move the right way with alpha, its R^2 is the members' R^2
(checked against numpy), it is reproducible, and the rate-distortion figure draws it for a
Poisson sweep and says why it leaves it out for a Gaussian one."""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest

from fondtrain.cli import FondtrainCLI
from fondtrain.config import ModelConfig, RunConfig
from fondtrain.config.sweep import members_from_sweep
from fondtrain.errors import UserError
from fondtrain.eval import figures as Fg
from fondtrain.eval.evaluate import EvalOptions, evaluate
from fondtrain.eval.frontier import (
    FRONTIER_TSV,
    learn_dictionary,
    read_frontier_tsv,
    sparse_codes,
    sparse_coding_frontier,
    training_subset,
    write_frontier_tsv,
)
from fondtrain.eval.sweep_summary import write_eval_summary
from fondtrain.stats import R2_LABELS
from fondtrain.train.trainer import train
from tests.train_helpers import tiny_config

ALPHAS = (0.02, 0.1, 0.5)
N_ATOMS = 12


def _sparse_signals(n: int, seed: int) -> np.ndarray:
    """n signals [n, 24] of 3 atoms each of a fixed random dictionary of 12 (seed 0), plus
    a little noise; `seed` draws the codes."""
    atoms = np.random.default_rng(0).standard_normal((N_ATOMS, 24))
    atoms /= np.linalg.norm(atoms, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    codes = np.zeros((n, N_ATOMS))
    for row in codes:
        row[rng.choice(N_ATOMS, 3, replace=False)] = rng.laplace(0, 1.5, 3)
    return (codes @ atoms + 0.02 * rng.standard_normal((n, 24))).astype(np.float32)


@pytest.fixture(scope="module")
def signals():
    return _sparse_signals(600, 1), _sparse_signals(200, 2)


@pytest.fixture(scope="module")
def frontier(signals):
    x_train, x_val = signals
    return sparse_coding_frontier(x_train, x_val, N_ATOMS, ALPHAS[::-1], n_samples=400, seed=3)


def test_larger_alpha_gives_more_zeros_and_lower_r2(frontier):
    assert [p.alpha for p in frontier.points] == list(ALPHAS)  # ascending, whatever the order given
    zeros = [p.zeros_pct for p in frontier.points]
    pooled = [p.r2_pooled for p in frontier.points]
    paper = [p.r2_paper for p in frontier.points]
    assert zeros == sorted(zeros) and zeros[-1] > zeros[0] + 10
    assert pooled == sorted(pooled, reverse=True) and pooled[0] > 0.9 > pooled[-1]
    assert paper == sorted(paper, reverse=True)
    assert (frontier.n_atoms, frontier.n_train, frontier.n_val) == (N_ATOMS, 400, 200)


def test_the_frontier_r2_is_the_members_r2_computed_by_numpy_and_reproducible(signals, frontier):
    x_train, x_val = signals
    patches = training_subset(x_train, 400, seed=3)
    assert len(patches) == 400 and np.array_equal(patches, training_subset(x_train, 400, seed=3))
    learner = learn_dictionary(patches, N_ATOMS, ALPHAS[1], seed=3)
    codes = sparse_codes(learner, x_val).astype(np.float64)
    x = x_val.astype(np.float64)
    residual = ((x - codes @ learner.components_.astype(np.float64)) ** 2).sum(1)
    total = ((x - x.mean(1, keepdims=True)) ** 2).sum(1)
    per_sample = 1 - residual / (total + np.finfo(np.float32).eps)
    point = frontier.points[1]
    assert point.r2_pooled == pytest.approx(1 - residual.sum() / total.sum(), rel=1e-9)
    assert point.r2_paper == pytest.approx(per_sample.mean(), rel=1e-9)
    assert point.r2_median == pytest.approx(np.median(per_sample), rel=1e-9)
    assert point.zeros_pct == pytest.approx(100 * np.mean(codes == 0))
    again = sparse_coding_frontier(x_train, x_val, N_ATOMS, ALPHAS, n_samples=400, seed=3)
    assert [dataclasses.replace(p, seconds=0) for p in again.points] == \
        [dataclasses.replace(p, seconds=0) for p in frontier.points]


def test_the_table_names_each_r2_and_reads_back(frontier, tmp_path):
    path = write_frontier_tsv(frontier, tmp_path / FRONTIER_TSV)
    text = path.read_text()
    assert f"# r2_pooled: {R2_LABELS['r2_pooled']}" in text and f"# r2_paper: {R2_LABELS['r2_mean']}" in text
    assert "K 12, 400 training patches" in text
    rows = read_frontier_tsv(path)
    assert [r["alpha"] for r in rows] == list(ALPHAS)
    assert [r["r2_pooled"] for r in rows] == [p.r2_pooled for p in frontier.points]


def _members_metrics(preset: str):
    members = members_from_sweep(RunConfig(), "beta_outer=2,8")
    metrics = {m.name: {"final": {"r2_pooled": 0.9 - m.settings["beta_outer"] / 100, "r2_mean": 0.7,
                                  "frac_zeros": 0.0 if preset == "igvae" else 0.6, "kl": 10.0},
                        "model": {"preset": preset, "poisson_kl": "reference"}} for m in members}
    return members, metrics


@pytest.mark.parametrize("preset", ["ipvae", "igvae"])
def test_the_figure_draws_the_frontier_for_zero_codes_and_says_why_not_for_gaussian(preset, frontier, tmp_path,
                                                                                    keep_figures):
    drawn = keep_figures(Fg)
    _, figure = write_eval_summary(*_members_metrics(preset), tmp_path, "sweep", frontier)
    assert figure.stat().st_size > 0
    (ax,) = drawn[-1].axes
    labels = ax.get_legend_handles_labels()[1]
    notes = [t.get_text() for t in drawn[-1].texts]
    if preset == "ipvae":
        assert "sparse coding, R^2 pooled" in labels and "sparse coding, R^2 paper (per-sample mean)" in labels
        line = next(ln for ln in ax.get_lines() if ln.get_label() == "sparse coding, R^2 pooled")
        assert list(line.get_xdata()) == [p.zeros_pct for p in frontier.points]
        assert notes == []
    else:
        assert not any(label.startswith("sparse coding") for label in labels)
        assert any("frontier left out: igvae latents are Gaussian" in t for t in notes)


@pytest.mark.parametrize("preset", ["ipvae", "igvae"])
def test_eval_of_a_sweep_writes_and_draws_the_frontier_for_poisson_only(preset, digits_shards, tmp_path, capsys,
                                                                        keep_figures):
    config = tiny_config(digits_shards, tmp_path / "runs", "pop", sweep="beta_outer=2,16", epochs=1)
    config = dataclasses.replace(config, model=ModelConfig(preset=preset, input_dim=64, n_latents=16, t_train=3))
    run = train(config).run_dir
    drawn = keep_figures(Fg)
    opts = EvalOptions(n_steps=8, n_val=64, batch_size=64, probe=False, tuning=False, gabor=False,
                       tensorboard=False, frontier_samples=300, frontier_alphas=(0.3, 3.0))
    evaluate(run, options=opts)
    printed = capsys.readouterr().out
    (ax,) = drawn[-1].axes
    labels = ax.get_legend_handles_labels()[1]
    assert (run / "eval" / "rate_distortion.png").stat().st_size > 0
    if preset == "ipvae":
        rows = read_frontier_tsv(run / "eval" / FRONTIER_TSV)
        assert [r["alpha"] for r in rows] == [0.3, 3.0] and rows[0]["zeros_pct"] < rows[1]["zeros_pct"]
        assert "sparse-coding frontier: K 16, alpha 0.3, 3, each learnt from 300 training patches of digits" \
            in printed
        assert "sparse coding, R^2 pooled" in labels
    else:
        assert not (run / "eval" / FRONTIER_TSV).exists()
        assert "sparse-coding frontier left out: igvae latents are Gaussian" in printed
        assert not any(label.startswith("sparse coding") for label in labels)


def test_the_flags_defaults_are_the_options_and_bad_alphas_are_refused():
    cli = inspect.signature(FondtrainCLI.eval).parameters
    for name in ("frontier", "frontier_samples", "frontier_alphas"):
        assert cli[name].default == getattr(EvalOptions(), name), name
    with pytest.raises(UserError, match="--frontier_alphas must be positive"):
        EvalOptions(frontier_alphas=(1.0, -2.0))
    with pytest.raises(UserError, match="--frontier_samples must be a whole number"):
        EvalOptions(frontier_samples=0)
