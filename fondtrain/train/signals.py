"""Pre-emption: SIGTERM / SIGUSR1 / SIGINT ask the run to checkpoint and stop cleanly.

A signal reaches the ranks at different moments, so the handler only records it; the
loop all-reduces the flag once per batch (after the optimiser step) so that every rank
saves at the same step. On SLURM (`#SBATCH --signal=USR1@120 --requeue`) the main
process then asks `scontrol requeue` for the job, which resumes from the newest
complete checkpoint when it starts again. Ctrl-C (SIGINT) is a stop request too; a
second one stops at once, without the checkpoint (exit status 130). A fault that must end
the run after a checkpoint (TensorBoard's full disk, `log_faults`) asks the same way
(`StopRequest.fail`), and the run then stops with its sentence, exit status 2.

A launched worker also dies with its launcher (`die_with_parent`): torchrun and
`accelerate launch` start workers in sessions of their own, so a `kill -9` of the launcher's
process group would leave them training and writing checkpoints into the run folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from fondtrain.errors import UserError

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


def _say(message: str) -> None:
    with contextlib.suppress(OSError):  # stderr may be a pipe whose reader is gone
        print(f"fondtrain: {message}", file=sys.stderr, flush=True)


class StopRequest:
    """Records the first stop signal (`signum`, None until one arrives) or a fault that
    asks for a stop (`fault`: the first half of its sentence)."""

    def __init__(self, signals: tuple[int, ...] = STOP_SIGNALS):
        self.signum: int | None = None
        self.fault: str | None = None
        self._previous = {}
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, _frame) -> None:
        if self.signum is None:
            self.signum = signum
            again = "; Ctrl-C again stops at once, without it" if signum == signal.SIGINT else ""
            _say(f"received {signal.Signals(signum).name}; checkpointing at the end of this batch{again}")
        elif signum == signal.SIGINT and self.signum == signal.SIGINT:
            _say("received SIGINT again; stopping now, without a checkpoint")
            self.restore()
            raise SystemExit(128 + signal.SIGINT)

    def fail(self, message: str) -> None:
        """Ask for a stop after a checkpoint because of a fault; `stopped` raises `message`."""
        if self.fault is None:
            self.fault = message

    @property
    def requested(self) -> bool:
        return self.signum is not None or self.fault is not None

    def stopped(self, accelerator, step: int, ckpt_root: Path) -> None:
        """After the checkpoint of a requested stop at `step` (every rank calls this): say
        so on stderr (main process; launch/run.py reads it), or, when a rank's fault asked
        for the stop, raise its UserError on every rank (the others quietly)."""
        from fondtrain.train.agreement import stop_everywhere

        fault = None if self.fault is None else UserError(
            f"{self.fault}; the run stopped after saving checkpoint step-{step:08d} in {ckpt_root}: free "
            "space there and run the same command to resume.")
        stop_everywhere(accelerator, fault)
        if accelerator.is_main_process and self.signum is not None:
            _say(f"stopped by {signal.Signals(self.signum).name} at step {step}; checkpoint saved in {ckpt_root}")

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


LAUNCHER_VARIABLES = ("TORCHELASTIC_RUN_ID", "LOCAL_RANK")


def die_with_parent(poll_s: float = 1.0, force: bool = False) -> str | None:
    """Make this process end when the process that launched it dies (call it first).

    Only for workers of a launcher (torchrun, `accelerate launch`, the deepspeed launcher:
    LOCAL_RANK or TORCHELASTIC_RUN_ID is set) unless `force`; a single `python
    launch/train.py` keeps running when its shell goes (nohup). On Linux the kernel sends
    SIGKILL at the parent's death (prctl PR_SET_PDEATHSIG); elsewhere, or where prctl fails,
    a daemon thread polls the parent pid every `poll_s` seconds. SIGKILL, not a stop
    request: the other ranks die with the same launcher, so no checkpoint could be agreed
    on; the newest complete checkpoint stands. Returns how it watches, or None.
    """
    if not force and not any(v in os.environ for v in LAUNCHER_VARIABLES):
        return None
    parent = os.getppid()
    how = "prctl" if _set_parent_death_signal(signal.SIGKILL) else "watchdog"
    if os.getppid() != parent:  # the parent died before the prctl took effect
        os.kill(os.getpid(), signal.SIGKILL)
    if how == "watchdog":
        threading.Thread(target=_watch_parent, args=(parent, poll_s), daemon=True,
                         name="fondtrain-parent-watchdog").start()
    return how


def _set_parent_death_signal(signum: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    pr_set_pdeathsig = 1
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(pr_set_pdeathsig, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int, poll_s: float) -> None:
    while os.getppid() == parent:
        time.sleep(poll_s)
    _say(f"launcher (pid {parent}) is gone; stopping this worker")
    os.kill(os.getpid(), signal.SIGKILL)


def requeue_slurm_job() -> bool:
    """Requeue the current SLURM job (after a pre-emption checkpoint). True if asked."""
    job_id = os.environ.get("SLURM_JOB_ID")
    if not job_id:
        return False
    array_job, array_task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    target = f"{array_job}_{array_task}" if array_job and array_task else job_id
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        print("fondtrain: scontrol not found; not requeueing", file=sys.stderr)
        return False
    result = subprocess.run([scontrol, "requeue", target], capture_output=True, text=True)
    print(f"fondtrain: scontrol requeue {target}: exit {result.returncode} {result.stderr.strip()}",
          file=sys.stderr, flush=True)
    return result.returncode == 0
