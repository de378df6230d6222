"""Run `accelerate launch` so that a scheduler reads the right exit status.

    python launch/run.py --multi_gpu --num_processes 8 launch/train.py --dataset vh16 ...

takes exactly `accelerate launch`'s arguments. It starts the launcher in a session of its
own with SIGUSR1 ignored, and passes SIGTERM, SIGINT (as SIGTERM) and SIGUSR1 that reach
it straight to the training processes (the launcher's children), which checkpoint at the
same step and exit 0.

Exit status: 0 when training finished, or when it stopped on a signal after its
checkpoint, however the signal arrived (to this process, the launcher, the training
processes, or all of them: accelerate's launcher exits 128 + the signal once it has
stopped its workers, even after their clean checkpoint); 2 when a training process stopped
on a user error; the launcher's status otherwise. A user error's one sentence (`error:
...`) is printed once, last, and the launcher's ChildFailedError traceback about it is
dropped.

The launcher dies with this process (Linux: a parent-death signal, SIGKILL, which in turn
ends the workers through theirs): a `kill -9` of run.py leaves no training behind. The
newest complete checkpoint stands, as after a `kill -9` of the launcher itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
WORKER_EXIT = re.compile(r"exitcode\s*:\s*(-?\d+)")
# what a training process says on stderr after the checkpoint of a stop signal
SAVED_ON_SIGNAL = re.compile(r"^fondtrain: stopped by SIG\w+ at step \d+; checkpoint saved")
PR_SET_PDEATHSIG = 1
STOPPED_BY_LAUNCHER = (2, -signal.SIGTERM, -signal.SIGKILL)  # exit statuses after a user error


def children(pid: int) -> list[int]:
    """Direct children of pid (Linux /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def _launcher_setup(parent: int) -> None:
    """In the launcher, before it runs: SIGUSR1 ignored (the workers checkpoint on it; a
    launcher would die of it), and SIGKILL when run.py dies."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # run.py died before the prctl took effect
            os._exit(1)


class LauncherOutput:
    """Reads the launcher's stderr (its own lines and its workers'), passing it through
    except: `error: ` sentences (held, printed once at the end), the launcher's traceback
    of a signal it was sent (dropped) and its ChildFailedError summary (held until the
    outcome is known)."""

    def __init__(self) -> None:
        self.worker_codes: list[int] = []
        self.errors: list[str] = []
        self.saved_on_signal = False
        self.traceback: list[str] = []  # a traceback being read, held until its exception line
        self.summary: list[str] = []  # the ChildFailedError block, to the end of the stream

    def line(self, line: str, signalled: bool) -> None:
        self.worker_codes += [int(code) for code in WORKER_EXIT.findall(line)]
        self.saved_on_signal |= bool(SAVED_ON_SIGNAL.match(line))
        if self.summary:
            self.summary.append(line)
        elif line.startswith("error: "):
            if line not in self.errors:
                self.errors.append(line)
        elif line.startswith("Traceback (most recent call last):"):
            self.traceback = [line]
        elif self.traceback and line[:1] in (" ", "\t"):
            self.traceback.append(line)
        elif self.traceback:  # the exception line ends the traceback
            block, self.traceback = self.traceback + [line], []
            if "ChildFailedError" in line:
                self.summary = block
            elif not ("SignalException" in line and (signalled or self.saved_on_signal)):  # a stop's echo
                sys.stderr.writelines(block)
        else:
            sys.stderr.write(line)

    def user_error(self) -> bool:
        """A training process stopped on a user error (exit status 2), and every other one
        that failed was stopped by the launcher after it (SIGTERM, then SIGKILL)."""
        failed = [c for c in self.worker_codes if c != 0]
        return 2 in failed and all(c in STOPPED_BY_LAUNCHER for c in failed)

    def finish(self) -> None:
        """The held lines: the launcher's summary unless it is about a user error, then the
        user error's sentence, last."""
        sys.stderr.writelines(self.traceback)
        if not self.user_error():
            sys.stderr.writelines(self.summary)
        sys.stderr.writelines(self.errors)
        sys.stderr.flush()


def main(argv: list[str]) -> int:
    received: list[int] = []
    parent = os.getpid()
    launcher = subprocess.Popen(
        [sys.executable, "-m", "accelerate.commands.launch", *argv],
        stderr=subprocess.PIPE, text=True, bufsize=1, start_new_session=True,
        preexec_fn=lambda: _launcher_setup(parent),
    )

    def forward(signum, _frame):
        received.append(signum)
        for pid in children(launcher.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM if signum == signal.SIGINT else signum)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    output = LauncherOutput()
    for line in launcher.stderr:
        output.line(line, bool(received))
    output.finish()
    status = launcher.wait()
    if status == 0:
        return 0
    if output.user_error():
        return 2
    if output.saved_on_signal and not [c for c in output.worker_codes if c != 0]:
        print(f"fondtrain: the training processes checkpointed and stopped cleanly on a signal "
              f"(launcher exit status {status}): exit status 0", file=sys.stderr)
        return 0
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
