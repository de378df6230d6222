"""Pre-emption: SIGTERM / SIGUSR1 ask the run to checkpoint and stop cleanly.

A signal reaches the ranks at different moments, so the handler only records it; the
loop all-reduces the flag once per batch (after the optimiser step) so that every rank
saves at the same step. On SLURM (`#SBATCH --signal=USR1@120 --requeue`) the main
process then asks `scontrol requeue` for the job, which resumes from the newest
complete checkpoint when it starts again.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    """Records the first stop signal; `signum` is None until one arrives."""

    def __init__(self, signals: tuple[int, ...] = STOP_SIGNALS):
        self.signum: int | None = None
        self._previous = {}
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, _frame) -> None:
        if self.signum is None:
            self.signum = signum
            print(f"fondtrain: received {signal.Signals(signum).name}; "
                  "checkpointing at the end of this batch", file=sys.stderr, flush=True)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


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
