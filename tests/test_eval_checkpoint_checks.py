"""eval, export, hubel-wiesel and bench check a checkpoint against its checksums.json as a
resume does (issue 22, item 3): given a run, a corrupt newest checkpoint is skipped with one
line and the one before it is used; a named checkpoint that does not verify, or a weights
file that cannot be read, stops with one sentence (exit 2, no traceback, nothing written).

The commands run through `fondtrain.cli.main`, the console entry point, in this process."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from fondtrain.cli import main
from fondtrain.runs import files as run_files
from fondtrain.train.trainer import train
from tests.train_helpers import tiny_config

EVAL_FAST = ["--n_steps=20", "--n_val=64", "--probe=false", "--tuning=false", "--gabor=false",
             "--figures=false", "--tensorboard=false"]


@pytest.fixture(scope="module")
def trained(digits_shards, tmp_path_factory):
    """A tiny run with checkpoints at steps 5 and 10 (copied afresh for each test)."""
    runs = tmp_path_factory.mktemp("checked")
    train(tiny_config(digits_shards, runs, "r", max_steps=10, ckpt_every=5))
    return runs / "r"


@pytest.fixture
def run(trained, tmp_path):
    copy = tmp_path / "r"
    shutil.copytree(trained, copy)
    return copy


def _flip_middle(path) -> None:
    data = path.read_bytes()
    middle = len(data) // 2
    path.write_bytes(data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 64]) + data[middle + 64:])


def _truncate(path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _cli(capsys, *argv) -> tuple[int, str, str]:
    try:
        main(list(argv))
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _newest(run):
    return run / "ckpt" / "step-00000010"


def test_export_of_a_run_skips_a_corrupt_newest_checkpoint(run, tmp_path, capsys):
    _flip_middle(_newest(run) / run_files.MODEL_FILE)
    code, _, err = _cli(capsys, "export", str(run), "--out", str(tmp_path / "out"))
    assert code == 0, err
    exported = load_file(str(tmp_path / "out" / run_files.MODEL_FILE))
    before = load_file(str(run / "ckpt" / "step-00000005" / run_files.MODEL_FILE))
    assert all(torch.equal(exported[k], before[k][0]) for k in exported)  # the one member, single layout
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "skipping corrupt checkpoint" in lines[0] and "step-00000010" in lines[0], err


def test_eval_of_a_run_skips_a_corrupt_newest_checkpoint(run, capsys):
    _flip_middle(_newest(run) / run_files.MODEL_FILE)
    code, out, err = _cli(capsys, "eval", str(run), *EVAL_FAST)
    assert code == 0, err
    assert "skipping corrupt checkpoint" in err and "step-00000010" in err and "Traceback" not in err
    assert err.count("skipping corrupt checkpoint") == 1, err


@pytest.mark.parametrize("command", ["eval", "hubel-wiesel"])
@pytest.mark.parametrize("corrupt", [_flip_middle, _truncate])
def test_a_named_corrupt_checkpoint_stops_with_one_sentence(run, tmp_path, capsys, command, corrupt):
    corrupt(_newest(run) / run_files.MODEL_FILE)
    extra = EVAL_FAST if command == "eval" else ["--n_blank=2", "--n_sweep=4", "--orientations=0,90", "--lead=1",
                                                 "--movie=false"]
    code, _, err = _cli(capsys, command, "--checkpoint", str(_newest(run)), "--out", str(tmp_path / "o"), *extra)
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "step-00000010" in err, err
    assert not (tmp_path / "o").exists()


def test_export_of_a_named_corrupt_weights_file_stops(run, tmp_path, capsys):
    _flip_middle(_newest(run) / run_files.MODEL_FILE)
    code, _, err = _cli(capsys, "export", str(_newest(run) / run_files.MODEL_FILE), "--out", str(tmp_path / "o"))
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


def test_a_truncated_weights_file_without_checksums_is_one_sentence(run, tmp_path, capsys):
    """An exported model has no checksums.json: the load itself must say it."""
    assert _cli(capsys, "export", str(run), "--out", str(tmp_path / "exported"))[0] == 0
    _truncate(tmp_path / "exported" / run_files.MODEL_FILE)
    code, _, err = _cli(capsys, "eval", "--checkpoint", str(tmp_path / "exported" / run_files.MODEL_FILE),
                        "--out", str(tmp_path / "o"), *EVAL_FAST)
    assert code == 2 and err.startswith("error: ") and "truncated or corrupt" in err and err.count("\n") == 1, err


def test_bench_on_a_corrupt_checkpoint_stops_with_one_sentence(run, capsys):
    _truncate(_newest(run) / run_files.MODEL_FILE)
    code, _, err = _cli(capsys, "bench", "--checkpoint", str(_newest(run)), "--quick", "--memory=false",
                        "--presets=ipvae")
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "step-00000010" in err, err


def test_no_checkpoint_of_a_run_verifies(run, capsys):
    for checkpoint in run_files.list_checkpoints(run / "ckpt"):
        _flip_middle(checkpoint / run_files.MODEL_FILE)
    code, _, err = _cli(capsys, "export", str(run), "--out", str(run / "o"))
    assert code == 2 and "error: none of the 2 checkpoints" in err and "Traceback" not in err, err
