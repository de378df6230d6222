"""Workers die with their launcher: kill -9 of a launcher's process group (whose workers
live in sessions of their own, as torchrun starts them) ends the workers within seconds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.train_helpers import REPO

# A worker: optionally watches its parent, writes its pid, then sleeps.
WORKER = """
import os, sys, time
sys.path.insert(0, {repo!r})
from fondtrain.train import signals
mode = sys.argv[1]
if mode == "prctl":
    assert signals.die_with_parent(force=True) == "prctl"
elif mode == "watchdog":
    import threading
    threading.Thread(target=signals._watch_parent, args=(os.getppid(), 0.2), daemon=True).start()
open(sys.argv[2], "w").write(str(os.getpid()))
time.sleep(120)
"""
# A launcher like torchrun's: the worker in its own session, then wait.
LAUNCHER = """
import subprocess, sys
subprocess.Popen([sys.executable, sys.argv[1], sys.argv[2], sys.argv[3]], start_new_session=True).wait()
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (reaped by init later) counts as gone.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"


def _wait_for_file(path, timeout=60.0):
    start = time.monotonic()
    while not (path.exists() and path.read_text()):
        assert time.monotonic() - start < timeout, "the worker never started"
        time.sleep(0.1)
    return int(path.read_text())


def _kill_launcher_group_and_time_worker(tmp_path, mode):
    worker, launcher, pid_file = tmp_path / "worker.py", tmp_path / "launcher.py", tmp_path / f"{mode}.pid"
    worker.write_text(WORKER.format(repo=str(REPO)))
    launcher.write_text(LAUNCHER)
    proc = subprocess.Popen([sys.executable, str(launcher), str(worker), mode, str(pid_file)],
                            start_new_session=True)
    pid = _wait_for_file(pid_file)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    start = time.monotonic()
    while _alive(pid) and time.monotonic() - start < 10.0:
        time.sleep(0.1)
    gone_after = time.monotonic() - start
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
        return None
    return gone_after


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux only")
@pytest.mark.parametrize("mode", ["prctl", "watchdog"])
def test_worker_dies_within_seconds_of_its_launcher(tmp_path, mode):
    gone_after = _kill_launcher_group_and_time_worker(tmp_path, mode)
    assert gone_after is not None and gone_after < 5.0, "the worker outlived its launcher"


def test_unwatched_worker_outlives_its_launcher(tmp_path):
    """The fault itself: without die_with_parent the worker keeps running."""
    assert _kill_launcher_group_and_time_worker(tmp_path, "none") is None


def test_single_process_run_is_left_alone(monkeypatch):
    for name in ("TORCHELASTIC_RUN_ID", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    from fondtrain.train.signals import die_with_parent

    assert die_with_parent() is None


TORCHRUN_WORKER = """
import os, sys, time
sys.path.insert(0, {repo!r})
from fondtrain.train.signals import die_with_parent
die_with_parent()
open(os.path.join(sys.argv[1], os.environ["LOCAL_RANK"] + ".pid"), "w").write(f"{{os.getpid()}}")
time.sleep(120)
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux only")
def test_torchrun_workers_die_with_a_killed_launcher_group(tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(TORCHRUN_WORKER.format(repo=str(REPO)))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_port", "29731", str(worker), str(tmp_path)]
    proc = subprocess.Popen(torchrun, start_new_session=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    pids = [_wait_for_file(tmp_path / f"{rank}.pid", timeout=120) for rank in (0, 1)]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    start = time.monotonic()
    while any(_alive(p) for p in pids) and time.monotonic() - start < 10.0:
        time.sleep(0.1)
    survivors = [p for p in pids if _alive(p)]
    for p in survivors:
        os.kill(p, signal.SIGKILL)
    assert not survivors, f"workers {survivors} outlived torchrun"
