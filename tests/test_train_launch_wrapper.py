"""launch/run.py around `accelerate launch` (2 real CPU processes): SIGTERM -> checkpoint
and exit 0 without a traceback; a user error -> exit 2; bare accelerate launch gives 1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from fondtrain import run_files
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


@pytest.mark.parametrize("wrapped,everyone", [(True, False), (True, True), (False, False)])
def test_sigterm_to_the_launcher(digits_shards, tmp_path, wrapped, everyone):
    """everyone: the signal reaches the wrapper and accelerate's launcher (a scheduler
    signalling every process of the job step)."""
    runs = tmp_path / "runs"
    flags = tiny_flags(digits_shards, runs, "w", epochs=200)
    launcher = [sys.executable, str(REPO / "launch" / "run.py")] if wrapped else \
        [sys.executable, "-m", "accelerate.commands.launch"]
    proc = _start([*launcher, *LAUNCH, str(REPO / "launch" / "train.py"), *flags], tmp_path)
    _wait_for(runs / "w" / "tb", proc)
    time.sleep(3.0)
    inner = children(proc.pid)
    proc.send_signal(signal.SIGTERM)
    if everyone:
        for pid in inner:
            os.kill(pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert run_files.latest_checkpoint(runs / "w" / "ckpt") is not None, err[-3000:]
    if wrapped:
        assert proc.returncode == 0 and "Traceback" not in err, err[-3000:]
    else:  # the fault the wrapper exists for
        assert proc.returncode == 1 and "SignalException" in err


def test_user_error_exits_2(digits_shards, tmp_path):
    flags = tiny_flags(digits_shards, tmp_path / "runs", "u", batch_size=100000)
    proc = _start([sys.executable, str(REPO / "launch" / "run.py"), *LAUNCH,
                   str(REPO / "launch" / "train.py"), *flags], tmp_path)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 2, err[-3000:]
    assert "error: " in err
