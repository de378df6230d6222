"""Import and export checkpoints of the reference implementation (hadivafaii/IterativeVAE).

The reference saves `torch.save({'model': state_dict, 'optim': ..., ...}, '<Model>+Trainer-0300_(...).pt')`
next to a `Config{Pois,Gaus}VAE.json`. Its state-dict names and shapes differ from ours:

| reference                      | fondtrain        |
|--------------------------------|------------------|
| layer.phi.weight [M, K]        | W [M, K]         |
| layer.dec_log_sigma [1, M]     | dec_log_sigma [M]|
| layer.log_bias [1, K]          | log_bias [K]     |
| layer.log_lr.{c} [1]           | log_lr [C]       |
| layer.u_init.{c} [1, K]        | u_init [C, K]    |
| layer.activation.log_gain [1,K]| log_gain [K]     |
| layer.n_exp [t_total]          | n_exp [t_total]  |

The reference's scalar buffers (layer.temp, layer.eps, layer.beta_inner) are schedule
state, not model parameters: they are dropped on import and written back as
(1, schedule end value, beta_inner) on export.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from fondtrain.config import ModelConfig
from fondtrain.errors import UserError
from fondtrain.model.vae import IterativeVAE

PREFIX = "layer."


def config_from_upstream(raw: dict[str, Any], input_dim: int = 256) -> ModelConfig:
    """A ModelConfig from the reference's Config{Pois,Gaus}VAE.json contents."""
    if "prior_log_dist" in raw or raw.get("type") == "poisson" or raw.get("_type") == "poisson":
        preset = "ipvae"
    elif raw.get("latent_act") == "relu":
        preset = "igrelu"
    elif raw.get("latent_act") in (None, ""):
        preset = "igvae"
    else:
        raise UserError(
            f"reference config uses latent_act={raw.get('latent_act')!r}, which fondtrain "
            "does not implement: only identity and relu latents are supported."
        )
    n_latents = raw.get("n_latents", [512])
    n_latents = n_latents[0] if isinstance(n_latents, list) else n_latents
    return ModelConfig(
        preset=preset,
        input_dim=input_dim,
        n_latents=int(n_latents),
        t_train=int(raw.get("t_train", 16)),
        n_iters_outer=int(raw.get("n_iters_outer", 1)),
        n_iters_inner=int(raw.get("n_iters_inner", 1)),
        beta_outer=float(raw.get("beta_outer", 24.0 if preset == "ipvae" else 8.0)),
        beta_inner=float(raw.get("beta_inner", 1.0)),
        init_scale=float(raw.get("init_scale") or 1e-4),
        clamp_u=raw.get("clamp_u"),
        clamp_du=raw.get("clamp_du"),
        seed=int(raw.get("seed", 0)),
    )


