"""What a run folder holds and how to read it (below train/ and eval/, which both use it).

    runs/<name>/config.yaml           the resolved config
    runs/<name>/ckpt/step-N/          one checkpoint: model.safetensors, optimiser and RNG
                                      states, trainer_state.json, config.yaml, COMPLETE
    runs/<name>/tb/                   TensorBoard

A run argument may also be `pretrained:NAME`, a model shipped in the package
(`fondtrain.runs.pretrained`): `resolve_checkpoint` turns it into its folder, and
`output_run_dir` keeps the outputs of commands on it out of the package.

A checkpoint counts only once its COMPLETE marker exists (it is written last, see
`fondtrain.train.checkpoint`). Reading never imports the trainer.

Every reader (a resume, eval, export, hubel-wiesel, bench) checks a checkpoint against its
`checksums.json` before using it (`checkpoint_problem`): given a run folder, a corrupt
newest checkpoint is skipped with one line and the one before it is used; a checkpoint
named by the user that does not verify stops with one sentence.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from fondtrain.config import RunConfig, load_yaml
from fondtrain.config.schedules import schedule_for
from fondtrain.config.sweep import Member, run_members
from fondtrain.data.shard_reader import sha256_of
from fondtrain.errors import UserError
from fondtrain.model.upstream import load_upstream_checkpoint
from fondtrain.model.vae import IterativeVAE
from fondtrain.runs import pretrained

COMPLETE = "COMPLETE"
TRAINER_STATE = "trainer_state.json"
MODEL_FILE = "model.safetensors"
CHECKSUMS = "checksums.json"
PREFIX = "step-"


def step_dir(ckpt_root: Path, step: int) -> Path:
    return ckpt_root / f"{PREFIX}{step:08d}"


def list_checkpoints(ckpt_root: str | Path) -> list[Path]:
    """Complete checkpoints under ckpt_root, oldest first."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir()  # not step-N.corrupt: set aside after a failed check
             if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()
             and (p / COMPLETE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(ckpt_root: str | Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = list_checkpoints(ckpt_root)
    return found[-1] if found else None


def read_trainer_state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / TRAINER_STATE).read_text())


def training_step(checkpoint: Path) -> int:
    """The training step a checkpoint (or a file in it) was written at (0 when it does not say)."""
    folder = checkpoint if checkpoint.is_dir() else checkpoint.parent
    state = folder / TRAINER_STATE
    if state.is_file():
        try:
            return int(json.loads(state.read_text()).get("global_step", 0))
        except (ValueError, json.JSONDecodeError):
            pass
    name = folder.name
    return int(name[len(PREFIX):]) if name.startswith(PREFIX) and name[len(PREFIX):].isdigit() else 0


def checksums(folder: Path) -> dict[str, str]:
    """{relative path: SHA-256} of every file in a checkpoint folder but the marker files."""
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        if name in (CHECKSUMS, COMPLETE):
            continue
        out[name] = sha256_of(path)
    return out


def verify_checksums(checkpoint: Path, names: list[str] | None = None) -> str | None:
    """None when every file (or only `names`) matches checksums.json (or there is none),
    else which do not."""
    listed = checkpoint / CHECKSUMS
    if not listed.is_file():
        return None
    try:
        expected = json.loads(listed.read_text())
        if not isinstance(expected, dict):
            raise ValueError
    except ValueError:
        return f"{CHECKSUMS} is corrupt"
    bad = []
    for name, digest in expected.items():
        path = checkpoint / name
        if names is not None and name not in names:
            continue
        if not path.is_file() or sha256_of(path) != digest:
            bad.append(name)
    return f"{', '.join(bad)} differ(s) from {CHECKSUMS}" if bad else None


