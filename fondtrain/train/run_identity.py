"""What makes a run the same run: a default name with a settings hash, and a resume that
checks the saved config.

A run folder is resumed only by the settings that made it. `default_run_name` ends in a
short hash of every setting that changes what the run computes, so another learning rate
or batch size gets its own folder; `check_resume` compares the config of the checkpoint
being resumed with the new one and stops on any difference outside `ALLOWED_TO_CHANGE`,
naming the differences and the two ways out. `--resume force` continues anyway and the
differences are appended to `runs/<name>/resume_log.txt`.

ALLOWED_TO_CHANGE lists settings that decide how long, how often or how fast a run goes,
or where its files live, never what it computes: the stopping step, logging, validation
and checkpoint intervals, checkpoint retention, data-loader workers and caching, the shard
and runs locations, torch.compile (the same maths to float round-off), how a population's
members are placed on the processes (like the number of processes, which the config does
not hold), the name and the resume mode themselves. `model.input_dim` is read from the data, which is compared.
Everything else (learning rates, schedules, batch size, epochs, seeds, model, data set,
feeder, precision, back end) changes the run's meaning.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from fondtrain.config import RESUME_MODES, RunConfig, load_yaml
from fondtrain.errors import UserError

__all__ = ["RESUME_MODES", "check_resume", "default_run_name", "settings_hash"]
RESUME_LOG = "resume_log.txt"
ALLOWED_TO_CHANGE = frozenset({
    "train.max_steps", "train.log_every", "train.eval_every", "train.ckpt_every",
    "train.ckpt_minutes", "train.keep_last", "train.runs_root", "train.name", "train.resume",
    "train.compile", "train.population_parallel", "data.num_workers", "data.in_memory",
    "data.shards_root", "model.input_dim",
})


def flatten(config: dict[str, Any]) -> dict[str, Any]:
    """{'train': {'lr': 0.005}} -> {'train.lr': 0.005}, tuples as lists (as YAML reads them)."""
    return {f"{section}.{key}": list(value) if isinstance(value, tuple) else value
            for section, values in config.items() for key, value in values.items()}


def meaning(config: RunConfig) -> dict[str, Any]:
    """The settings that change what a run computes (flattened, sorted)."""
    return {k: v for k, v in sorted(flatten(config.to_dict()).items()) if k not in ALLOWED_TO_CHANGE}


def settings_hash(config: RunConfig, length: int = 6) -> str:
    """A short, stable hash of `meaning(config)`."""
    text = json.dumps(meaning(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def default_run_name(config: RunConfig) -> str:
    """Readable and unique per meaning: natural16-ipvae-k512-t16-b24-s0-1a2b3c."""
    m = config.model
    return (f"{config.data.dataset}-{m.preset}-k{m.n_latents}-t{m.t_train}"
            f"-b{m.beta_outer:g}-s{config.train.seed}-{settings_hash(config)}")


def config_differences(saved: dict[str, Any], new: RunConfig) -> list[str]:
    """'train.lr 0.005 -> 0.05' for each meaningful setting that differs.

    saved: a config.yaml as read (sections model/data/train); a setting missing from it
    (written by an older fondtrain) counts as unchanged when the new value is the default.
    """
    old, now = flatten(saved), flatten(new.to_dict())
    defaults = flatten(RunConfig().to_dict())
    changes = []
    for key in sorted(set(old) | set(now)):
        if key in ALLOWED_TO_CHANGE:
            continue
        before, after = old.get(key, "(unset)"), now.get(key, "(unset)")
        if key not in old and after == defaults.get(key):
            continue
        if before != after:
            changes.append(f"{key} {before} -> {after}")
    return changes


def check_resume(run_dir: Path, checkpoint: Path | None, config: RunConfig) -> str | None:
    """Decide whether `config` may resume `checkpoint` of `run_dir` (main process, before
    anything is written). Returns a note for the log, or None when there is nothing to
    resume; raises UserError when the run must not continue.

    mode (config.train.resume): auto resumes only an identical run; force resumes despite
    differences and records them in runs/<name>/resume_log.txt; never refuses to resume.
    """
    if checkpoint is None:
        return None
    mode = config.train.resume
    name = config.train.name
    if mode == "never":
        raise UserError(f"{run_dir} already holds checkpoint {checkpoint.name} and --resume is never: "
                        f"give a new --name, or delete {run_dir} to start it again.")
    saved_path = checkpoint / "config.yaml"
    if not saved_path.is_file():
        saved_path = run_dir / "config.yaml"
    changes = config_differences(load_yaml(saved_path), config) if saved_path.is_file() else []
    if changes and mode != "force":
        raise UserError(
            f"run {name} was trained with other settings ({'; '.join(changes)}): give --name NEW "
            f"for a new run, or --resume force to continue {name} with these settings (recorded "
            f"in {run_dir / RESUME_LOG})."
        )
    line = (f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} resumed from {checkpoint.name} "
            f"(--resume {mode})" + (f" with changed settings: {'; '.join(changes)}" if changes else ""))
    with open(run_dir / RESUME_LOG, "a") as log:
        log.write(line + "\n")
    return f"--resume force: continuing with changed settings ({'; '.join(changes)})" if changes else None
