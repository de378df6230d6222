"""A population split across ranks (--population_parallel split, what the default `auto` picks
when every process gets a member; SPEC 9.6):
each rank trains its own block of members, and the run equals a one-process population.

Exactness: member i's data, noise and arithmetic do not depend on the rank that holds it,
so the trained parameters and Adamax state are bit for bit those of one process (the
gradient path is per member). Reported losses are reductions over [P_own, B] tensors,
which torch's CPU kernels may group differently for another number of rows: those agree
to float32 rounding (rtol 1e-6), and exactly between runs of the same placement.
"""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from fondtrain.config import ModelConfig
from fondtrain.config.sweep import read_members_tsv
from fondtrain.model.vae import IterativeVAE
from fondtrain.runs import files as run_files
from fondtrain.train.optim import MemberAdamax
from fondtrain.train.placement import join_members, member_blocks, take_members
from fondtrain.train.trainer import train
from tests.train_helpers import (
    REPO,
    accelerate_launch,
    run_ddp_worker,
    scalars,
    subprocess_env,
    tiny_config,
    tiny_flags,
)

SWEEP = "beta_outer=0.1,1 seed=0,1"
NAMES = ["b0.1-s0", "b0.1-s1", "b1-s0", "b1-s1"]
FLAGS = dict(epochs=1, lr=1e-2, sweep=SWEEP, n_exp_refresh_every=10, log_every=5, eval_every=20)


def test_member_blocks_are_contiguous_and_balanced():
    assert member_blocks(5, 2) == [range(0, 3), range(3, 5)]
    assert member_blocks(4, 3) == [range(0, 2), range(2, 3), range(3, 4)]
    assert member_blocks(3, 3) == [range(0, 1), range(1, 2), range(2, 3)]
    for n in range(1, 12):
        for world in range(1, n + 1):
            blocks = member_blocks(n, world)
            assert [i for b in blocks for i in b] == list(range(n))
            assert max(map(len, blocks)) - min(map(len, blocks)) <= 1 and min(map(len, blocks)) >= 1


def test_member_slices_join_back_into_the_whole_population():
    """A population's model and MemberAdamax state, cut into rank blocks and joined
    again, is the whole state; each block's slice is that member's."""
    model_config = ModelConfig(preset="ipvae", input_dim=8, n_latents=4, t_train=2)
    members = [ModelConfig(preset="ipvae", input_dim=8, n_latents=4, t_train=2, seed=s) for s in range(5)]
    model = IterativeVAE(model_config, members)
    optimizer = MemberAdamax(model.parameters(), lr=[1e-3 * (i + 1) for i in range(5)],
                                 weight_decay=[0.0, 1e-4, 2e-4, 3e-4, 4e-4])
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()
    for whole in (model.state_dict(), optimizer.state_dict()):
        parts = [take_members(whole, block) for block in member_blocks(5, 2)]
        joined = join_members(parts)
        flat_whole, flat_joined = (torch.utils._pytree.tree_flatten(s)[0] for s in (whole, joined))
        assert len(flat_whole) == len(flat_joined)
        for a, b in zip(flat_whole, flat_joined, strict=True):
            assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
    second = take_members(optimizer.state_dict(), range(3, 5))
    assert torch.equal(second["param_groups"][0]["lr"], torch.tensor([4e-3, 5e-3], dtype=torch.float64))
    assert torch.equal(second["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"][3:])


def _checkpoint(run_dir, step=None):
    root = run_dir / "ckpt"
    return run_files.latest_checkpoint(root) if step is None else run_files.step_dir(root, step)


def _assert_same_checkpoint(a, b):
    """Two population checkpoints with bit-identical weights, Adamax state and n_exp sums."""
    wa, wb = (load_file(str(c / run_files.MODEL_FILE)) for c in (a, b))
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name
    oa, ob = (torch.load(c / "optimizer.bin", weights_only=True) for c in (a, b))
    fa, fb = (torch.utils._pytree.tree_flatten(o)[0] for o in (oa, ob))
    for x, y in zip(fa, fb, strict=True):
        assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y
    sa, sb = (run_files.read_trainer_state(c) for c in (a, b))
    for key in ("global_step", "epoch", "batch_in_epoch", "world_size", "eps", "rate_sum", "rate_count"):
        assert sa[key] == sb[key], key


def _losses(run_dir, member):
    return dict(scalars(run_dir / "members" / member / "tb")["train/loss"])


@pytest.fixture(scope="module")
def whole_and_split(digits_shards, tmp_path_factory):
    """The same population trained in one process ("one") and split over 2 ranks ("two")."""
    tmp = tmp_path_factory.mktemp("split")
    one = train(tiny_config(digits_shards, tmp / "runs", "one", **FLAGS))
    proc = run_ddp_worker(digits_shards, tmp, "two", "two", **FLAGS)
    return tmp, one, proc