# What was found about each checkpoint, keyed by its files' sizes and times: one process
# resolves the same checkpoint several times (eval: members, then the model), and hashes
# and reports it once.
_VERDICTS: dict[tuple, str | None] = {}


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why a complete checkpoint must not be used (a file differs from checksums.json, or
    its config.yaml cannot be read), or None."""
    files = sorted(p for p in checkpoint.rglob("*") if p.is_file())
    key = (str(checkpoint.resolve()), *((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files))
    if key not in _VERDICTS:
        problem = verify_checksums(checkpoint)
        if problem is None and (checkpoint / "config.yaml").is_file():
            try:
                RunConfig.from_dict(load_yaml(checkpoint / "config.yaml"))
            except UserError:
                problem = "its config.yaml cannot be read"
        _VERDICTS[key] = problem
    return _VERDICTS[key]


def _warn(message: str) -> None:
    if os.environ.get("RANK", "0") == "0":  # several ranks resolve the same checkpoint
        print(f"fondtrain: {message}", file=sys.stderr, flush=True)


_REPORTED: set[str] = set()


def resolve_checkpoint(path: str | Path, warn: Callable[[str], None] = _warn) -> Path:
    """A run directory (its newest complete checkpoint that verifies: the ones after it are
    reported, one line each, through `warn`), a checkpoint directory, or a file; the last
    two are verified against their checksums.json and stop with one sentence if they
    differ. `pretrained:NAME` is the shipped model's folder (a checkpoint directory)."""
    path = pretrained.folder(path) if pretrained.is_name(path) else Path(path)
    if not path.exists():
        raise UserError(f"{path} does not exist: give a run directory, a checkpoint or a model file.")
    if path.is_file():
        problem = verify_checksums(path.parent, [path.name, "config.yaml"])
        if problem:
            raise UserError(f"{path} is corrupt ({problem} in {path.parent}): give another checkpoint, "
                            "or the run folder to use its newest sound one.")
        return path
    if (path / COMPLETE).is_file():
        problem = checkpoint_problem(path)
        if problem:
            raise UserError(f"checkpoint {path} is corrupt ({problem}): give another checkpoint, or "
                            "the run folder to use its newest sound one.")
        return path
    candidates = list_checkpoints(path / "ckpt")[::-1]
    for checkpoint in candidates:
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            return checkpoint
        if str(checkpoint) not in _REPORTED:
            _REPORTED.add(str(checkpoint))
            warn(f"skipping corrupt checkpoint {checkpoint} ({problem}); using the one before it")
    if candidates:
        raise UserError(f"none of the {len(candidates)} checkpoints in {path / 'ckpt'} verifies against its "
                        f"{CHECKSUMS} (see above): retrain, or give a checkpoint from elsewhere.")
    raise UserError(
        f"{path} has no complete checkpoint (looked in {path / 'ckpt'}): train first or "
        "give a checkpoint directory."
    )


def output_run_dir(run: str | Path | None, target: Path) -> Path | None:
    """The run folder under which a command writes its outputs by default (RUN/eval,
    RUN/hubel-wiesel): `run` as given, else the run holding checkpoint `target`
    (RUN/ckpt/step-N, or a file in it); None for a checkpoint outside a run. For a shipped
    pretrained model (by name or by its folder) runs/pretrained-NAME under the current
    directory: the package may be installed read-only, and must not collect outputs."""
    name = pretrained.name_of(run if run is not None else target)
    if name is not None:
        return pretrained.output_run_dir(name)
    if run is not None:
        return Path(run)
    folder = target if target.is_dir() else target.parent
    return folder.parent.parent if folder.parent.name == "ckpt" else None


