"""ModelConfig validation and preset defaults; import/export of reference checkpoints.

The reference checkpoints are built here with the reference's own state-dict names and
shapes (hadivafaii/IterativeVAE, main/layers.py) and its Config*VAE.json fields (as in its
checkpoints/ folder), then loaded through `load_upstream_checkpoint`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from fondtrain.config import ModelConfig
from fondtrain.errors import UserError
from fondtrain.model.upstream import (
    load_upstream_checkpoint,
    model_from_upstream,
    state_dict_to_upstream,
)


def _one_sentence(message: str) -> bool:
    return ("\n" not in message and message.endswith(".")
            and re.search(r"[.!?]\s+[A-Z]", message) is None and len(message) > 15)


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize("kwargs,field", [
    ({"preset": "vae"}, "preset"),
    ({"preset": "IPVAE"}, "preset"),
    ({"n_latents": 0}, "n_latents"),
    ({"n_latents": -3}, "n_latents"),
    ({"input_dim": 0}, "input_dim"),
    ({"t_train": 0}, "t_train"),
    ({"n_iters_inner": 0}, "n_iters_inner"),
    ({"beta_outer": -1.0}, "beta_outer"),
    ({"beta_inner": -0.5}, "beta_inner"),
    ({"poisson_kl": "textbook"}, "poisson_kl"),
    ({"preset": "igvae", "clamp_u": (7.0,)}, "clamp_u"),
    ({"preset": "igvae", "clamp_du": (7.0, 3.0, 1.0)}, "clamp_du"),
    ({"preset": "ipvae", "clamp_u": (10.0, 10.0)}, "clamp_u"),
    ({"preset": "ipvae", "clamp_du": (-1.0,)}, "clamp_du"),
    ({"n_exp_p": 0.0}, "n_exp_p"),
])
def test_model_config_rejects_bad_values(kwargs, field):
    with pytest.raises(UserError) as info:
        ModelConfig(**kwargs)
    message = str(info.value)
    assert _one_sentence(message), message
    assert field.split("_")[0] in message.lower()


@pytest.mark.parametrize("preset,beta,clamp_u,clamp_du", [
    ("ipvae", 24.0, (10.0,), (10.0,)),
    ("igvae", 8.0, (7.0, 2.0), (7.0, 3.0)),
    ("igrelu", 8.0, (7.0, 2.0), (7.0, 3.0)),
])
def test_preset_defaults(preset, beta, clamp_u, clamp_du):
    cfg = ModelConfig(preset=preset)
    assert cfg.beta_outer == beta
    assert cfg.clamp_u == clamp_u and cfg.clamp_du == clamp_du
    assert cfg.posterior == ("poisson" if preset == "ipvae" else "gaussian")
    assert cfg.n_components == len(clamp_u)
    assert cfg.poisson_kl == "reference"
    assert (cfg.input_dim, cfg.n_latents) == (None, 512)  # input_dim: the data set's
    assert ModelConfig(preset=preset, beta_outer=3.0).beta_outer == 3.0
    assert ModelConfig(preset=preset, t_train=4, n_iters_outer=3).t_total == 12
    # a scalar clamp applies to every component
    assert ModelConfig(preset=preset, clamp_u=5.0).clamp_u == (5.0,) * len(clamp_u)


# ----------------------------------------------------------------------------- upstream
M, K, T = 16, 8, 4

POIS_JSON = {  # the reference's ConfigPoisVAE.json fields (checkpoints/poisson_...)
    "clamp_prior": -4, "prior_log_dist": "uniform", "dataset": "vH16-wht", "t_train": T,
    "n_iters_outer": 1, "n_iters_inner": 1, "beta_outer": 24.0, "beta_inner": 1.0,
    "n_latents": [K], "inf_type": "grad", "dec_type": "lin", "fit_prior": True,
    "stochastic": True, "init_dist": "normal", "init_scale": 0.0001, "clamp_du": 10.0,
    "clamp_u": 10.0, "seed": 0, "track_stats": False,
}


def _gaus_json(latent_act):
    raw = {k: v for k, v in POIS_JSON.items() if k not in ("clamp_prior", "prior_log_dist")}
    raw.update(latent_act=latent_act, beta_outer=8.0, clamp_du=[7.0, 3.0], clamp_u=[7.0, 2.0],
               n_iters_inner=2, beta_inner=0.5)
    return raw


def _reference_state_dict(preset: str, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen)

    n_comp = 1 if preset == "ipvae" else 2
    sd = {
        "layer.phi.weight": rnd(M, K),
        "layer.dec_log_sigma": rnd(1, M),
        "layer.log_bias": rnd(1, K) - 3,
        "layer.temp": torch.tensor(0.37),
        "layer.beta_inner": torch.tensor(1.0 if preset == "ipvae" else 0.5),
        "layer.eps": torch.tensor(0.8),
    }
    for c in range(n_comp):
        sd[f"layer.log_lr.{c}"] = rnd(1)
        sd[f"layer.u_init.{c}"] = rnd(1, K)
    if preset == "igrelu":
        sd["layer.activation.log_gain"] = rnd(1, K)
    if preset == "ipvae":
        sd["layer.n_exp"] = torch.tensor([10, 13, 7, 21], dtype=torch.int32)
    return sd


def _write_checkpoint(folder: Path, preset: str, sd) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if preset == "ipvae":
        name, raw, pt = "ConfigPoisVAE.json", POIS_JSON, "IPVAE+Trainer-0300_(x).pt"
    else:
        name, pt = "ConfigGausVAE.json", "IGVAE+Trainer-0300_(x).pt"
        raw = _gaus_json("relu" if preset == "igrelu" else None)
    (folder / name).write_text(json.dumps(raw, indent=4))
    path = folder / pt
    torch.save({"model": sd, "optim": {}, "metadata": {}}, path)
    return path


@pytest.mark.parametrize("preset", ["ipvae", "igvae", "igrelu"])
def test_load_reference_checkpoint_and_round_trip(tmp_path: Path, preset: str):
    sd = _reference_state_dict(preset)
    model = load_upstream_checkpoint(_write_checkpoint(tmp_path / "ckpt", preset, sd))
    cfg = model.config
    assert cfg.preset == preset
    assert (cfg.input_dim, cfg.n_latents, cfg.t_train, cfg.t_total) == (M, K, T, T)
    if preset == "ipvae":
        assert (cfg.beta_outer, cfg.beta_inner, cfg.n_iters_inner) == (24.0, 1.0, 1)
        assert cfg.clamp_u == (10.0,) and cfg.clamp_du == (10.0,)
    else:
        assert (cfg.beta_outer, cfg.beta_inner, cfg.n_iters_inner) == (8.0, 0.5, 2)
        assert cfg.clamp_u == (7.0, 2.0) and cfg.clamp_du == (7.0, 3.0)

    def same(a, b):
        torch.testing.assert_close(a.detach(), b, rtol=0, atol=0)

    assert model.n_members == 1  # a reference checkpoint is a population of one
    same(model.W[0], sd["layer.phi.weight"])
    same(model.dec_log_sigma[0], sd["layer.dec_log_sigma"][0])
    same(model.log_bias[0], sd["layer.log_bias"][0])
    n_comp = cfg.n_components
    assert model.log_lr.shape == (1, n_comp) and model.u_init.shape == (1, n_comp, K)
    for c in range(n_comp):
        same(model.log_lr[0, c], sd[f"layer.log_lr.{c}"][0])
        same(model.u_init[0, c], sd[f"layer.u_init.{c}"][0])
    if preset == "igrelu":
        same(model.log_gain[0], sd["layer.activation.log_gain"][0])
    else:
        assert not hasattr(model, "log_gain")
    if preset == "ipvae":
        assert model.n_exp.tolist() == [[10, 13, 7, 21]]
        assert [model.n_exp_at(t) for t in range(T)] == [[10], [13], [7], [21]]

    # Export: the reference's names and shapes, same values, and back again.
    exported = state_dict_to_upstream(model)
    assert set(exported) == set(sd)
    for key, value in sd.items():
        assert exported[key].shape == value.shape, key
        assert exported[key].dtype == value.dtype, key
        if key not in ("layer.temp", "layer.eps"):  # schedule state, not parameters
            same(exported[key], value)
    again = model_from_upstream(exported, cfg)
    for key, value in model.state_dict().items():
        same(again.state_dict()[key], value)
    # ... and through a file written like the reference's
    reloaded = load_upstream_checkpoint(_write_checkpoint(tmp_path / "again", preset, exported))
    for key, value in model.state_dict().items():
        same(reloaded.state_dict()[key], value)


def test_model_from_upstream_infers_preset_without_config():
    for preset in ("ipvae", "igvae", "igrelu"):
        model = model_from_upstream(_reference_state_dict(preset))
        assert model.config.preset == preset
        assert (model.config.input_dim, model.config.n_latents) == (M, K)


def test_reference_n_exp_of_another_length_is_resampled(tmp_path: Path):
    sd = _reference_state_dict("ipvae")
    sd["layer.n_exp"] = torch.tensor([10, 13], dtype=torch.int32)
    model = load_upstream_checkpoint(_write_checkpoint(tmp_path, "ipvae", sd))
    assert model.n_exp.tolist() == [[10, 13, 13, 13]]


def test_bad_checkpoints_raise_user_error(tmp_path: Path):
    not_pt = tmp_path / "notes.pt"
    not_pt.write_text("this is not a checkpoint\n")
    listing = tmp_path / "list.pt"
    torch.save([1, 2, 3], listing)
    foreign = tmp_path / "foreign" / "model.pt"
    foreign.parent.mkdir()
    torch.save({"model": {"encoder.weight": torch.zeros(2, 2)}}, foreign)
    mismatch = tmp_path / "mismatch"
    sd = _reference_state_dict("igvae")
    path = _write_checkpoint(mismatch, "igvae", sd)
    raw = _gaus_json(None)
    raw["n_latents"] = [K + 1]
    (mismatch / "ConfigGausVAE.json").write_text(json.dumps(raw))
    for bad in (not_pt, listing, foreign, path, tmp_path / "missing.pt"):
        with pytest.raises(UserError) as info:
            load_upstream_checkpoint(bad)
        assert _one_sentence(str(info.value)), str(info.value)
