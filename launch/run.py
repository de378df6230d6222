"""Run `accelerate launch` so that a scheduler reads the right exit status.

    python launch/run.py --multi_gpu --num_processes 8 launch/train.py --dataset vh16 ...

takes exactly `accelerate launch`'s arguments. It starts the launcher in a session of its
own with SIGUSR1 ignored, and passes SIGTERM, SIGINT and SIGUSR1 that reach it straight to
the training processes (the launcher's children), which checkpoint at the same step and
exit 0; the launcher then ends normally. Bare `accelerate launch` turns a SIGTERM into a
traceback and exit status 1 even after a clean checkpoint. Exit status: 0 when training
finished or stopped with a checkpoint, 2 when a training process stopped on a user error
(its one-line message is printed above), the launcher's status otherwise.

A signal sent to every process at once (a scheduler signalling the whole job step) still
reaches the launcher as well; it then stops its workers and exits 1 with a traceback of its
own SignalException, which is dropped and mapped to 0 here when no training process failed.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
WORKER_EXIT = re.compile(r"exitcode\s*:\s*(-?\d+)")


def children(pid: int) -> list[int]:
    """Direct children of pid (Linux /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def main(argv: list[str]) -> int:
    received: list[int] = []
    launcher = subprocess.Popen(
        [sys.executable, "-m", "accelerate.commands.launch", *argv],
        stderr=subprocess.PIPE, text=True, bufsize=1, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGUSR1, signal.SIG_IGN),
    )

    def forward(signum, _frame):
        received.append(signum)
        for pid in children(launcher.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM if signum == signal.SIGINT else signum)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    worker_codes, launcher_signalled = [], False
    block: list[str] = []  # a traceback being read, held until its exception line
    for line in launcher.stderr:  # pass everything through, noting the launcher's summary
        worker_codes += [int(code) for code in WORKER_EXIT.findall(line)]
        if line.startswith("Traceback (most recent call last):"):
            block = [line]
            continue
        if block and line[:1] in (" ", "\t"):
            block.append(line)
            continue
        if block:  # the exception line ends the traceback
            own_signal = "SignalException" in line
            launcher_signalled |= own_signal
            if not (own_signal and received):  # the launcher's reaction to our stop: dropped
                sys.stderr.writelines(block + [line])
            block = []
            continue
        sys.stderr.write(line)
    sys.stderr.writelines(block)
    status = launcher.wait()
    if status == 0:
        return 0
    if 2 in worker_codes:
        return 2
    if received and launcher_signalled and not [c for c in worker_codes if c != 0]:
        print(f"fondtrain: stopped by {signal.Signals(received[0]).name}; the training processes "
              "checkpointed and stopped cleanly", file=sys.stderr)
        return 0
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
