"""Pre-emption: SIGUSR1 to a real training run -> checkpoint, `scontrol requeue <job>`, exit 0;
the same command run again resumes from that checkpoint and finishes.

`scontrol` is a fake on PATH that records its arguments; SLURM_JOB_ID is set as in a job.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fondtrain.runs import files as run_files
from tests.train_helpers import ACCELERATE_2PROC, REPO, subprocess_env


def _fake_scontrol(tmp_path: Path) -> tuple[Path, Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "scontrol.log"
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/bash\necho "$*" >> "{record}"\n')
    scontrol.chmod(0o755)
    return bin_dir, record


class _Output:
    """Collects a process's output in a thread, so that the test can wait for a marker."""

    def __init__(self, proc: subprocess.Popen):
        self.text = ""
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc):
        while chunk := os.read(proc.stdout.fileno(), 4096):
            self.text += chunk.decode(errors="replace")

    def wait_for(self, marker: str, proc: subprocess.Popen, timeout: float = 180) -> None:
        end = time.monotonic() + timeout
        while marker not in self.text:
            if proc.poll() is not None or time.monotonic() > end:
                raise AssertionError(f"never saw {marker!r}:\n{self.text[-3000:]}")
            time.sleep(0.05)

    def join(self) -> str:
        self._thread.join(timeout=30)
        return self.text


def _flags(digits_shards: Path, runs: Path, name: str, max_steps: int) -> list[str]:
    return ["--dataset", "digits", "--shards_root", str(digits_shards), "--runs_root", str(runs),
            "--name", name, "--model", "igvae", "--n_latents", "16", "--t_train", "2",
            "--batch_size", "20", "--epochs", "20", "--max_steps", str(max_steps), "--log_every", "10"]


def _descendants(pid: int) -> list[int]:
    """pid and every process below it (like the processes of a SLURM job step's cgroup)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


@pytest.mark.slow
def test_sigusr1_checkpoints_requeues_and_the_same_command_resumes(digits_shards, tmp_path):
    bin_dir, record = _fake_scontrol(tmp_path)
    env = subprocess_env(PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="4242")
    command = [sys.executable, str(REPO / "launch" / "train.py"),
               *_flags(digits_shards, tmp_path / "runs", "preempted", 150)]
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = _Output(proc)
    output.wait_for("preempted:", proc)  # the progress bar: the loop is about to start
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=120) == 0, output.join()[-3000:]
    text = output.join()
    assert "received SIGUSR1" in text and "stopped by signal" in text, text[-3000:]
    assert record.read_text().split("\n")[0] == "requeue 4242"
    ckpt_root = tmp_path / "runs" / "preempted" / "ckpt"
    saved = run_files.latest_checkpoint(ckpt_root)
    step = run_files.read_trainer_state(saved)["global_step"]
    assert 0 < step < 150, "stopped early, at the end of the batch it was in"
    assert not (tmp_path / "runs" / "preempted" / "dictionary.png").exists(), "no end-of-run work after a stop"

    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"from {saved.name} (step {step})" in again.stdout
    assert run_files.read_trainer_state(run_files.latest_checkpoint(ckpt_root))["global_step"] == 150
    assert record.read_text().count("requeue") == 1, "a run that finishes does not requeue"


@pytest.mark.slow
def test_sigusr1_to_every_process_under_a_launcher_that_ignores_it(digits_shards, tmp_path):
    """What slurmstepd does with `--signal=USR1@120`: signal every process of the job step.
    The sbatch scripts start the launcher with SIGUSR1 ignored (inherited across exec), so
    accelerate's torchrun agent survives, while both training processes (own sessions, own
    handler) checkpoint at the same step; only rank 0 requeues."""
    bin_dir, record = _fake_scontrol(tmp_path)
    env = subprocess_env(PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_ID="5151")
    launch = [*ACCELERATE_2PROC, str(REPO / "launch" / "train.py"),
              *_flags(digits_shards, tmp_path / "runs", "tree", 400)]
    script = 'trap "" USR1; exec "$@"'
    proc = subprocess.Popen(["bash", "-c", script, "bash", *launch], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = _Output(proc)
    output.wait_for("tree:", proc)
    tree = _descendants(proc.pid)
    assert len(tree) >= 3, "launcher and two workers"
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGUSR1)
    assert proc.wait(timeout=180) == 0, output.join()[-4000:]
    text = output.join()
    assert text.count("received SIGUSR1") == 2, text[-4000:]
    assert record.read_text().splitlines() == ["requeue 5151"]
    saved = run_files.latest_checkpoint(tmp_path / "runs" / "tree" / "ckpt")
    state = json.loads((saved / run_files.TRAINER_STATE).read_text())
    assert state["world_size"] == 2 and 0 < state["global_step"] < 400