@pytest.mark.slow
def test_split_over_two_ranks_equals_one_process(whole_and_split):
    tmp, one, proc = whole_and_split
    two = tmp / "runs" / "two"
    assert "4 members split over 2 processes (rank 0: b0.1-s0, b0.1-s1; rank 1: b1-s0, b1-s1)" in proc.stdout
    _assert_same_checkpoint(_checkpoint(one.run_dir), _checkpoint(two))
    files = [sorted(p.name for p in _checkpoint(run).iterdir()) for run in (one.run_dir, two)]
    assert files[0] == files[1], "the one-process layout"
    for rank, block in enumerate(member_blocks(4, 2)):  # each rank trained its own members
        own = load_file(str(tmp / "two" / f"rank{rank}.safetensors"))
        assert own["W"].shape[0] == 2
        for name, value in own.items():
            assert torch.equal(value, one.model.state_dict()[name][block.start:block.stop]), (rank, name)
    assert [r.name for r in read_members_tsv(two)] == NAMES
    for member in NAMES:
        a, b = _losses(one.run_dir, member), _losses(two, member)
        assert sorted(a) == sorted(b)
        torch.testing.assert_close(torch.tensor([b[k] for k in sorted(a)]), torch.tensor([a[k] for k in sorted(a)]),
                                   rtol=1e-6, atol=0)
        tags = scalars(two / "members" / member / "tb")
        assert {"val/r2_pooled", "sched/n_exp_first", "train/grad_norm"} <= tags.keys()
    for rank in (0, 1):
        validation = json.loads((tmp / "two" / f"rank{rank}.json").read_text())["validation"]
        assert len(validation) == 4
        for got, want in zip(validation, one.validation, strict=True):
            assert got.keys() == want.keys()
            assert all(got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-6) for k in want)


@pytest.mark.slow
def test_split_resume_equals_uninterrupted(digits_shards, whole_and_split):
    tmp, _, _ = whole_and_split
    run_ddp_worker(digits_shards, tmp, "cut", "first", **FLAGS, max_steps=25)
    state = run_files.read_trainer_state(_checkpoint(tmp / "runs" / "cut"))
    assert state["global_step"] == 25 and state["world_size"] == 1
    assert len(state["rate_sum"]) == 1 and len(state["rate_sum"][0]) == 4 and len(state["eps"]) == 4
    run_ddp_worker(digits_shards, tmp, "cut", "second", **FLAGS)
    _assert_same_checkpoint(_checkpoint(tmp / "runs" / "two"), _checkpoint(tmp / "runs" / "cut"))
    for rank in (0, 1):
        whole, resumed = (load_file(str(tmp / d / f"rank{rank}.safetensors")) for d in ("two", "second"))
        for name in whole:
            assert torch.equal(resumed[name], whole[name]), (rank, name)
    for member in NAMES:
        a, b = _losses(tmp / "runs" / "two", member), _losses(tmp / "runs" / "cut", member)
        assert sorted(a) == sorted(b) and [b[k] for k in sorted(a)] == [a[k] for k in sorted(a)]


@pytest.mark.slow
def test_split_checkpoint_resumes_on_one_and_on_three_ranks(digits_shards, whole_and_split):
    """Saved on 2 ranks, continued in one process, finished on 3: the world size never
    enters a member's numbers, so the end is the one-process run's, bit for bit."""
    tmp, one, _ = whole_and_split
    run_ddp_worker(digits_shards, tmp, "moved", "moved2", **FLAGS, max_steps=12)
    middle = train(tiny_config(digits_shards, tmp / "runs", "moved", **FLAGS, max_steps=25))
    assert middle.step == 25 and middle.model.W.shape[0] == 4
    proc = run_ddp_worker(digits_shards, tmp, "moved", "moved3", processes=3, **FLAGS)
    assert "resuming" in proc.stdout and "rank 0: b0.1-s0, b0.1-s1; rank 1: b1-s0; rank 2: b1-s1" in proc.stdout
    assert "written by" not in proc.stdout, "the data position must not move"
    _assert_same_checkpoint(_checkpoint(one.run_dir), _checkpoint(tmp / "runs" / "moved"))
    assert [r.name for r in read_members_tsv(tmp / "runs" / "moved")] == NAMES


@pytest.mark.slow
def test_checkpoints_resume_across_placements(digits_shards, tmp_path):
    """data-parallel -> split -> data-parallel on 2 ranks: each loads the other's checkpoint
    (the data position moves with the number of data ranks, as for one model)."""
    flags = dict(FLAGS, epochs=2)
    run_ddp_worker(digits_shards, tmp_path, "mixed", "a", **flags, max_steps=10, population_parallel="data")
    assert run_files.read_trainer_state(_checkpoint(tmp_path / "runs" / "mixed"))["world_size"] == 2
    proc = run_ddp_worker(digits_shards, tmp_path, "mixed", "b", **flags, max_steps=30)
    assert "written by 2 process(es)" in proc.stdout and "now 1" in proc.stdout
    state = run_files.read_trainer_state(_checkpoint(tmp_path / "runs" / "mixed"))
    assert state["world_size"] == 1 and state["global_step"] == 30
    proc = run_ddp_worker(digits_shards, tmp_path, "mixed", "c", **flags, population_parallel="data")
    assert "written by 1 process(es)" in proc.stdout and "now 2" in proc.stdout
    state = run_files.read_trainer_state(_checkpoint(tmp_path / "runs" / "mixed"))
    assert state["world_size"] == 2 and state["global_step"] == state["total_steps"]
    assert len(state["rate_sum"]) == 2 and len(state["rate_sum"][0]) == 4


@pytest.mark.slow
def test_fewer_members_than_processes_is_refused(digits_shards, tmp_path):
    runs = tmp_path / "runs"
    flags = tiny_flags(digits_shards, runs, "few", sweep="seed=0", population_parallel="split")
    proc = subprocess.run([*accelerate_launch(2), str(REPO / "launch" / "train.py"), *flags],
                          cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    errors = {line for line in proc.stderr.splitlines() if line.startswith("error:")}
    assert errors == {"error: the population has 1 member(s) but 2 processes were started, and "
                      "--population_parallel split gives every process at least one member: start at most "
                      "1 process(es), or pass --population_parallel data to train every member on every process."}
    assert "fondtrain/train/" not in proc.stderr, "a worker traceback (the launcher's own report may follow)"
    assert not runs.exists()
