"""SIGTERM / SIGUSR1 / SIGINT (Ctrl-C) checkpoint a real run and stop it cleanly; a restart
resumes; a second Ctrl-C stops at once."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from fondtrain.runs import files as run_files
from tests.train_helpers import REPO, subprocess_env, tiny_flags

pytestmark = pytest.mark.slow


def _start(flags, cwd):
    return subprocess.Popen([sys.executable, str(REPO / "launch" / "train.py"), *flags], cwd=cwd,
                            env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path, proc, timeout=120.0):
    start = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() - start < timeout, f"{path} never appeared"
        time.sleep(0.2)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT])
def test_signal_saves_checkpoint_and_restart_resumes(digits_shards, tmp_path, signum):
    runs = tmp_path / "runs"
    flags = tiny_flags(digits_shards, runs, "sig", epochs=200)
    proc = _start(flags, tmp_path)
    _wait_for(runs / "sig" / "config.yaml", proc)
    time.sleep(2.0)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert "stopped by signal" in out and "Traceback" not in err
    assert signal.Signals(signum).name in err
    saved = run_files.latest_checkpoint(runs / "sig" / "ckpt")
    assert saved is not None
    stopped_at = run_files.read_trainer_state(saved)["global_step"]
    assert 0 < stopped_at < 200 * 44
    resumed = subprocess.run([sys.executable, str(REPO / "launch" / "train.py"), *flags,
                              f"--max_steps={stopped_at + 3}"], cwd=tmp_path, env=subprocess_env(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming {runs / 'sig'} from {saved.name} (step {stopped_at})" in resumed.stdout
    assert f"done: {stopped_at + 3} steps" in resumed.stdout


def test_a_second_ctrl_c_stops_at_once_without_a_traceback(digits_shards, tmp_path):
    """Batches of about a second (K 512, t_train 16, batch 512) so that both signals land in
    one batch."""
    runs = tmp_path / "runs"
    flags = tiny_flags(digits_shards, runs, "twice", epochs=200, n_latents=512, t_train=16, batch_size=512)
    proc = _start(flags, tmp_path)
    _wait_for(runs / "twice" / "config.yaml", proc)
    time.sleep(2.0)
    proc.send_signal(signal.SIGINT)
    seen = []  # the second Ctrl-C once the first one's handler has run (it says so), not before:
    for line in proc.stderr:  # two signals before the handler runs would be one to Python
        seen.append(line)
        if "received SIGINT" in line:
            break
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=120)
    err = "".join(seen) + rest
    assert proc.returncode == 128 + signal.SIGINT, err[-2000:]
    assert "stopping now, without a checkpoint" in err and "Traceback" not in err, err[-2000:]
    assert run_files.latest_checkpoint(runs / "twice" / "ckpt") is None
