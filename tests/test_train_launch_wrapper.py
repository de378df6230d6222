"""launch/run.py around `accelerate launch` (2 real CPU processes): SIGTERM -> checkpoint
and exit 0 without a traceback; a user error -> exit 2; bare accelerate launch gives 1."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest

from fondtrain.runs import files as run_files
from tests.train_helpers import REPO, subprocess_env, tiny_flags

sys.path.insert(0, str(REPO / "launch"))
from run import children  # noqa: E402

pytestmark = pytest.mark.slow
LAUNCH = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
          "--dynamo_backend", "no", "--main_process_port", "29741"]


def _start(command, cwd):
    return subprocess.Popen(command, cwd=cwd, env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for(path, proc, timeout=240.0):
    start = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() - start < timeout, f"{path} never appeared"
        time.sleep(0.2)


# Who receives the SIGTERM: "run.py" (the wrapper alone), "launcher" (accelerate's launcher,
# under the wrapper), "workers" (the training processes). "bare": accelerate launch alone.
TARGETS = ["run.py", "run.py+launcher", "run.py+launcher+workers", "launcher", "bare"]


@pytest.mark.parametrize("targets", TARGETS)
def test_sigterm_to_the_launcher(digits_shards, tmp_path, targets):
    """However the signal arrives (a scheduler signalling the wrapper, or every process of
    the job step), the training processes checkpoint and run.py exits 0; bare accelerate
    launch exits 128 + 15 after the same clean checkpoint (measured, accelerate 1.x)."""
    runs = tmp_path / "runs"
    flags = tiny_flags(digits_shards, runs, "w", epochs=200)
    wrapped = targets != "bare"
    launcher = [sys.executable, str(REPO / "launch" / "run.py")] if wrapped else \
        [sys.executable, "-m", "accelerate.commands.launch"]
    proc = _start([*launcher, *LAUNCH, str(REPO / "launch" / "train.py"), *flags], tmp_path)
    _wait_for(runs / "w" / "tb", proc)
    time.sleep(3.0)
    inner = children(proc.pid)  # under run.py: the launcher; bare: the workers
    workers = [w for pid in inner for w in children(pid)] if wrapped else inner
    pids = {"run.py": [proc.pid], "launcher": inner, "workers": workers, "bare": [proc.pid]}
    for target in targets.split("+"):
        for pid in pids[target]:
            os.kill(pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert run_files.latest_checkpoint(runs / "w" / "ckpt") is not None, err[-3000:]
    if wrapped:
        assert proc.returncode == 0 and "Traceback" not in err, err[-3000:]
    else:  # the fault the wrapper exists for
        assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]


def test_user_error_exits_2(digits_shards, tmp_path):
    flags = tiny_flags(digits_shards, tmp_path / "runs", "u", batch_size=100000)
    proc = _start([sys.executable, str(REPO / "launch" / "run.py"), *LAUNCH,
                   str(REPO / "launch" / "train.py"), *flags], tmp_path)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 2, err[-3000:]
    assert "error: " in err


def test_kill_9_of_run_py_ends_the_launcher_and_the_training(digits_shards, tmp_path):
    """run.py starts the launcher in a session of its own (a Ctrl-C must reach run.py
    alone): killing run.py's process group must still end the launcher and its workers,
    which would otherwise train on, holding the run's lock and writing checkpoints."""
    from fondtrain.train.run_lock import RunLock
    from tests.test_train_parent_death import _alive

    runs = tmp_path / "runs"
    flags = tiny_flags(digits_shards, runs, "k", epochs=200)
    proc = _start([sys.executable, str(REPO / "launch" / "run.py"), *LAUNCH, str(REPO / "launch" / "train.py"),
                   *flags], tmp_path)
    _wait_for(runs / "k" / "tb", proc)
    (launcher,) = children(proc.pid)
    workers = children(launcher)
    assert len(workers) == 2
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    start = time.monotonic()
    while any(_alive(p) for p in [launcher, *workers]) and time.monotonic() - start < 15.0:
        time.sleep(0.2)
    survivors = [p for p in [launcher, *workers] if _alive(p)]
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"{survivors} outlived run.py"
    with RunLock(runs / "k") as lock:  # free: taken over from the dead holder, with a note
        assert lock.note is not None


@pytest.mark.parametrize("fault", ["lock held", "changed settings"])
def test_a_two_process_user_error_is_one_sentence_printed_last(digits_shards, tmp_path, fault):
    """The main process finds it alone (the lock, the checkpoint's settings) while the other
    rank waits: that rank must stop quietly (no gloo RuntimeError), the launcher's
    ChildFailedError traceback is dropped and the sentence comes once, last."""
    from fondtrain.train.run_lock import RunLock
    from fondtrain.train.trainer import train
    from tests.train_helpers import tiny_config

    runs = tmp_path / "runs"
    extra = {}
    if fault == "changed settings":
        train(tiny_config(digits_shards, runs, "u", max_steps=5, ckpt_every=5))
        extra = {"lr": 0.05}
    with RunLock(runs / "u") if fault == "lock held" else contextlib.nullcontext():
        proc = _start([sys.executable, str(REPO / "launch" / "run.py"), *LAUNCH, str(REPO / "launch" / "train.py"),
                       *tiny_flags(digits_shards, runs, "u", **extra)], tmp_path)
        _, err = proc.communicate(timeout=240)
    assert proc.returncode == 2, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err[-3000:]
    assert ("is in use by" if fault == "lock held" else "train.lr") in errors[0], errors[0]
    assert "Traceback" not in err and "RuntimeError" not in err, err[-3000:]
