"""A population's outputs: members.tsv, one TensorBoard run per member (read back from the
event files), and the sweep summary (table and rate-distortion figure)."""

from __future__ import annotations

import math
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from fondtrain.config import ModelConfig, RunConfig
from fondtrain.config.sweep import MEMBERS_TSV, member_dir, members_from_sweep, read_members_tsv, write_members_tsv
from fondtrain.errors import UserError
from fondtrain.eval.sweep_summary import format_sweep_table, group_members, summarise_sweep
from fondtrain.model.vae import IterativeVAE
from fondtrain.train.placement import Placement
from fondtrain.train.run_log import RunLog


def accumulate(path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def sweep_results(members):
    """Validation metrics of every member but the last (not validated yet)."""
    return {m.name: {"val/r2_pooled": 0.9 - m.settings["beta_outer"] / 100 + 0.01 * m.settings["seed"],
                     "val/zeros": 0.5 + m.settings["beta_outer"] / 100 - 0.02 * m.settings["seed"]}
            for m in members[:-1]}


def test_members_tsv_round_trip(tmp_path):
    members = members_from_sweep(RunConfig(), "beta_outer=8,16 seed=0,1,2 lr=1e-3")
    path = write_members_tsv(tmp_path, members)
    assert path == tmp_path / MEMBERS_TSV and path.read_text().splitlines()[0] == \
        "name\tbeta_outer\tseed\tlr\tval_r2_pooled\tzeros_pct"
    assert all(math.isnan(r.r2) for r in read_members_tsv(tmp_path))  # written at the start
    results = sweep_results(members)
    write_members_tsv(tmp_path, members, results)
    rows = read_members_tsv(tmp_path)
    assert [r.name for r in rows] == [m.name for m in members]
    assert rows[1].settings == {"beta_outer": 8.0, "seed": 1, "lr": 0.001}
    assert isinstance(rows[1].settings["seed"], int)
    assert rows[1].r2 == results[members[1].name]["val/r2_pooled"]
    assert rows[1].zeros_pct == 100 * results[members[1].name]["val/zeros"]
    assert math.isnan(rows[-1].r2) and math.isnan(rows[-1].zeros_pct)
    assert sorted(p.name for p in tmp_path.iterdir()) == [MEMBERS_TSV]  # no partial file left
    with pytest.raises(UserError, match="not a population run"):
        read_members_tsv(tmp_path / "elsewhere")


def test_members_tsv_written_before_the_column_named_its_r2_still_reads(tmp_path):
    (tmp_path / MEMBERS_TSV).write_text("name\tbeta_outer\tval_r2\tzeros_pct\nbeta_outer=8\t8\t0.91\t55.0\n")
    (row,) = read_members_tsv(tmp_path)
    assert (row.name, row.settings, row.r2, row.zeros_pct) == ("beta_outer=8", {"beta_outer": 8.0}, 0.91, 55.0)
    (tmp_path / MEMBERS_TSV).write_text("name\tbeta_outer\tr2\tzeros_pct\nbeta_outer=8\t8\t0.91\t55.0\n")
    with pytest.raises(UserError, match="not a member table"):
        read_members_tsv(tmp_path)


def _run_log(run_dir, members, start_step=0, is_main=True) -> RunLog:
    """The trainer's RunLog of a run of `members` on this one process (a real placement)."""
    from accelerate import Accelerator

    placement = Placement(Accelerator(cpu=True), len(members), "auto")
    return RunLog(run_dir, is_main, "sweep", start_step, 4, 1, 32, members, placement)


def test_each_member_is_its_own_tensorboard_run(tmp_path):
    base = RunConfig(model=ModelConfig(input_dim=16, n_latents=10))
    members = members_from_sweep(base, "beta_outer=8,16,24")
    names = [m.name for m in members]
    logs = _run_log(tmp_path, members)
    for step in (1, 2, 3, 4):
        logs.scalars({"train/loss": torch.tensor([1.0, 2.0, 3.0]) * step, "sched/beta": [8.0, 16.0, 24.0]}, step)
    model = IterativeVAE(members[0].config.model, [m.config.model for m in members])
    logs.dictionaries(model.W.detach(), 4)
    val = [{"val/r2_pooled": 0.5 + i / 10, "val/zeros": 0.5} for i in range(len(names))]
    logs.finish(tmp_path / "ckpt" / "step-00000004", model, val, 4, 4, logged=True)
    logs.close()
    for i, name in enumerate(names):
        tb_dir = member_dir(tmp_path, name) / "tb"
        assert tb_dir == tmp_path / "members" / name / "tb"
        acc = accumulate(tb_dir)
        loss = acc.Scalars("train/loss")
        assert [e.step for e in loss] == [1, 2, 3, 4]
        assert [e.value for e in loss] == pytest.approx([(i + 1.0) * s for s in (1, 2, 3, 4)])
        assert [e.value for e in acc.Scalars("sched/beta")] == pytest.approx([8.0 * (i + 1)] * 4)
        assert acc.Images("dictionary")[0].step == 4
        from tensorboard.plugins.hparams import plugin_data_pb2

        hparams_run = accumulate(tb_dir / "hparams")
        start = hparams_run.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        hparams = plugin_data_pb2.HParamsPluginData.FromString(start).session_start_info.hparams
        assert hparams["beta_outer"].number_value == 8.0 * (i + 1)
        assert hparams_run.Scalars("hparam/val/r2_pooled")[0].value == pytest.approx(0.5 + i / 10)

    # a resumed run (checkpoint at step 2) drops what the interrupted run wrote after it.
    # TensorBoard reads event files in name order, and a name holds the creation second
    # and a per-process counter (lexicographic: '10' < '9'); a real resume is a new process
    # seconds later, so wait a second as it would.
    time.sleep(1.1)
    logs = _run_log(tmp_path, members, start_step=2)
    logs.scalars({"train/loss": torch.tensor([-1.0, -2.0, -3.0])}, 3)
    logs.close()
    loss = accumulate(member_dir(tmp_path, names[1]) / "tb").Scalars("train/loss")
    assert [(e.step, e.value) for e in loss] == [(1, 2.0), (2, 4.0), (3, -2.0)]

    with pytest.raises(ValueError, match="one value per member"):
        _run_log(tmp_path / "other", members).scalars({"x": [1.0, 2.0]}, 1)
    silent = _run_log(tmp_path / "rank1", members, is_main=False)
    silent.scalars({"x": [1.0, 2.0, 3.0]}, 1)
    silent.close()
    assert not (tmp_path / "rank1").exists()


def test_sweep_summary_groups_seeds_and_draws_the_plane(tmp_path):
    members = members_from_sweep(RunConfig(), "beta_outer=8,16 seed=0,1,2")
    results = sweep_results(members)
    write_members_tsv(tmp_path, members, results)
    groups = group_members(read_members_tsv(tmp_path))
    assert [g.label for g in groups] == ["b8", "b16"]
    assert [g.n for g in groups] == [3, 2]  # b16-s2 is not validated yet
    b8 = [results[f"b8-s{s}"] for s in range(3)]
    assert groups[0].mean["r2_pooled"] == pytest.approx(np.mean([v["val/r2_pooled"] for v in b8]))
    assert groups[0].sd["r2_pooled"] == pytest.approx(np.std([v["val/r2_pooled"] for v in b8], ddof=1))
    assert groups[0].mean["zeros_pct"] == pytest.approx(100 * np.mean([v["val/zeros"] for v in b8]))
    assert groups[1].members == ("b16-s0", "b16-s1", "b16-s2")

    table, figure = summarise_sweep(tmp_path)
    lines = table.read_text().splitlines()
    assert lines[0].split("\t") == ["group", "beta_outer", "seeds", "r2_pooled_seed_mean", "r2_pooled_seed_sd",
                                    "zeros_pct_seed_mean", "zeros_pct_seed_sd"]
    assert lines[1].split("\t")[:3] == ["b8", "8", "3"]
    import matplotlib.image

    image = matplotlib.image.imread(figure)
    assert image.shape[0] > 300 and image.shape[1] > 400
    assert image[..., :3].std() > 0.05  # something is drawn
    text = format_sweep_table(groups)
    assert text.splitlines()[0].split() == ["group", "seeds", "R2", "pooled", "zeros", "%"] and "b16" in text


def test_sweep_summary_does_not_import_the_trainer():
    code = ("import sys, fondtrain.eval.sweep_summary; "
            "bad = [m for m in sys.modules if m.startswith('fondtrain.train')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
