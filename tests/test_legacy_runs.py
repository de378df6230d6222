"""Old runs keep working: run folders written by the release before every model had a
member axis (tests/data/legacy: a single iP-VAE and two populations, checkpointed by v0.2)
load, evaluate to the numbers that release's `fondtrain eval` recorded, and export their
own weights.

Their config.yaml names `shards_root: shards`; the tests copy each run folder into a
temporary folder and point evaluation at the digits shards built by `digits_shards`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fondtrain.cli import main
from fondtrain.config import RunConfig, load_yaml
from fondtrain.errors import UserError
from fondtrain.model.upstream import state_dict_from_upstream
from fondtrain.runs import files as run_files
from fondtrain.runs.export import export_model

LEGACY = Path(__file__).resolve().parent / "data" / "legacy"
EXPECTED = json.loads((LEGACY / "expected_eval.json").read_text())
# run -> its members' names ("" for the single model)
RUNS = {"single-ipvae": [""], "pop-igvae": ["s0", "s1"], "pop-ipvae": ["b8", "b16"]}
# The command the numbers were recorded with (EXPECTED["_command"]).
EVAL_FLAGS = ["--n_steps", "20", "--noprobe", "--notuning", "--nogabor", "--nofigures",
              "--notensorboard", "--n_val", "100"]
RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(params=list(RUNS))
def legacy_run(request, tmp_path) -> Path:
    run = tmp_path / request.param
    shutil.copytree(LEGACY / request.param, run)
    return run


def _checkpoint_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_files.resolve_checkpoint(run) / run_files.MODEL_FILE))


def _member_weights(weights: dict[str, torch.Tensor], index: int, n_members: int) -> dict[str, torch.Tensor]:
    """Member `index` of a checkpoint's weights: a population's slice, a single model's all."""
    single = weights["W"].dim() == 2
    assert single == (n_members == 1)
    return dict(weights) if single else {k: v[index] for k, v in weights.items()}


def test_legacy_runs_load_with_every_member(legacy_run):
    names = RUNS[legacy_run.name]
    model, config, members = run_files.load_run(legacy_run)
    assert [m.name for m in members] == names and model.n_members == len(names)
    assert config.train.name == legacy_run.name
    weights = _checkpoint_weights(legacy_run)
    for i, name in enumerate(names):
        expected = _member_weights(weights, i, len(names))
        for key, value in model.member_state_dict(i).items():
            torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=key)
        single, single_config = run_files.load_model(legacy_run, name or None)
        assert single.n_members == 1 and single_config.train.sweep == ""
        assert single_config.model == members[i].config.model
        torch.testing.assert_close(single.W[0], expected["W"], rtol=0, atol=0)
        assert run_files.checkpoint_eps(run_files.resolve_checkpoint(legacy_run), i) == 1.0


def test_legacy_runs_evaluate_to_their_recorded_numbers(legacy_run, digits_shards):
    main(["eval", str(legacy_run), *EVAL_FLAGS, "--shards_root", str(digits_shards)])
    names = RUNS[legacy_run.name]
    for name in names:
        folder = legacy_run.name + (f"/members/{name}" if name else "")
        out = legacy_run / "eval" / (f"members/{name}" if name else "")
        final = json.loads((out / "metrics.json").read_text())["final"]
        for key, value in EXPECTED[folder].items():
            assert final[key] == pytest.approx(value, rel=RTOL, abs=ATOL), (folder, key)
    assert (legacy_run / "eval" / "sweep_summary.tsv").is_file() == (names != [""])


@pytest.mark.parametrize("format", ["safetensors", "upstream"])
def test_legacy_runs_export_their_checkpoint_weights(legacy_run, tmp_path, format):
    names = RUNS[legacy_run.name]
    out = export_model(str(legacy_run), str(tmp_path / "export"), format)
    weights = _checkpoint_weights(legacy_run)
    gaussian = "igvae" in legacy_run.name
    for i, name in enumerate(names):
        expected = _member_weights(weights, i, len(names))
        if format == "safetensors":
            exported = load_file(str(out / name / run_files.MODEL_FILE))
        else:
            exported = state_dict_from_upstream(torch.load(out / name / "model.pt", weights_only=True)["model"])
            if gaussian:
                del expected["n_exp"]  # the reference's Gaussian models have no n_exp
        assert exported.keys() == expected.keys()
        for key, value in expected.items():
            torch.testing.assert_close(exported[key], value, rtol=0, atol=0, msg=key)


def test_legacy_runs_export_one_member_alone(legacy_run, tmp_path):
    names = RUNS[legacy_run.name]
    if names == [""]:
        with pytest.raises(UserError, match="single-model run, not a population: leave out --member"):
            export_model(str(legacy_run), str(tmp_path / "one"), member="s0")
        return
    out = export_model(str(legacy_run), str(tmp_path / "one"), member=names[1])
    expected = _member_weights(_checkpoint_weights(legacy_run), 1, len(names))
    exported = load_file(str(out / run_files.MODEL_FILE))
    for key, value in expected.items():
        torch.testing.assert_close(exported[key], value, rtol=0, atol=0, msg=key)
    member = run_files.load_run(legacy_run)[2][1]
    config = RunConfig.from_dict(load_yaml(out / "config.yaml"))
    assert config == run_files.single_run_config(member) and config.train.sweep == ""
    with pytest.raises(UserError, match="no member 'b99'"):
        export_model(str(legacy_run), str(tmp_path / "none"), member="b99")


@pytest.mark.slow
def test_legacy_runs_resume_and_train_on(legacy_run, digits_shards, capsys):
    """`fondtrain train --config RUN/config.yaml` resumes the old checkpoint (step 12: the
    weights, Adamax state and n_exp sums it holds, in the old single-model layouts) and
    trains on to step 16; the new checkpoint has the member axis and the same members."""
    from fondtrain.cli import train_command

    before = _checkpoint_weights(legacy_run)
    run_dir = train_command(["--config", str(legacy_run / "config.yaml"), "--runs_root", str(legacy_run.parent),
                             "--shards_root", str(digits_shards), "--max_steps", "16"])
    assert run_dir == legacy_run
    assert f"resuming {legacy_run} from step-00000012 (step 12)" in capsys.readouterr().out
    newest = run_files.latest_checkpoint(legacy_run / "ckpt")
    assert newest.name == "step-00000016"
    state = run_files.read_trainer_state(newest)
    assert state["global_step"] == 16 and len(state["eps"]) == len(RUNS[legacy_run.name])
    optimizer = torch.load(newest / "optimizer.bin", weights_only=True)
    assert {float(s["step"]) for s in optimizer["state"].values()} == {16.0}  # 12 old steps + 4
    after = load_file(str(newest / run_files.MODEL_FILE))
    for i, name in enumerate(RUNS[legacy_run.name]):
        old = _member_weights(before, i, len(RUNS[legacy_run.name]))
        assert after["W"][i].shape == old["W"].shape
        assert not torch.equal(after["W"][i], old["W"]), f"member {name!r} trained on"
