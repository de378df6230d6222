"""What a run folder holds and how to read it (below train/ and eval/, which both use it).

    runs/<name>/config.yaml           the resolved config
    runs/<name>/ckpt/step-N/          one checkpoint: model.safetensors, optimiser and RNG
                                      states, trainer_state.json, config.yaml, COMPLETE
    runs/<name>/tb/                   TensorBoard

A checkpoint counts only once its COMPLETE marker exists (it is written last, see
`fondtrain.train.checkpoint`). Reading never imports the trainer.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from fondtrain.config import RunConfig, load_yaml
from fondtrain.errors import UserError

COMPLETE = "COMPLETE"
TRAINER_STATE = "trainer_state.json"
MODEL_FILE = "model.safetensors"
PREFIX = "step-"


def step_dir(ckpt_root: Path, step: int) -> Path:
    return ckpt_root / f"{PREFIX}{step:08d}"


def list_checkpoints(ckpt_root: str | Path) -> list[Path]:
    """Complete checkpoints under ckpt_root, oldest first."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir()
             if p.is_dir() and p.name.startswith(PREFIX) and (p / COMPLETE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(ckpt_root: str | Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = list_checkpoints(ckpt_root)
    return found[-1] if found else None


def read_trainer_state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / TRAINER_STATE).read_text())


def resolve_checkpoint(path: str | Path) -> Path:
    """A run directory (newest complete checkpoint), a checkpoint directory, or a file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist: give a run directory, a checkpoint or a model file.")
    if path.is_file():
        return path
    if (path / COMPLETE).is_file():
        return path
    newest = latest_checkpoint(path / "ckpt")
    if newest is None:
        raise UserError(
            f"{path} has no complete checkpoint (looked in {path / 'ckpt'}): train first or "
            "give a checkpoint directory."
        )
    return newest


def load_model(path: str | Path, member: str | None = None):
    """Load a trained model for evaluation or export.

    path: a run directory, a checkpoint directory `ckpt/step-N`, a `model.safetensors`
    (with `config.yaml` beside it or in the run directory), or a reference `.pt` file.
    Returns (IterativeVAE in eval mode, RunConfig or None for reference checkpoints).
    A population run needs `member` (its name): that member as a plain single model
    with its single-run config (`load_population` loads every member at once).
    """
    from fondtrain.model.upstream import load_upstream_checkpoint
    from fondtrain.model.vae import IterativeVAE

    target = resolve_checkpoint(path)
    if target.is_file() and target.suffix == ".pt":
        return load_upstream_checkpoint(target).eval(), None
    model, config, members = _load_weights(target)
    if members is not None and member is None:
        raise UserError(f"{path} is a population run of {len(members)} members: choose one with "
                        f"--member NAME ({', '.join(m.name for m in members)}).")
    if members is None:
        if member is not None:
            raise UserError(f"{path} is a single-model run, not a population: leave out --member.")
        return model, config
    index = member_index(members, member)
    single_config = dataclasses.replace(members[index].config, train=dataclasses.replace(
        members[index].config.train, sweep=""))
    single = IterativeVAE(single_config.model)
    single.load_state_dict({k: v[index] for k, v in model.state_dict().items()})
    return single.eval(), single_config


def load_population(path: str | Path):
    """Load every member of a population run at once, for a batched evaluation.

    Returns (the population IterativeVAE in eval mode, member i at index i of its leading
    axis; the run's RunConfig; its members, sweep.Member list). A single-model run or a
    reference checkpoint: one sentence saying it is not a population.
    """
    target = resolve_checkpoint(path)
    if target.is_file() and target.suffix == ".pt":
        raise UserError(f"{path} is a reference checkpoint, not a population run.")
    model, config, members = _load_weights(target)
    if members is None:
        raise UserError(f"{path} is a single-model run, not a population: evaluate it without members.")
    return model, config, members


def _load_weights(target: Path):
    """(IterativeVAE in eval mode, RunConfig, members or None) of a fondtrain checkpoint:
    a population's as the population model."""
    from safetensors.torch import load_file

    from fondtrain.model.vae import IterativeVAE

    weights = target if target.is_file() else target / MODEL_FILE
    if not weights.is_file():
        raise UserError(f"{target} holds no {MODEL_FILE}: it is not a fondtrain checkpoint.")
    config = _weights_config(weights)
    members = population_members(config)
    model = IterativeVAE(config.model, None if members is None else [m.config.model for m in members])
    try:
        model.load_state_dict(load_file(str(weights)))
    except (RuntimeError, KeyError) as err:
        raise UserError(f"{weights} does not match its config.yaml ({err.__class__.__name__}).") from err
    return model.eval(), config, members


def _weights_config(weights: Path) -> RunConfig:
    config_path = next((p for p in (weights.parent / "config.yaml",
                                    weights.parent.parent.parent / "config.yaml")
                        if p.is_file()), None)
    if config_path is None:
        raise UserError(f"no config.yaml next to {weights}: keep the checkpoint's config with it.")
    return RunConfig.from_dict(load_yaml(config_path))


def run_members(path: str | Path):
    """The members of the population run (or checkpoint) at `path`; None for anything else."""
    target = resolve_checkpoint(path)
    weights = target if target.is_file() else target / MODEL_FILE
    if target.suffix == ".pt" or not weights.is_file():
        return None
    return population_members(_weights_config(weights))


def population_members(config: RunConfig):
    """The members of a population run's config (sweep.Member list), None for one model."""
    if not config.train.sweep:
        return None
    from fondtrain.sweep import members_from_sweep

    return members_from_sweep(config, config.train.sweep)


def member_index(members, name: str) -> int:
    """The position of member `name`; one sentence naming the members when it is not one."""
    names = [m.name for m in members]
    if name not in names:
        raise UserError(f"the population has no member {name!r}: choose one of {', '.join(names)}.")
    return names.index(name)


def checkpoint_eps(checkpoint: str | Path, member: int = 0) -> float:
    """The soft-clamp opening eps a fondtrain checkpoint's run had reached (the value of
    its last trained step); 1 for anything else (finished runs reach 1 after the first
    ~10% of their schedule; reference checkpoints are finished runs).

    Recorded in trainer_state.json (a population's: member `member`'s, by position); for
    checkpoints written before it was, recomputed from the run's schedules and config.yaml.
    """
    from fondtrain.schedules import schedule_for

    folder = Path(checkpoint)
    if not (folder / TRAINER_STATE).is_file():
        return 1.0
    state = read_trainer_state(folder)
    if "eps" in state:
        eps = state["eps"]  # a population's: one per member
        return float(eps[member] if isinstance(eps, list) else eps)
    if not (folder / "config.yaml").is_file():
        return 1.0
    config = RunConfig.from_dict(load_yaml(folder / "config.yaml"))
    schedule = schedule_for(config, int(state["total_steps"]))
    return schedule.eps(max(int(state["global_step"]) - 1, 0))
