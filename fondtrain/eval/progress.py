"""Progress of the evaluation's inference stages, for `fondtrain eval`.

On a terminal a tqdm bar; with stdout piped (a SLURM log, `| tee`) a plain line with the
elapsed time every EVERY_S seconds and at the end of a stage. Shown only inside `shown()`
(the eval command enters it) and on the main process of a launch, so library calls and
tests stay quiet.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
import time
from collections.abc import Iterator

EVERY_S = 10.0
_SHOWN = contextvars.ContextVar("fondtrain_eval_progress", default=False)


@contextlib.contextmanager
def shown() -> Iterator[None]:
    """Show the progress of the stages that run inside (on rank 0 of a launch only)."""
    token = _SHOWN.set(os.environ.get("RANK", "0") == "0")
    try:
        yield
    finally:
        _SHOWN.reset(token)


class Progress:
    """`done` of `total` inference steps of one stage (`desc`), told through `at(done)`."""

    def __init__(self, desc: str, total: int):
        self.desc, self.total, self.enabled = desc, total, _SHOWN.get()
        self.started = self.printed = time.monotonic()
        self.bar = None
        if self.enabled and sys.stdout.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True, mininterval=1.0,
                            file=sys.stdout, leave=False)

    def at(self, done: int) -> None:
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            if done >= self.total:
                self.bar.close()
        elif self.enabled and (done >= self.total or time.monotonic() - self.printed >= EVERY_S):
            self.printed = time.monotonic()
            print(f"{self.desc}: {done}/{self.total} steps ({100 * done / max(self.total, 1):.0f}%), "
                  f"{self.printed - self.started:.0f} s elapsed", flush=True)
