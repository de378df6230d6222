"""A full (or read-only) disk met by the run's TensorBoard writers, not by a save.

TensorBoard writes its events from a thread of its own; a failed write kills that thread
(its traceback printed by Python) and comes back as an OSError from the next call in the
training loop, whatever it was doing. `open_log` creates the run log (a full disk at that
moment: one sentence, nothing trained yet) and `guard_writers` wraps the run log's writers so that
the first failure is handed to the StopRequest instead, as a fault: the loop then stops
like on SIGTERM, at the same step on every rank, and tries a checkpoint (which may fail
in turn on the same full disk, with the save's own sentence); after it the run stops with
one sentence naming the folder, the error, the free space and the checkpoint, exit 2.
The failure is also said in one line when it happens (a failure at the end of a finished
run has no stop left to ask for). The writers stay silent from the failure on; the writer
threads' traceback is not printed.
"""

from __future__ import annotations

import shutil
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fondtrain.errors import UserError
from fondtrain.train.agreement import stop_everywhere

_WRITER_THREAD = "_AsyncWriterThread"  # tensorboard's event writer thread


class GuardedWriter:
    """A SummaryWriter whose calls report an OSError to `on_failure(error, log_dir)` once
    and do nothing afterwards."""

    def __init__(self, writer, on_failure):
        self._writer, self._on_failure, self.failed = writer, on_failure, False

    def __getattr__(self, name: str):
        attr = getattr(self._writer, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            if self.failed:
                return None
            try:
                return attr(*args, **kwargs)
            except OSError as err:
                self.failed = True
                self._on_failure(err, Path(self._writer.log_dir))
                return None

        return call


def open_log(make_log: Callable[[], Any], stop, accelerator, tb_dir: Path):
    """`make_log()` (a RunLog writing to `tb_dir`, on every rank) with its writers guarded
    (`guard_writers`). A writer that cannot even be created (the disk is full when the run
    starts) stops every rank with one sentence: nothing has been trained yet, the newest
    checkpoint stands."""
    _quiet_writer_threads()
    log, error = None, None
    try:
        log = make_log()
    except OSError as err:
        folder = Path(err.filename).parent if err.filename else tb_dir
        error = UserError(f"{tensorboard_fault(err, folder)}: free space there and run the same command "
                          "(nothing was trained in this start).")
    stop_everywhere(accelerator, error)
    guard_writers(log, stop)
    return log


def guard_writers(log, stop) -> None:
    """Wrap `log`'s TensorBoard writers (a RunLog's `run_writer` and its members'
    `writers`, which may be the same one) so that a failed write asks `stop` to end the run
    (`stop.fail`)."""
    _quiet_writer_threads()

    def on_failure(err: OSError, folder: Path) -> None:
        fault = tensorboard_fault(err, folder)
        print(f"fondtrain: {fault}", file=sys.stderr, flush=True)  # also when the run has ended
        stop.fail(fault)

    guarded: dict[int, GuardedWriter] = {}

    def guard(writer):
        return guarded.setdefault(id(writer), GuardedWriter(writer, on_failure))

    if log.run_writer is not None:
        log.run_writer = guard(log.run_writer)
    log.writers = [guard(w) for w in log.writers]


def tensorboard_fault(err: OSError, folder: Path) -> str:
    """The first half of the sentence: where, why and the free space there."""
    why = err.strerror or str(err)
    place = next((p for p in [folder, *folder.parents] if p.is_dir()), Path("/"))
    free = shutil.disk_usage(place).free
    return f"cannot write the TensorBoard logs in {folder}: {why} ({free / 2**20:.1f} MB free there)"


def _quiet_writer_threads() -> None:
    """Leave a writer thread's OSError to the main thread, which reports it once."""
    previous = threading.excepthook
    if getattr(previous, "fondtrain_quiet_writers", False):
        return

    def hook(args) -> None:
        if isinstance(args.exc_value, OSError) and type(args.thread).__name__ == _WRITER_THREAD:
            return
        previous(args)

    hook.fondtrain_quiet_writers = True
    threading.excepthook = hook
