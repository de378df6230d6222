"""Shared pieces of the training tests: tiny configs and TensorBoard readers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fondtrain.config import DataConfig, ModelConfig, RunConfig, TrainConfig

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def tiny_config(shards_root: Path, runs_root: Path, name: str, **train_overrides) -> RunConfig:
    """ipvae with 16 latents on the digits data set: a few seconds per epoch on a CPU."""
    train = dict(batch_size=32, epochs=2, log_every=5, eval_every=0, ckpt_every=0, keep_last=3,
                 runs_root=str(runs_root), name=name, n_exp_refresh_every=7)
    train.update(train_overrides)
    return RunConfig(
        model=ModelConfig(preset="ipvae", input_dim=64, n_latents=16, t_train=3),
        data=DataConfig(dataset="digits", shards_root=str(shards_root)),
        train=TrainConfig(**train),
    )


def tiny_flags(shards_root: Path, runs_root: Path, name: str, **extra) -> list[str]:
    """The same tiny run as command-line flags for launch/train.py."""
    flags = {"dataset": "digits", "shards_root": shards_root, "runs_root": runs_root, "name": name,
             "model": "ipvae", "n_latents": 16, "t_train": 3, "batch_size": 32, "epochs": 2,
             "log_every": 5, "n_exp_refresh_every": 7}
    flags.update(extra)
    return [f"--{k}={v}" for k, v in flags.items()]


def scalars(tb_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """All scalar series in a TensorBoard log folder: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def image_tags(tb_dir: Path) -> list[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"images": 0})
    acc.Reload()
    return acc.Tags()["images"]


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"})
    env.update(extra)
    return env


# Real 2-process CPU data parallelism through Accelerate (gloo), as MACHINE.md describes.
ACCELERATE_2PROC = [PYTHON, "-m", "accelerate.commands.launch", "--multi_gpu",
                    "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                    "--dynamo_backend", "no", "--main_process_port", "29517"]

# The same through launch/run.py: signals forwarded, exit status 0 / 2 / the launcher's.
RUN_2PROC = [PYTHON, str(REPO / "launch" / "run.py"), *ACCELERATE_2PROC[3:]]


def accelerate_launch(processes: int) -> list[str]:
    """ACCELERATE_2PROC with another number of processes."""
    command = list(ACCELERATE_2PROC)
    command[command.index("--num_processes") + 1] = str(processes)
    return command


def run_ddp_worker(shards_root: Path, tmp_path: Path, name: str, out: str, processes: int = 2,
                   **flags) -> subprocess.CompletedProcess:
    """tests/ddp_worker.py on `processes` processes for the tiny run `name` (runs under
    tmp_path/runs), each rank's final weights written under tmp_path/out; fails the test on
    a non-zero exit. Returns the finished process (its stdout: the run's log)."""
    run = tiny_flags(shards_root, tmp_path / "runs", name, **flags)
    proc = subprocess.run([*accelerate_launch(processes), str(REPO / "tests" / "ddp_worker.py"),
                           str(tmp_path / out), *run],
                          cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc
