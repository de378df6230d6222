"""Export trained models, and import reference checkpoints as fondtrain runs."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from fondtrain.config import DataConfig, RunConfig, save_yaml
from fondtrain.config.sweep import Member
from fondtrain.errors import UserError
from fondtrain.model.upstream import load_upstream_checkpoint, state_dict_to_upstream
from fondtrain.model.vae import IterativeVAE
from fondtrain.runs import files as run_files
from fondtrain.runs.permissions import staged_folder

FORMATS = ("safetensors", "upstream", "pretrained")


def export_model(source: str, out: str, format: str = "safetensors", member: str | None = None) -> Path:
    """Write the model of a run / checkpoint to `out`, in a single model's layout (no
    member axis), so that it loads as a plain model.

    safetensors: `out/model.safetensors` + `out/config.yaml` (fondtrain's names; the
    config of the single run it equals); upstream: `out/model.pt` holding {'model': state
    dict} under the reference implementation's names and shapes, loadable by its
    `load_state_dict`. A sweep: every member to `out/<member>/`, or member `member` alone
    to `out`. pretrained: one model as a pretrained folder
    (`fondtrain.runs.pretrained_export`; a sweep's member must be named).
    """
    if format not in FORMATS:
        raise UserError(f"unknown export format {format!r}: choose {', '.join(FORMATS[:-1])} or {FORMATS[-1]}.")
    out_dir = Path(out)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UserError(f"{out_dir} exists and is not empty: choose a new --out folder.")
    if format == "pretrained":
        from fondtrain.runs.pretrained_export import export_pretrained

        return export_pretrained(source, out, member)
    model, _, members = run_files.load_run(source)
    if member is not None:
        index = run_files.member_index(members, member, source)
        _export_member(model, index, members[index], out_dir, format)
        return out_dir
    for index, m in enumerate(members):
        _export_member(model, index, m, out_dir / m.name, format)  # a plain run's member "": out itself
    return out_dir


def _export_member(model: IterativeVAE, index: int, member: Member, out_dir: Path, format: str) -> None:
    with staged_folder(out_dir, "export") as staging:
        if format == "safetensors":
            weights = {k: v.contiguous() for k, v in model.member_state_dict(index).items()}
            save_file(weights, str(staging / run_files.MODEL_FILE))
            save_yaml(run_files.single_run_config(member), staging / "config.yaml")
        else:
            torch.save({"model": state_dict_to_upstream(model, index)}, staging / "model.pt")


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
    with staged_folder(run_dir, "import") as staging:
        step = run_files.step_dir(staging / "ckpt", 0)
        step.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(step / run_files.MODEL_FILE))
        save_yaml(config, step / "config.yaml")
        save_yaml(config, staging / "config.yaml")
        (step / run_files.COMPLETE).write_text("0\n")
    return run_dir
