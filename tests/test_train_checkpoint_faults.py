"""Checkpoint faults on real files: a corrupt newest checkpoint falls back to the one
before (one line), and a save on a full or read-only disk stops with one sentence, leaves
no temporary folder and keeps the previous checkpoints. (No RNG state is read back: every
member's noise is re-seeded at each step from its seed, the data rank and the step.)"""

from __future__ import annotations

import subprocess

import pytest
import torch

from fondtrain.config import RunConfig
from fondtrain.errors import UserError
from fondtrain.runs import files as run_files
from fondtrain.train.checkpoint import save_checkpoint
from fondtrain.train.resume import load_latest


def _setup(width=64):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = torch.nn.Linear(width, width)
    optimizer = torch.optim.Adamax(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    return accelerator, model, optimizer


def _train_step(model, optimizer):
    loss = model(torch.randn(4, model.in_features)).square().mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def _save_three(tmp_path):
    accelerator, model, optimizer = _setup()
    root = tmp_path / "ckpt"
    weights = {}
    for step in (10, 20, 30):
        _train_step(model, optimizer)
        save_checkpoint(accelerator, root, step, {"global_step": step, "epoch": 0, "batch_in_epoch": step},
                        RunConfig(), keep_last=3)
        weights[step] = model.weight.detach().clone()
    return accelerator, model, root, weights


def _corrupt(path, how):
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:  # garbage over the middle of the file
        middle = len(data) // 2
        path.write_bytes(data[:middle] + b"\x00" * 64 + data[middle + 64:])


@pytest.mark.parametrize("name,how", [("model.safetensors", "truncate"), ("optimizer.bin", "truncate"),
                                      ("trainer_state.json", "garbage"), ("model.safetensors", "garbage")])
def test_corrupt_newest_checkpoint_falls_back_to_the_one_before(tmp_path, name, how):
    accelerator, model, root, weights = _save_three(tmp_path)
    _corrupt(root / "step-00000030" / name, how)
    warnings = []
    checkpoint, state = load_latest(accelerator, root, "accelerate", warn=warnings.append)
    assert checkpoint.name == "step-00000020" and state["global_step"] == 20
    assert torch.equal(model.weight.detach(), weights[20])
    assert len(warnings) == 1 and "step-00000030" in warnings[0] and "\n" not in warnings[0]


def test_no_loadable_checkpoint_is_one_sentence(tmp_path):
    accelerator, _, root, _ = _save_three(tmp_path)
    for checkpoint in run_files.list_checkpoints(root):
        _corrupt(checkpoint / "model.safetensors", "truncate")
    with pytest.raises(UserError, match="none of the 3 checkpoints"):
        load_latest(accelerator, root, "accelerate", warn=lambda _: None)
    assert load_latest(accelerator, tmp_path / "empty", "accelerate") is None


def test_save_where_a_file_blocks_the_folder_is_one_sentence(tmp_path):
    accelerator, model, optimizer = _setup()
    root = tmp_path / "ckpt"
    root.write_text("not a folder")
    with pytest.raises(UserError, match=f"cannot write checkpoint step-00000005 in {root}"):
        save_checkpoint(accelerator, root, 5, {"global_step": 5}, RunConfig(), keep_last=2)


@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MiB tmpfs (needs root and mount); skipped where it cannot be mounted."""
    where = tmp_path / "disk"
    where.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_save_on_a_full_or_read_only_disk_keeps_the_previous_checkpoint(small_disk, fault):
    accelerator, model, optimizer = _setup(width=256 if fault == "full" else 64)  # ~0.8 MB per checkpoint
    root = small_disk / "run" / "ckpt"
    save_checkpoint(accelerator, root, 10, {"global_step": 10, "epoch": 0, "batch_in_epoch": 10},
                    RunConfig(), keep_last=3)
    first = model.weight.detach().clone()
    if fault == "read-only":
        subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    _train_step(model, optimizer)
    with pytest.raises(UserError) as err:
        save_checkpoint(accelerator, root, 20, {"global_step": 20, "epoch": 0, "batch_in_epoch": 20},
                        RunConfig(), keep_last=3)
    message = str(err.value)
    assert "cannot write checkpoint step-00000020" in message and "\n" not in message
    assert "--keep_last 3 needs room for 3 checkpoints" in message and "free there" in message
    assert ("No space left" if fault == "full" else "Read-only") in message
    assert [p.name for p in root.iterdir()] == ["step-00000010"]  # no .tmp-step-* left
    checkpoint, _ = load_latest(accelerator, root, "accelerate")
    assert checkpoint.name == "step-00000010" and torch.equal(model.weight.detach(), first)


def test_lowering_keep_last_makes_room_for_the_next_save(small_disk):
    """The full-disk sentence's advice works: the older checkpoints are deleted before a
    save, so a lower --keep_last frees room at the next save (a real 1 MiB tmpfs that holds
    two ~0.4 MB checkpoints, not three)."""
    accelerator, model, optimizer = _setup(width=180)
    root = small_disk / "run" / "ckpt"

    def save(step, keep_last):
        _train_step(model, optimizer)
        save_checkpoint(accelerator, root, step, {"global_step": step, "epoch": 0, "batch_in_epoch": step},
                        RunConfig(), keep_last=keep_last)

    save(10, keep_last=3)
    save(20, keep_last=3)
    with pytest.raises(UserError) as err:
        save(30, keep_last=3)
    assert "or lower --keep_last (with --keep_last 2 a save needs room for 2" in str(err.value)
    assert [p.name for p in run_files.list_checkpoints(root)] == ["step-00000010", "step-00000020"]
    save(30, keep_last=2)
    assert sorted(p.name for p in root.iterdir()) == ["step-00000020", "step-00000030"]
    checkpoint, _ = load_latest(accelerator, root, "accelerate")
    assert checkpoint.name == "step-00000030"
