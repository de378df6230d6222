"""Pretrained models shipped in the package, usable by name wherever a run is accepted.

    fondtrain/pretrained/<name>/   a checkpoint reduced to what inference needs:
        model.safetensors, config.yaml, trainer_state.json (step, clamp eps),
        checksums.json, COMPLETE                     as a run's ckpt/step-N (runs.files)
        recorded_check.json                          numbers recomputed from the weights
        metrics.json, dictionary.png                 its `fondtrain eval`, when it had one
        README.md                                    the model card

`pretrained:NAME` is turned into that folder by `runs.files.resolve_checkpoint`, the one
place a run or checkpoint argument is resolved, so every command that takes a run takes
a name. The package may be installed read-only (site-packages), so nothing is ever written
there: a command whose outputs default to RUN/... writes them under
`runs/pretrained-NAME/...` in the current directory instead (`output_run_dir`).
`fondtrain export RUN OUT --format pretrained` makes such a folder
(`fondtrain.runs.pretrained_export`).
"""

from __future__ import annotations

from pathlib import Path

from fondtrain.config import TrainConfig
from fondtrain.errors import UserError

PREFIX = "pretrained:"
ROOT = Path(__file__).resolve().parent.parent / "pretrained"


def names() -> list[str]:
    """The names of the shipped models (folders with a complete checkpoint), sorted."""
    if not ROOT.is_dir():
        return []
    # a folder still being written (.tmp-...) or without its marker is not a model yet
    return sorted(p.name for p in ROOT.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and (p / "COMPLETE").is_file())


def is_name(path: str | Path) -> bool:
    """Whether a run argument is `pretrained:NAME` rather than a path."""
    return str(path).startswith(PREFIX)


def folder(path: str | Path) -> Path:
    """The folder of `pretrained:NAME`; one sentence listing the names for an unknown one."""
    name = str(path)[len(PREFIX):]
    known = names()
    if name not in known:
        listed = f"the ones there are: {', '.join(known)}" if known else "none is installed"
        raise UserError(f"there is no pretrained model {name!r} ({listed}): use pretrained:NAME with one of them.")
    return ROOT / name


def name_of(path: str | Path) -> str | None:
    """NAME when `path` is `pretrained:NAME`, a shipped model's folder or a file in it; else None."""
    if is_name(path):
        return folder(path).name
    target = Path(path).resolve()
    for candidate in (target, target.parent):
        if candidate.parent == ROOT and (candidate / "COMPLETE").is_file():
            return candidate.name
    return None


def output_run_dir(name: str) -> Path:
    """The folder that stands for a pretrained model's run folder when a command writes its
    outputs (RUN/eval, RUN/hubel-wiesel): runs/pretrained-NAME under the current directory."""
    return Path(TrainConfig.runs_root) / f"pretrained-{name}"
