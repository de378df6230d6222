"""A full disk met by TensorBoard, not by a save (issue 22, item 5), on a real small tmpfs
filled while the run trains: one sentence, exit 2, no traceback (neither the loop's nor
the writer thread's), a final checkpoint when there is room for it, and the run resumes
from it; without room, the save's own sentence."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time

import pytest

from fondtrain.runs import files as run_files
from fondtrain.train.checkpoint import verify_checksums
from tests.train_helpers import REPO, subprocess_env, tiny_flags

pytestmark = pytest.mark.slow


def _mount(where, size):
    where.mkdir(parents=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")


def _fill(folder) -> None:
    """Write a file until the disk holding `folder` is full."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as err:
        assert err.errno == errno.ENOSPC
    finally:
        os.close(fd)


@pytest.fixture
def mounts(tmp_path):
    made = []
    yield made
    for where in made:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.mark.parametrize("full", ["tb", "run"])
def test_a_full_disk_met_by_tensorboard_stops_after_a_checkpoint(digits_shards, tmp_path, mounts, full):
    """full: "tb": only the TensorBoard folder's disk (a 256 KiB tmpfs at runs/f/tb) is full,
    the checkpoint has room; "run": the whole run folder is on one full 2 MiB tmpfs."""
    runs = tmp_path / "runs"
    disk = runs / "f" / "tb" if full == "tb" else runs
    _mount(disk, "256k" if full == "tb" else "2m")
    mounts.append(disk)
    flags = tiny_flags(digits_shards, runs, "f", epochs=200, log_every=1, ckpt_minutes=0)
    proc = subprocess.Popen([sys.executable, str(REPO / "launch" / "train.py"), *flags], cwd=tmp_path,
                            env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tb = runs / "f" / "tb"
    start = time.monotonic()
    while not any(p.stat().st_size for p in tb.glob("events.*")) if tb.is_dir() else True:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() - start < 120, "TensorBoard never wrote"
        time.sleep(0.2)
    _fill(disk)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 2, err[-3000:]
    assert "Traceback" not in err and "Exception in thread" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err[-3000:]
    ckpt = runs / "f" / "ckpt"
    if full == "run":  # no room for the checkpoint either: the save says so
        assert errors[0].startswith("error: cannot write checkpoint step-") and "No space left" in errors[0]
        assert run_files.list_checkpoints(ckpt) == []
        return
    assert errors[0].startswith(f"error: cannot write the TensorBoard logs in {tb}: No space left on device")
    saved = run_files.latest_checkpoint(ckpt)
    assert saved is not None and f"saving checkpoint {saved.name}" in errors[0] and verify_checksums(saved) is None
    os.remove(tb / "filler")
    step = run_files.read_trainer_state(saved)["global_step"]
    resumed = subprocess.run([sys.executable, str(REPO / "launch" / "train.py"), *flags, f"--max_steps={step + 2}"],
                             cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"from {saved.name}" in resumed.stdout


def test_a_full_disk_when_tensorboard_starts_is_one_sentence(digits_shards, tmp_path, mounts):
    runs = tmp_path / "runs"
    tb = runs / "s" / "tb"
    _mount(tb, "64k")
    mounts.append(tb)
    _fill(tb)
    proc = subprocess.run([sys.executable, str(REPO / "launch" / "train.py"), *tiny_flags(digits_shards, runs, "s")],
                          cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot write the TensorBoard logs in {tb}: No space"), \
        proc.stderr
