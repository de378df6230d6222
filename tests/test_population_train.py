"""`fondtrain train --sweep`: a population trained in one process, its outputs, and resume."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from fondtrain.cli import FondtrainCLI, train_command
from fondtrain.cli.flags import parse_args
from fondtrain.config.sweep import read_members_tsv
from fondtrain.errors import UserError
from fondtrain.runs import files as run_files
from fondtrain.runs.export import export_model
from fondtrain.runs.files import load_model
from fondtrain.train.trainer import train
from tests.train_helpers import scalars, tiny_config, tiny_flags

SWEEP = "beta_outer=8,16 seed=0,1"
NAMES = ["b8-s0", "b8-s1", "b16-s0", "b16-s1"]


def _population(digits_shards, tmp_path, name: str, **train_overrides):
    config = tiny_config(digits_shards, tmp_path / "runs", name, sweep=SWEEP, **train_overrides)
    return train(config)


@pytest.fixture(scope="module")
def population_run(digits_shards, tmp_path_factory):
    runs = tmp_path_factory.mktemp("population") / "runs"
    return train_command(tiny_flags(digits_shards, runs, "pop", sweep=SWEEP, epochs=1, eval_every=10))


def test_sweep_flag_trains_every_member_with_its_own_outputs(population_run):
    run_dir = population_run
    rows = read_members_tsv(run_dir)
    assert [r.name for r in rows] == NAMES
    assert all(math.isfinite(r.r2) and 0.0 <= r.zeros_pct <= 100.0 for r in rows)
    assert [r.settings for r in rows][1] == {"beta_outer": 8.0, "seed": 1}
    losses = {}
    for name in NAMES:
        tags = scalars(run_dir / "members" / name / "tb")
        assert {"train/loss", "train/r2", "sched/beta", "val/r2_pooled", "sched/n_exp_first"} <= tags.keys()
        losses[name] = dict(tags["train/loss"])
        assert dict(tags["sched/beta"])[max(dict(tags["sched/beta"]))] == pytest.approx(
            float(name[1:name.index("-")]))
    assert len({tuple(v.values()) for v in losses.values()}) == len(NAMES), "members trained alike"
    assert "perf/samples_per_s" in scalars(run_dir / "tb")


def test_population_resume_equals_uninterrupted(digits_shards, tmp_path):
    whole = _population(digits_shards, tmp_path, "whole", ckpt_every=10)
    first = _population(digits_shards, tmp_path, "split", ckpt_every=10, max_steps=27)
    assert first.step == 27
    second = _population(digits_shards, tmp_path, "split", ckpt_every=10)
    assert second.step == whole.step
    assert whole.model.W.shape[0] == len(NAMES)
    for name, value in whole.model.state_dict().items():
        torch.testing.assert_close(second.model.state_dict()[name], value, rtol=0, atol=0, msg=name)
    a = dict(scalars(whole.run_dir / "members" / NAMES[2] / "tb")["train/loss"])
    b = dict(scalars(second.run_dir / "members" / NAMES[2] / "tb")["train/loss"])
    assert [b[k] for k in sorted(a)] == [a[k] for k in sorted(a)]


def test_yaml_sweep_section_and_bad_sweeps(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  preset: ipvae\nsweep:\n  beta_outer: [8, 16]\n  seed: [0, 1, 2]\n")
    config = parse_args([f"--config={path}"])
    assert config.train.sweep
    from fondtrain.config.sweep import members_from_sweep

    assert len(members_from_sweep(config, config.train.sweep)) == 6
    assert len(members_from_sweep(parse_args([f"--config={path}", "--sweep=seed=3,4"]),
                                  parse_args([f"--config={path}", "--sweep=seed=3,4"]).train.sweep)) == 2
    with pytest.raises(UserError, match="accelerate back end"):
        parse_args(["--sweep=seed=0,1", "--backend=deepspeed"])
    with pytest.raises(UserError, match="separate runs"):
        parse_args(["--sweep=n_latents=8,16"])
    with pytest.raises(UserError, match="twice"):
        parse_args(["--sweep=[{seed: 1}, {seed: 1}]"])


def test_export_member_is_a_single_runs_export(population_run, tmp_path):
    one = export_model(str(population_run), str(tmp_path / "one"), member="b16-s0")
    assert sorted(p.name for p in one.iterdir()) == ["config.yaml", "model.safetensors"]
    model, config = load_model(one / "model.safetensors")
    assert model.n_members == 1 and config.train.sweep == "" and config.model.beta_outer == 16
    full = load_file(str(run_files.resolve_checkpoint(population_run) / run_files.MODEL_FILE))
    for name, value in model.state_dict().items():
        assert torch.equal(value[0], full[name][2]), name  # b16-s0 is the third member
    every = export_model(str(population_run), str(tmp_path / "all"))
    assert sorted(p.name for p in every.iterdir()) == sorted(NAMES)
    again, _ = load_model(every / "b16-s0" / "model.safetensors")
    for name, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], value)
    with pytest.raises(UserError, match="choose one with --member"):
        load_model(population_run)
    with pytest.raises(UserError, match="no member 'b99'"):
        export_model(str(population_run), str(tmp_path / "bad"), member="b99")
    assert not (tmp_path / "bad").exists()


def test_eval_evaluates_every_member_and_writes_the_sweep_summary(population_run):
    FondtrainCLI().eval(str(population_run), n_steps=8, n_val=64, batch_size=64, probe=False,
                        tuning=False, figures=False, tensorboard=False)
    finals = {}
    for name in NAMES:
        metrics = json.loads((population_run / "eval" / "members" / name / "metrics.json").read_text())
        finals[name] = metrics["final"]["r2_pooled"]
        assert math.isfinite(finals[name])
    assert len(set(finals.values())) == len(NAMES)
    summary = (population_run / "eval" / "sweep_summary.tsv").read_text().splitlines()
    assert summary[0].startswith("group\tbeta_outer") and len(summary) == 3  # b8, b16 over 2 seeds
    assert (population_run / "eval" / "rate_distortion.png").stat().st_size > 0


def test_own_member_data_order_gives_each_seed_its_own_batches(digits_shards):
    from fondtrain.config.sweep import members_from_sweep
    from fondtrain.data.loader import MemberOrderLoader, ShardLoader
    from fondtrain.seeding import stream_seed

    config = tiny_config(digits_shards, digits_shards, "x", sweep="beta_outer=8,16 seed=0,1")
    members = members_from_sweep(config, config.train.sweep)
    shared = ShardLoader(digits_shards / "digits", "train", batch_size=32, in_memory=True)
    own = MemberOrderLoader(shared, [stream_seed(0, "data_order", m.config.train.seed) for m in members])
    first, second = (next(iter(own.epoch(0, skip_batches=s)))["x"] for s in (0, 3))
    assert first.shape == (4, 32, 64)
    assert torch.equal(first[0], first[2]) and torch.equal(first[1], first[3])  # seed 0, seed 1
    assert not torch.equal(first[0], first[1])
    # a resumed position is each member's own: batch 3 of its own order
    assert torch.equal(second[1], list(own.loaders[1].epoch(0))[3]["x"])
    assert own.loaders[0]._x is shared._x, "one copy of the split"


def test_own_member_data_order_trains(digits_shards, tmp_path):
    run_dir = train_command(tiny_flags(digits_shards, tmp_path / "runs", "own", sweep="seed=0,1",
                                       member_data_order="own", epochs=1))
    assert [r.name for r in read_members_tsv(run_dir)] == ["s0", "s1"]
    with pytest.raises(UserError, match="--sweep"):
        parse_args(["--member_data_order=own"])
