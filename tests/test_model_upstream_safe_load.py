"""Reference checkpoints are read with torch.load(weights_only=True): tensors, containers
and numpy metadata load; a file that would run code when unpickled is refused unrun."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from fondtrain.config import ModelConfig
from fondtrain.errors import UserError
from fondtrain.model.upstream import load_upstream_checkpoint, state_dict_to_upstream
from fondtrain.model.vae import IterativeVAE


class _RunsCode:
    """Unpickling this runs a shell command (what weights_only=False allows)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _reference_file(tmp_path, metadata):
    model = IterativeVAE(ModelConfig(preset="igvae", input_dim=16, n_latents=8, t_train=2))
    path = tmp_path / "IGVAE+Trainer-0300_(x).pt"
    torch.save({"model": state_dict_to_upstream(model), "optim": {}, "metadata": metadata}, path)
    return model, path


def test_weights_and_numpy_metadata_load(tmp_path):
    model, path = _reference_file(tmp_path, {"epoch": np.int64(300), "loss": np.float64(1.5),
                                             "curve": np.zeros(3, dtype=np.float32)})
    loaded = load_upstream_checkpoint(path)
    torch.testing.assert_close(loaded.W, model.W, rtol=0, atol=0)


def test_a_file_that_runs_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "code-ran"
    _, path = _reference_file(tmp_path, {"note": _RunsCode(marker)})
    with pytest.raises(UserError, match=r"holds Python objects beyond tensors \(posix.system\)"):
        load_upstream_checkpoint(path)
    assert not marker.exists()