def load_run(path: str | Path) -> tuple[IterativeVAE, RunConfig | None, list[Member]]:
    """Every member of a trained run, for evaluation and export.

    path: a run directory (its newest complete checkpoint), a checkpoint directory
    `ckpt/step-N`, `pretrained:NAME`, a `model.safetensors` (with `config.yaml` beside it or in the run
    directory), or a reference `.pt` file.
    Returns (the model in eval mode, member i at index i of its member axis; the run's
    RunConfig, None for a reference checkpoint; its members, `fondtrain.config.sweep.run_members`:
    a sweep's, or a plain run's one member named "").
    """
    target = resolve_checkpoint(path)
    if target.is_file() and target.suffix == ".pt":
        model = load_upstream_checkpoint(target)
        return model.eval(), None, run_members(RunConfig(model=model.config))
    weights = target if target.is_file() else target / MODEL_FILE
    if not weights.is_file():
        raise UserError(f"{target} holds no {MODEL_FILE}: it is not a fondtrain checkpoint.")
    config = _weights_config(weights)
    members = run_members(config)
    model = IterativeVAE(config.model, [m.config.model for m in members])
    try:
        state = load_file(str(weights))
    except Exception as err:  # safetensors' own error type for a truncated or overwritten file
        first_line = (str(err).strip().splitlines() or [""])[0][:120]
        raise UserError(f"{weights} cannot be read ({err.__class__.__name__}: {first_line}): the file "
                        "is truncated or corrupt; give another checkpoint.") from None
    try:
        # checkpoints written before every model had a member axis load into P = 1 (`IterativeVAE`)
        model.load_state_dict(state)
    except (RuntimeError, KeyError) as err:
        raise UserError(f"{weights} does not match its config.yaml ({err.__class__.__name__}).") from err
    return model.eval(), config, members


def load_model(path: str | Path, member: str | None = None) -> tuple[IterativeVAE, RunConfig | None]:
    """One model of a trained run (`load_run`'s paths), for what works on one model
    (bench --checkpoint, scripts): a plain run's model, or a sweep's member `member` (by
    name), as a population of one in eval mode, with the config of the single run it
    equals (None for a reference checkpoint)."""
    model, config, members = load_run(path)
    index = member_index(members, member, path)
    return one_member(model, index), None if config is None else single_run_config(members[index])


def one_member(model: IterativeVAE, index: int) -> IterativeVAE:
    """Member `index` of `model` as a population of one, in eval mode."""
    single = IterativeVAE(model.members[index])
    single.load_state_dict(model.member_state_dict(index))
    return single.eval()


def member_index(members: list[Member], name: str | None, path: str | Path) -> int:
    """The position of the member a command asked for among the members of the run at
    `path`: `name` for a sweep, None for a plain run; one sentence when it asks wrongly."""
    names = [m.name for m in members]
    if name is None:
        if names != [""]:
            raise UserError(f"{path} is a population run of {len(names)} members: choose one with "
                            f"--member NAME ({', '.join(names)}).")
        return 0
    if names == [""]:
        raise UserError(f"{path} is a single-model run, not a population: leave out --member.")
    if name not in names:
        raise UserError(f"the population has no member {name!r}: choose one of {', '.join(names)}.")
    return names.index(name)


def single_run_config(member: Member) -> RunConfig:
    """The config of the single run member `member` equals (its own settings, no sweep)."""
    return dataclasses.replace(member.config, train=dataclasses.replace(member.config.train, sweep=""))


def _weights_config(weights: Path) -> RunConfig:
    config_path = next((p for p in (weights.parent / "config.yaml",
                                    weights.parent.parent.parent / "config.yaml")
                        if p.is_file()), None)
    if config_path is None:
        raise UserError(f"no config.yaml next to {weights}: keep the checkpoint's config with it.")
    return RunConfig.from_dict(load_yaml(config_path))


def checkpoint_eps(checkpoint: str | Path, member: int = 0) -> float:
    """The soft-clamp opening eps member `member` (by position) of a fondtrain
    checkpoint's run had reached (the value of its last trained step); 1 for anything
    else (finished runs reach 1 after the first ~10% of their schedule; reference
    checkpoints are finished runs).

    Recorded in trainer_state.json, one per member (a float in checkpoints of single
    models written before every model had a member axis); for checkpoints written before
    it was recorded, recomputed from the member's schedules and config.yaml.
    """
    folder = Path(checkpoint)
    if not (folder / TRAINER_STATE).is_file():
        return 1.0
    state = read_trainer_state(folder)
    if "eps" in state:
        eps = state["eps"]
        return float(eps[member] if isinstance(eps, list) else eps)
    if not (folder / "config.yaml").is_file():
        return 1.0
    config = run_members(RunConfig.from_dict(load_yaml(folder / "config.yaml")))[member].config
    return schedule_for(config, int(state["total_steps"])).eps(max(int(state["global_step"]) - 1, 0))
