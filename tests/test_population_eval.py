"""`fondtrain eval RUN` of a population: every member in one batched inference, each
member's results equal to its evaluation on its own (`evaluate(..., member=NAME)`: a
population of one).

Real population runs, trained here by the real trainer on the digits shards: three
members differing in beta_outer and seed, for a Poisson and a Gaussian preset.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from fondtrain.cli import FondtrainCLI
from fondtrain.config import ModelConfig
from fondtrain.errors import UserError
from fondtrain.eval.evaluate import EvalOptions, evaluate
from fondtrain.runs.files import load_run
from fondtrain.train.trainer import train
from tests.train_helpers import ACCELERATE_2PROC, scalars, tiny_config

SWEEP = "[{beta_outer: 8, seed: 0}, {beta_outer: 16, seed: 0}, {beta_outer: 8, seed: 1}]"
NAMES = ["b8-s0", "b16-s0", "b8-s1"]
# Every stage, small: the convergence table, probes on digits, bars and gratings.
OPTIONS = dict(n_steps=40, window=10, n_val=150, batch_size=64, probe_steps=20, tuning_steps=20,
               n_orientations=4, probe_max_samples=150)
# Member i samples from its own generator seeded as its single evaluation's and its
# batched update is the single model's expression broadcast over the member axis: on
# this CPU the numbers come out bit for bit equal. The tolerance leaves room for batched
# matrix products that round differently on other back ends (float32 state, float64 sums).
RTOL, ATOL = 1e-5, 1e-7
# What may differ: wall times, the options' output folder, and where the files went.
UNCOMPARED = {"timing", "options"}


@pytest.fixture(scope="module", params=["ipvae", "igvae"])
def population(request, digits_shards, tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp(f"population-eval-{request.param}") / "runs"
    config = tiny_config(digits_shards, runs, "pop", sweep=SWEEP, epochs=1)
    config = dataclasses.replace(config, model=ModelConfig(preset=request.param, input_dim=64,
                                                           n_latents=16, t_train=3))
    return train(config).run_dir


def _assert_same(batched, single, where: str = "metrics") -> None:
    if isinstance(single, dict):
        assert batched.keys() == single.keys(), where
        for key in single:
            if key not in UNCOMPARED:
                _assert_same(batched[key], single[key], f"{where}.{key}")
    elif isinstance(single, list):
        assert len(batched) == len(single), where
        for i, (b, s) in enumerate(zip(batched, single, strict=True)):
            _assert_same(b, s, f"{where}[{i}]")
    elif isinstance(single, float) and not isinstance(batched, bool):
        assert batched == pytest.approx(single, rel=RTOL, abs=ATOL), where
    else:
        assert batched == single, where


def test_batched_members_equal_their_single_evaluations(population, tmp_path):
    model, _, members = load_run(population)
    assert model.n_members == 3 and [m.name for m in members] == NAMES
    gabor = model.is_poisson  # the fits run no model (compared once; each takes seconds)
    opts = EvalOptions(**OPTIONS, gabor=gabor, out=str(tmp_path / "batched"))
    batched = evaluate(population, None, opts, verbose=False)
    assert list(batched) == NAMES
    for name in NAMES:
        alone = evaluate(population, None, dataclasses.replace(opts, out=str(tmp_path / "alone" / name)),
                         verbose=False, member=name)[name]
        together = batched[name]
        assert together["timing"]["batched_members"] == 3
        _assert_same(together, alone)
        assert together["model"]["beta_outer"] == float(name[1:name.index("-")])
        first = tmp_path / "batched" / "members" / name
        second = tmp_path / "alone" / name
        assert sorted(p.name for p in first.rglob("*") if p.is_file() and "tb" not in p.parts) == \
            sorted(p.name for p in second.rglob("*") if p.is_file() and "tb" not in p.parts)
        assert json.loads((first / "metrics.json").read_text())["final"] == together["final"]
        for archive in ("tuning.npz",) + (("gabor.npz",) if gabor else ()):
            with np.load(first / archive) as a, np.load(second / archive) as b:
                assert a.files == b.files
                for key in a.files:
                    np.testing.assert_allclose(a[key], b[key], rtol=RTOL, atol=ATOL, err_msg=key)
        assert {"eval/digits/final/r2_pooled", "eval/digits/probe_digits/latent_acc"} <= \
            scalars(first / "tb").keys()
    # the members really differ (beta and seed), so equal numbers are not a coincidence
    finals = [batched[name]["final"]["r2_pooled"] for name in NAMES]
    assert len(set(finals)) == 3 and all(math.isfinite(v) for v in finals)
    summary = (tmp_path / "batched" / "sweep_summary.tsv").read_text().splitlines()
    assert len(summary) == 3  # b8 over two seeds, b16


def test_eval_member_flag_evaluates_one_member_alone(population):
    FondtrainCLI().eval(str(population), member="b16-s0", n_steps=8, n_val=32, batch_size=32,
                        probe=False, tuning=False, gabor=False, figures=False, tensorboard=False)
    metrics = json.loads((population / "eval" / "members" / "b16-s0" / "metrics.json").read_text())
    assert metrics["model"]["beta_outer"] == 16 and metrics["timing"]["batched_members"] == 1
    assert not (population / "eval" / "sweep_summary.tsv").exists()
    with pytest.raises(UserError, match="no member 'b99'"):
        FondtrainCLI().eval(str(population), member="b99", n_steps=8)


@pytest.mark.slow
def test_batched_members_equal_their_single_evaluations_on_two_processes(population, tmp_path):
    """Under `accelerate launch` with 2 processes (rows split over the ranks, per-rank
    seeds, metrics gathered with a member axis) each batched member equals the same
    member evaluated alone on 2 processes."""
    import os
    import subprocess

    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    small = dict(n_steps=20, window=5, n_val=120, batch_size=32)
    flags = [f"--{k}={v}" for k, v in small.items()] + ["--noprobe", "--notuning", "--nogabor",
                                                          "--nofigures", "--notensorboard"]

    def launch(out: Path, *extra: str) -> None:
        cmd = [*ACCELERATE_2PROC, "-m", "fondtrain.cli", "eval", str(population), "--out", str(out), *flags, *extra]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]

    launch(tmp_path / "batched")
    launch(tmp_path / "alone", "--member", "b16-s0")
    for name in NAMES:
        metrics = json.loads((tmp_path / "batched" / "members" / name / "metrics.json").read_text())
        assert metrics["n_processes"] == 2 and metrics["n_samples"] == 120
    together = json.loads((tmp_path / "batched" / "members" / "b16-s0" / "metrics.json").read_text())
    alone = json.loads((tmp_path / "alone" / "metrics.json").read_text())
    _assert_same({k: v for k, v in together.items() if k != "figures"},
                 {k: v for k, v in alone.items() if k != "figures"})
