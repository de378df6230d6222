"""A corrupt newest checkpoint met by a resume (issue 22, items 2 and 7): it is set aside
(step-N.corrupt), never reused, and the retrained step is saved again, bit for bit the
uninterrupted run's; a corrupt config.yaml inside it falls back like any corrupt file; a
corrupt or missing RNG file is a corrupt file too when checksums.json lists it."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from fondtrain.config import RunConfig
from fondtrain.runs import files as run_files
from fondtrain.train.checkpoint import save_checkpoint, verify_checksums
from fondtrain.train.resume import load_latest
from fondtrain.train.trainer import train
from tests.train_helpers import REPO, subprocess_env, tiny_config, tiny_flags


def _flip_middle(path) -> None:
    """Same-size corruption: 64 bytes in the middle overwritten."""
    data = path.read_bytes()
    middle = len(data) // 2
    path.write_bytes(data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 64]) + data[middle + 64:])


@pytest.mark.slow
def test_a_corrupt_newest_checkpoint_is_set_aside_and_saved_again(digits_shards, tmp_path):
    """The newest checkpoint's step (23) is not a multiple of ckpt_every (10): the re-run
    falls back to step 20, retrains to 23 and must write step 23 again, not keep the
    corrupt one because its COMPLETE marker is there; an export then has the good weights."""
    from fondtrain.runs.export import export_model

    flags = [*tiny_flags(digits_shards, tmp_path / "runs", "c", ckpt_every=10), "--max_steps=23"]

    def run():
        proc = subprocess.run([sys.executable, str(REPO / "launch" / "train.py"), *flags], cwd=tmp_path,
                              env=subprocess_env(), capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    run()
    ckpt = tmp_path / "runs" / "c" / "ckpt"
    newest = ckpt / "step-00000023"
    original = (newest / run_files.MODEL_FILE).read_bytes()
    _flip_middle(newest / run_files.MODEL_FILE)
    again = run()
    assert "from step-00000020" in again.stdout
    assert verify_checksums(newest) is None, "the corrupt checkpoint was kept"
    assert (newest / run_files.MODEL_FILE).read_bytes() == original  # the resumed run, bit for bit
    lines = [line for line in again.stderr.splitlines() if "step-00000023" in line]
    assert len(lines) == 1 and "moved it to step-00000023.corrupt" in lines[0], again.stderr[-3000:]
    assert [p.name for p in run_files.list_checkpoints(ckpt)] == ["step-00000010", "step-00000020", "step-00000023"]
    assert (ckpt / "step-00000023.corrupt").is_dir()
    exported = export_model(str(tmp_path / "runs" / "c"), str(tmp_path / "out"))
    saved = load_file(str(exported / run_files.MODEL_FILE))
    # the export is the one member in a single model's layout: the checkpoint's member 0
    checkpoint = load_file(str(newest / run_files.MODEL_FILE))
    assert all(torch.equal(saved[k], v[0]) for k, v in checkpoint.items() if k in saved)


def test_a_corrupt_config_yaml_in_the_newest_checkpoint_falls_back(digits_shards, tmp_path, capsys):
    train(tiny_config(digits_shards, tmp_path, "y", max_steps=8, ckpt_every=4))
    newest = run_files.latest_checkpoint(tmp_path / "y" / "ckpt")
    (newest / "config.yaml").write_text("model: [this is not: yaml\n")
    result = train(tiny_config(digits_shards, tmp_path, "y", max_steps=10, ckpt_every=4))
    captured = capsys.readouterr()
    assert "step-00000008" in captured.err and "config.yaml" in captured.err
    assert "from step-00000004" in captured.out
    assert result.step == 10
    assert verify_checksums(run_files.step_dir(tmp_path / "y" / "ckpt", 8)) is None


@pytest.mark.parametrize("how", ["corrupt", "missing"])
def test_a_corrupt_or_missing_rng_file_listed_in_checksums_falls_back(tmp_path, how):
    """What docs/faults.md says: with checksums.json (every checkpoint since it exists) a
    bad RNG state is a corrupt checkpoint, not a reseed."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    accelerator.prepare(torch.nn.Linear(4, 4))
    root = tmp_path / "ckpt"
    for step in (10, 20):
        save_checkpoint(accelerator, root, step, {"global_step": step, "epoch": 0, "batch_in_epoch": step},
                        RunConfig(), keep_last=2)
    rng = root / "step-00000020" / "random_states_0.pkl"
    if how == "missing":
        rng.unlink()
    else:
        _flip_middle(rng)
    warnings = []
    checkpoint, _ = load_latest(accelerator, root, "accelerate", warn=warnings.append)
    assert checkpoint.name == "step-00000010"
    assert len(warnings) == 1 and "random_states_0.pkl" in warnings[0]


def test_a_checkpoint_set_aside_is_not_listed(tmp_path):
    from fondtrain.train.checkpoint import set_aside

    for step in (1, 2):
        folder = run_files.step_dir(tmp_path, step)
        folder.mkdir()
        (folder / run_files.COMPLETE).write_text(f"{step}\n")
    assert set_aside(run_files.step_dir(tmp_path, 2)).name == "step-00000002.corrupt"
    run_files.step_dir(tmp_path, 2).mkdir()
    (run_files.step_dir(tmp_path, 2) / run_files.COMPLETE).write_text("2\n")
    assert set_aside(run_files.step_dir(tmp_path, 2)).name == "step-00000002.corrupt-2"
    assert [p.name for p in run_files.list_checkpoints(tmp_path)] == ["step-00000001"]