def state_dict_from_upstream(upstream: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map reference state-dict names and shapes to fondtrain's (see the module table)."""
    try:
        weight = upstream[PREFIX + "phi.weight"]
    except KeyError as err:
        raise UserError(
            "this is not a reference IterativeVAE state dict (no 'layer.phi.weight'): "
            "pass the .pt file the reference trainer saved."
        ) from err
    n_components = sum(1 for k in upstream if k.startswith(PREFIX + "u_init."))
    ours = {
        "W": weight,
        "dec_log_sigma": upstream[PREFIX + "dec_log_sigma"].reshape(-1),
        "log_bias": upstream[PREFIX + "log_bias"].reshape(-1),
        "log_lr": torch.cat([upstream[f"{PREFIX}log_lr.{c}"].reshape(1)
                             for c in range(n_components)]),
        "u_init": torch.cat([upstream[f"{PREFIX}u_init.{c}"].reshape(1, -1)
                             for c in range(n_components)]),
    }
    if PREFIX + "activation.log_gain" in upstream:
        ours["log_gain"] = upstream[PREFIX + "activation.log_gain"].reshape(-1)
    if PREFIX + "n_exp" in upstream:
        ours["n_exp"] = upstream[PREFIX + "n_exp"].to(torch.int32)
    return {k: v.detach().clone().float() if v.is_floating_point() else v.clone()
            for k, v in ours.items()}


def state_dict_to_upstream(model: IterativeVAE, member: int = 0) -> dict[str, torch.Tensor]:
    """Member `member`'s parameters under the reference's names and shapes (for its loaders)."""
    ours = model.member_state_dict(member)
    sd = {
        PREFIX + "phi.weight": ours["W"],
        PREFIX + "dec_log_sigma": ours["dec_log_sigma"].reshape(1, -1),
        PREFIX + "log_bias": ours["log_bias"].reshape(1, -1),
        PREFIX + "temp": torch.tensor(1.0),
        PREFIX + "beta_inner": torch.tensor(model.members[member].beta_inner),
        PREFIX + "eps": torch.tensor(1.0),
    }
    for c in range(model.config.n_components):
        sd[f"{PREFIX}log_lr.{c}"] = ours["log_lr"][c:c + 1]
        sd[f"{PREFIX}u_init.{c}"] = ours["u_init"][c:c + 1]
    if model.config.preset == "igrelu":
        sd[PREFIX + "activation.log_gain"] = ours["log_gain"].reshape(1, -1)
    if model.is_poisson:
        sd[PREFIX + "n_exp"] = ours["n_exp"]
    return sd


def model_from_upstream(state_dict: dict[str, torch.Tensor],
                        config: ModelConfig | None = None) -> IterativeVAE:
    """Build an IterativeVAE (a population of one) holding a reference state dict's parameters.

    Without a config the preset and sizes are read off the state dict (Poisson when it has
    n_exp and one state component; igrelu when it has an activation gain).
    """
    ours = state_dict_from_upstream(state_dict)
    m, k = ours["W"].shape
    if config is None:
        n_components = ours["u_init"].shape[0]
        preset = ("ipvae" if n_components == 1 else
                  "igrelu" if "log_gain" in ours else "igvae")
        t_total = ours["n_exp"].numel() if "n_exp" in ours else 16
        config = ModelConfig(preset=preset, input_dim=m, n_latents=k, t_train=t_total)
    if (config.input_dim, config.n_latents) != (m, k):
        raise UserError(
            f"the checkpoint's dictionary is {m}x{k} but the config asks for "
            f"{config.input_dim}x{config.n_latents}: use the checkpoint's own config."
        )
    model = IterativeVAE(config)
    t_total = model.config.t_total
    if "n_exp" in ours and ours["n_exp"].numel() != t_total:
        ours["n_exp"] = _resample_n_exp(ours["n_exp"], t_total)
    if not model.is_poisson:
        ours["n_exp"] = model.n_exp[0].clone()
    missing, unexpected = model.load_state_dict(ours, strict=False)
    if missing or unexpected:
        raise UserError(
            f"the checkpoint does not match preset {config.preset} (missing {missing}, "
            f"unexpected {unexpected}): check the reference config that came with it."
        )
    return model


def _resample_n_exp(n_exp: torch.Tensor, length: int) -> torch.Tensor:
    """Stretch or cut a per-step n_exp table to another t_total (last value repeated)."""
    values = n_exp.tolist()
    values = (values + [values[-1]] * length)[:length]
    return torch.tensor(values, dtype=torch.int32)


def _numpy_scalar_globals() -> list:
    """What numpy scalars and arrays in a checkpoint's metadata unpickle through."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    return [np.dtype, np.ndarray, core.multiarray.scalar, core.multiarray._reconstruct,
            *(type(np.dtype(c)) for c in "?bhilqBHILQefdgFDG")]


def _load_weights_only(path: Path):
    """torch.load with weights_only=True: tensors, containers and numpy scalars, never code.

    The reference trainer saves {'model': state_dict, 'optim': ..., 'metadata': ...}; a
    file that needs other Python objects is refused (unpickling them could run any code).
    """
    import pickle
    import re

    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights_only" not in str(err) and "Unsupported global" not in str(err):
            raise UserError(f"checkpoint {path} could not be read by torch.load (UnpicklingError).") from err
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        blocked = found.group(1) if found else "a Python object"
        raise UserError(
            f"checkpoint {path} holds Python objects beyond tensors ({blocked}), which fondtrain does not "
            "unpickle because that can run code: if you trust the file, keep only its weights with "
            "torch.save(torch.load(p, weights_only=False)['model'], 'weights.pt') and import that."
        ) from None
    except Exception as err:  # torch raises many types for a bad file
        raise UserError(f"checkpoint {path} could not be read by torch.load ({err.__class__.__name__}).") from err


def load_upstream_checkpoint(path: str | Path) -> IterativeVAE:
    """Load a reference `.pt` checkpoint (and the Config*VAE.json beside it, if present)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist: give the path of the reference .pt file.")
    blob = _load_weights_only(path)
    state_dict = blob.get("model", blob) if isinstance(blob, dict) else None
    if not isinstance(state_dict, dict):
        raise UserError(f"checkpoint {path} holds no state dict: pass the reference trainer's .pt file.")
    config = None
    json_files = sorted(path.parent.glob("Config*VAE.json"))
    if json_files:
        raw = json.loads(json_files[0].read_text())
        m = state_dict[PREFIX + "phi.weight"].shape[0] if PREFIX + "phi.weight" in state_dict else 256
        config = config_from_upstream(raw, input_dim=m)
    return model_from_upstream(state_dict, config)
