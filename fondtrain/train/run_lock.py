"""One run folder, one training: an exclusive lock held by the main process.

`runs/<name>/.lock` is locked with `fcntl.flock` for the run's life and holds the holder's
pid, host and start time. The kernel drops a flock when its process dies (any exit, kill -9
included), so a lock file left behind by a dead run is free to take; its old contents are
reported as a note. A second launch on a locked folder stops with one sentence naming the
holder. Only the main process (rank 0) locks; the other ranks share its run.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

from fondtrain.errors import UserError

LOCK_FILE = ".lock"


class RunLock:
    """An exclusive lock on a run folder; use as a context manager or call release()."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.note: str | None = None  # set when a stale lock of a dead run was taken over
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock or raise UserError naming the process that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked = True
        except BlockingIOError:
            locked = False
        except OSError:  # a file system without flock (Lustre mounted without -o flock)
            locked = not _holder_alive(_read(fd))
        previous = _read(fd)
        if not locked:
            os.close(fd)
            raise UserError(
                f"run folder {self.path.parent} is in use by {describe(previous)}: wait for it to "
                f"finish, stop it, or give this run another --name (if that process is gone, "
                f"delete {self.path})."
            )
        if previous:
            self.note = (f"took over the lock of a run that is no longer running "
                         f"({describe(previous)})")
        os.ftruncate(fd, 0)
        os.pwrite(fd, (f"pid={os.getpid()}\nhost={socket.gethostname()}\n"
                       f"started={time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        """Empty the lock file and unlock (the file stays: removing it would race)."""
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *_exc) -> None:
        self.release()


def _holder_alive(holder: dict[str, str]) -> bool:
    """Whether a lock file's holder may still run: its pid is alive on this host, or it
    ran on another host (which cannot be checked from here)."""
    if not holder:
        return False
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder.get("pid", "0")), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    return True


def _read(fd: int) -> dict[str, str]:
    raw = os.pread(fd, 4096, 0).decode(errors="replace")
    return dict(line.split("=", 1) for line in raw.splitlines() if "=" in line)


def describe(holder: dict[str, str]) -> str:
    """'pid 123 on host node1 (started 2026-...)' from a lock file's fields."""
    if not holder:
        return "another process (the lock file names none)"
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} "
            f"(started {holder.get('started', '?')})")
