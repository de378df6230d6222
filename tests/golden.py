"""Load the reference goldens (tests/data/<preset>.npz, recorded from hadivafaii/IterativeVAE)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from fondtrain.model.upstream import config_from_upstream, model_from_upstream

DATA = Path(__file__).parent / "data"
GOLDEN_NAMES = ("ipvae", "igvae", "igrelu", "ipvae_inner2", "igvae_inner2", "igrelu_inner2")


class Golden:
    """One golden file: arrays by name (as float32/64 tensors) plus its sidecar."""

    def __init__(self, name: str):
        self.name = name
        self.arrays = np.load(DATA / f"{name}.npz")
        self.sidecar = json.loads((DATA / f"{name}.json").read_text())
        self.components = self.sidecar["state_components"]

    def __getitem__(self, key: str) -> torch.Tensor:
        return torch.from_numpy(np.array(self.arrays[key]))

    def has(self, key: str) -> bool:
        return key in self.arrays.files

    def scalar(self, key: str) -> float:
        return float(self.arrays[key])

    def model(self):
        params = {k[len("params/"):]: self[k] for k in self.arrays.files
                  if k.startswith("params/")}
        config = config_from_upstream(self.sidecar["upstream_config"], input_dim=256)
        return model_from_upstream(params, config)

    def update_params(self, prefix: str) -> dict[str, torch.Tensor]:
        """Arrays under e.g. 'grad/' mapped to fondtrain names (via the importer)."""
        upstream = {k[len(prefix):]: self[k] for k in self.arrays.files if k.startswith(prefix)}
        from fondtrain.model.upstream import state_dict_from_upstream

        return state_dict_from_upstream(upstream)
