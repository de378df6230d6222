"""What a checkpoint's trainer_state.json holds: where the run is, and what evaluation
needs to know about it (the soft-clamp opening eps reached).

    {"global_step": 27, "epoch": 0, "batch_in_epoch": 27, "world_size": 2,
     "steps_per_epoch": 44, "total_steps": 88, "eps": [0.31],
     "rate_sum": [[[...t_total floats of member 0...]], [[...rank 1...]]], "rate_count": 27}

`eps` has one value per member; `rate_sum` / `rate_count` are the n_exp statistics
(`NExpTracker`), one [P][t_total] table per rank. Checkpoints of single models written
before every model had a member axis hold one eps and [world][t_total] (or [t_total]) rows.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RunState:
    """The position of a run: a global step is one batch (the schedules' clock)."""

    global_step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    world_size: int = 1
    steps_per_epoch: int = 0
    total_steps: int = 0
    eps: list[float] = field(default_factory=list)  # each member's soft-clamp opening at the last step trained
    rate_sum: list = field(default_factory=list)  # [world][P][t_total], see NExpTracker
    rate_count: int = 0

    def advance(self, eps) -> None:
        """One batch trained at the members' clamp openings `eps` [P]."""
        self.global_step += 1
        self.batch_in_epoch += 1
        self.eps = [float(e) for e in eps]

    def next_epoch(self) -> None:
        self.epoch, self.batch_in_epoch = self.epoch + 1, 0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, saved: dict[str, Any]) -> RunState:
        """From a trainer_state.json (keys it does not know are ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in saved.items() if k in known}
        rows = values.get("rate_sum", [])
        if rows and not isinstance(rows[0], list):  # one row shared by every rank
            values["rate_sum"] = [rows]
        if not isinstance(values.get("eps", []), list):  # a single model's, before member axes
            values["eps"] = [float(values["eps"])]
        return cls(**values)
