"""A run folder is locked by one training: a second process is refused, a dead holder's
lock is taken over with a note, and the lock goes with its process (real processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from fondtrain.errors import UserError
from fondtrain.train.run_lock import LOCK_FILE, RunLock
from tests.train_helpers import REPO

HOLD = ("import sys, time; from fondtrain.train.run_lock import RunLock; "
        "lock = RunLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(600)")


def _holder(run_dir):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], env=env,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_process_is_refused_naming_the_holder(tmp_path):
    run_dir = tmp_path / "runs" / "a"
    proc = _holder(run_dir)
    try:
        with pytest.raises(UserError, match=f"in use by pid {proc.pid} on host "):
            RunLock(run_dir).acquire()
    finally:
        proc.kill()
        proc.wait()


def test_lock_of_a_killed_process_is_taken_over_with_a_note(tmp_path):
    run_dir = tmp_path / "a"
    proc = _holder(run_dir)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert f"pid={proc.pid}" in (run_dir / LOCK_FILE).read_text()  # left behind by kill -9
    with RunLock(run_dir) as lock:
        assert lock.note is not None and f"pid {proc.pid}" in lock.note
        assert f"pid={os.getpid()}" in (run_dir / LOCK_FILE).read_text()
    # Released on exit: a fresh process takes it without a note.
    assert (run_dir / LOCK_FILE).read_text() == ""
    proc = _holder(run_dir)
    proc.kill()
    proc.wait()


def test_lock_is_released_when_the_holder_exits_normally(tmp_path):
    code = ("import sys; from fondtrain.train.run_lock import RunLock; "
            "RunLock(sys.argv[1]).acquire(); raise SystemExit(3)")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    assert subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env).returncode == 3
    start = time.monotonic()
    with RunLock(tmp_path) as lock:
        assert time.monotonic() - start < 1.0
        assert lock.note is not None  # it exited without release(): the kernel dropped the lock
