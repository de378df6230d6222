"""Exports, imported runs and checkpoints get the user's umask (not safetensors' or
tempfile's 0600 / 0700); an imported reference model records the data set it learnt."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from fondtrain.config import ModelConfig, RunConfig, load_yaml
from fondtrain.errors import UserError
from fondtrain.model.upstream import state_dict_to_upstream
from fondtrain.model.vae import IterativeVAE
from fondtrain.runs import files as run_files
from fondtrain.runs.export import export_model, import_upstream


@pytest.fixture(params=[0o022, 0o002])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def _reference(tmp_path, input_dim=256):
    model = IterativeVAE(ModelConfig(preset="igvae", input_dim=input_dim, n_latents=8, t_train=2))
    path = tmp_path / "ref.pt"
    torch.save({"model": state_dict_to_upstream(model)}, path)
    return path


def _modes(root):
    return {p: stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}


def _assert_umask(root, mask):
    for path, mode in _modes(root).items():
        assert mode == (0o777 if path.is_dir() else 0o666) & ~mask, (path, oct(mode))


def test_import_and_exports_follow_the_umask(tmp_path, umask):
    run = import_upstream(str(_reference(tmp_path)), str(tmp_path / "run"))
    _assert_umask(run, umask)
    for fmt in ("safetensors", "upstream"):
        out = export_model(str(run), str(tmp_path / f"out-{fmt}"), fmt)
        _assert_umask(out, umask)
    assert not list(tmp_path.glob(".tmp-*"))


def test_checkpoints_follow_the_umask(tmp_path, umask):
    from accelerate import Accelerator

    from fondtrain.train.checkpoint import save_checkpoint

    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(torch.nn.Linear(4, 4))
    assert model is not None
    final = save_checkpoint(accelerator, tmp_path / "ckpt", 3, {"global_step": 3}, RunConfig(), keep_last=2)
    _assert_umask(final, umask)


def test_import_records_the_data_set_it_was_trained_on(tmp_path):
    run = import_upstream(str(_reference(tmp_path)), str(tmp_path / "a"))
    assert load_yaml(run / "config.yaml")["data"]["dataset"] == "vh16"
    run = import_upstream(str(_reference(tmp_path)), str(tmp_path / "b"), dataset="natural16")
    assert load_yaml(run / "config.yaml")["data"]["dataset"] == "natural16"
    assert run_files.load_model(run)[1].data.dataset == "natural16"
    with pytest.raises(UserError, match="--dataset"):
        import_upstream(str(_reference(tmp_path, input_dim=100)), str(tmp_path / "c"))
