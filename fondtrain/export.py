"""Export trained models, and import reference checkpoints as fondtrain runs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from fondtrain import run_files
from fondtrain.config import DataConfig, RunConfig, save_yaml
from fondtrain.errors import UserError
from fondtrain.permissions import apply_umask

FORMATS = ("safetensors", "upstream")


def export_model(source: str, out: str, format: str = "safetensors", member: str | None = None) -> Path:
    """Write the model of a run / checkpoint to `out`.

    safetensors: `out/model.safetensors` + `out/config.yaml` (fondtrain's names);
    upstream: `out/model.pt` holding {'model': state dict} under the reference
    implementation's names and shapes, loadable by its `load_state_dict`.
    A population run: member `member` exactly as a single run's export (its model loads
    as a plain single model); without `member`, every member to `out/<member>/`.
    """
    if format not in FORMATS:
        raise UserError(f"unknown export format {format!r}: choose safetensors or upstream.")
    out_dir = Path(out)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UserError(f"{out_dir} exists and is not empty: choose a new --out folder.")
    members = run_files.run_members(source)
    if members is not None and member is None:
        for m in members:
            _export_one(source, out_dir / m.name, format, m.name)
        return out_dir
    return _export_one(source, out_dir, format, member)


def _export_one(source: str, out_dir: Path, format: str, member: str | None) -> Path:
    model, config = run_files.load_model(source, member)
    staging = out_dir.parent / f".tmp-export-{out_dir.name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        if format == "safetensors":
            save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                      str(staging / run_files.MODEL_FILE))
            save_yaml(config or RunConfig(model=model.config), staging / "config.yaml")
        else:
            from fondtrain.model.upstream import state_dict_to_upstream

            torch.save({"model": state_dict_to_upstream(model)}, staging / "model.pt")
        apply_umask(staging)
        if out_dir.exists():
            out_dir.rmdir()
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


# The data set a reference model of each input size was trained on, unless --dataset says.
UPSTREAM_DATASETS = {256: "vh16", 784: "mnist"}


def import_upstream(path: str, out: str, dataset: str | None = None) -> Path:
    """Make a fondtrain run directory from a reference `.pt` checkpoint.

    The run gets `config.yaml` and `ckpt/step-00000000/` with the weights, so that
    `fondtrain eval OUT` and `fondtrain export OUT` work on published models. `dataset` is
    the data set the model was trained on, recorded in config.yaml for `fondtrain eval`;
    by default vh16 for 16x16 models and mnist for 28x28 ones (read from where the
    reference keeps them unless the run's data path is set).
    """
    from fondtrain.data.sources import SOURCES
    from fondtrain.model.upstream import load_upstream_checkpoint

    model = load_upstream_checkpoint(path)
    run_dir = Path(out)
    if run_dir.exists():
        raise UserError(f"{run_dir} already exists: choose a new --out run directory.")
    dataset = dataset or UPSTREAM_DATASETS.get(model.config.input_dim)
    if dataset is None or dataset not in SOURCES:
        raise UserError(f"{path} is a model of {model.config.input_dim} inputs: say which data set it "
                        f"was trained on with --dataset (one of {', '.join(SOURCES)}).")
    config = RunConfig(model=model.config, data=DataConfig(dataset=dataset))
    config.train.name = run_dir.name
    staging = run_dir.parent / f".tmp-import-{run_dir.name}"
    shutil.rmtree(staging, ignore_errors=True)
    step = run_files.step_dir(staging / "ckpt", 0)
    step.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(step / run_files.MODEL_FILE))
    save_yaml(config, step / "config.yaml")
    save_yaml(config, staging / "config.yaml")
    (step / run_files.COMPLETE).write_text("0\n")
    apply_umask(staging)
    staging.rename(run_dir)
    return run_dir
