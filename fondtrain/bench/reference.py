"""The one loader of the reference implementation: its model classes from a local checkout.

Used by `fondtrain bench --reference_dir`, `benchmarks/reference_parity.py` and
`benchmarks/reference_train.py`.

The reference (hadivafaii/IterativeVAE) imports its whole toolbox at every level
(`from utils.plotting import *` pulls matplotlib, seaborn, pandas, h5py, rich, IPython,
torchvision). Its model and sampler code needs none of that: only torch, numpy and scipy.
So instead of importing its packages we run the *definitions* we need, read from the
user's checkout (`--reference_dir`), in one namespace that holds torch, numpy and scipy:

- `main/distributions.py`: everything (the Poisson / Normal samplers, soft clamps, and
  the module-level `set_default_validate_args(False)` it runs at import);
- `main/activations.py`, `main/layers.py`, `main/model.py`: everything except imports;
- a few helpers they use from `utils/generic.py` and `base/utils_model.py`
  (`get_rng`, `now`, `filter_kwargs`, `tonp`, `compute_r2`, `Initializer`, `Module`);
- `base/optim.py`: the NVAE Adamax the reference trains with (`optimizer: adamax_fast`).

Nothing of the reference is copied into fondtrain; the statements run as written. A
config object with the attributes the layers read replaces `ConfigPoisVAE` /
`ConfigGausVAE` (their module imports the dataset code). `reference_model` builds IPVAE
or IGVAE (`latent_act='relu'` for iGrelu-VAE) as the reference's vH16 scripts do. A path
that is not such a checkout gets one sentence (UserError) before anything runs.
"""

from __future__ import annotations

import ast
import collections
import contextlib
import functools
import inspect
import random
import typing
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from fondtrain.config import ModelConfig, TrainConfig
from fondtrain.errors import UserError

# (file, names to run; None = every statement that is not an import)
_SOURCES: tuple[tuple[str, tuple[str, ...] | None], ...] = (
    ("utils/generic.py", ("get_rng", "now", "tonp", "filter_kwargs", "get_all_init_params",
                          "_param_checker")),
    ("base/utils_model.py", ("compute_r2", "Initializer", "Module")),
    ("main/distributions.py", None),
    ("main/activations.py", None),
    ("main/layers.py", None),
    ("main/model.py", None),
    ("base/optim.py", ("Adamax",)),
)

# The reference's model type and latent activation of each fondtrain preset.
PRESET_TYPES = {"ipvae": ("poisson", None), "igvae": ("gaussian", None),
                "igrelu": ("gaussian", "relu")}
HINT = "give --reference_dir a checkout of hadivafaii/IterativeVAE"


def _namespace() -> dict[str, Any]:
    """What the reference's star imports would have provided, minus plotting and I/O."""
    from datetime import datetime

    import scipy.stats as sp_stats
    import torch.nn.functional as F
    from torch import distributions as dists
    from torch import nn

    ns: dict[str, Any] = {name: getattr(typing, name) for name in typing.__all__}
    ns.update(
        torch=torch, nn=nn, F=F, dists=dists, np=np, sp_stats=sp_stats, datetime=datetime,
        collections=collections, contextlib=contextlib, functools=functools,
        inspect=inspect, random=random, contextmanager=contextlib.contextmanager,
        plot_weights=None, __name__="reference",
    )
    return ns


def _run_file(path: Path, names: tuple[str, ...] | None, ns: dict[str, Any]) -> None:
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{path} is not readable Python ({type(exc).__name__}): {HINT}.") from None
    found = set()
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            continue
        if names is not None:
            name = getattr(node, "name", None)
            if name not in names:
                continue
            found.add(name)
        code = compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec")
        try:
            exec(code, ns)  # noqa: S102 - the user's own checkout, run on request
        except Exception as exc:  # a TorchScript helper we do not use may fail to compile
            if names is not None:
                raise
            ns.setdefault("_skipped", []).append(f"{path.name}:{node.lineno} ({exc})")
    if names is not None and found != set(names):
        missing = ", ".join(sorted(set(names) - found))
        raise UserError(f"{path} does not define {missing}: {HINT}.")


@functools.lru_cache(maxsize=4)
def load_reference(reference_dir: str) -> SimpleNamespace:
    """The reference's classes (IPVAE, IGVAE, Adamax, ...) from a local checkout."""
    root = Path(reference_dir).expanduser()
    if not root.is_dir():
        raise UserError(f"--reference_dir {root} is not a folder: {HINT}.")
    missing = [f for f, _ in _SOURCES if not (root / f).is_file()]
    if missing:
        raise UserError(f"--reference_dir {root} is not a checkout of the reference "
                        f"implementation (no {', '.join(missing)}): {HINT}.")
    ns = _namespace()
    for rel, names in _SOURCES:
        _run_file(root / rel, names, ns)
    return SimpleNamespace(**{k: v for k, v in ns.items() if not k.startswith("__")})


def reference_config(preset: str, n_latents: int = 512, t_train: int = 16, input_side: int = 16,
                     seed: int = 0, **overrides: Any) -> SimpleNamespace:
    """The attributes the reference layers read, set as its vH16 scripts set them.

    beta_outer, the clamps, init_scale and the inner constants are fondtrain's preset
    values (`ModelConfig`), which equal the reference's published vH16 settings (its
    README and flag defaults); the reference takes a Poisson clamp as a float.
    """
    kind, act = PRESET_TYPES[preset]
    poisson = kind == "poisson"
    ours = ModelConfig(preset=preset, n_latents=n_latents, t_train=t_train, seed=seed)
    clamp_u, clamp_du = (c[0] if poisson else c for c in (ours.clamp_u, ours.clamp_du))
    cfg = SimpleNamespace(
        type=kind, latent_act=act, len=ours.n_components,
        t_train=t_train, n_iters_outer=ours.n_iters_outer, n_iters_inner=ours.n_iters_inner,
        beta_inner=ours.beta_inner, beta_outer=ours.beta_outer, n_latents=[n_latents],
        inf_type="grad", dec_type="lin", fit_prior=True, stochastic=True, init_dist="normal",
        init_scale=ours.init_scale, clamp_u=clamp_u, clamp_du=clamp_du,
        input_sz=(1, input_side, input_side), shape=(-1, 1, input_side, input_side),
        # the reference's own evaluation temperature (SPEC 7, as eval_temperature)
        seed=seed, track_stats=False, validation_temp=0.0 if poisson else 1.0,
        prior_log_dist="uniform", clamp_prior=-4.0,
    )
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def reference_model(reference_dir: str, preset: str, **config: Any):
    """(model, optimizer class) of the reference for `preset`, on CPU."""
    ref = load_reference(reference_dir)
    cfg = reference_config(preset, **config)
    cls = ref.IPVAE if cfg.type == "poisson" else ref.IGVAE
    return cls(cfg), ref


def train_reference(reference, ref, loader, schedule, train: TrainConfig, steps: int, t_train: int,
                    on_step=None) -> list[float]:
    """Train the reference iP-VAE `reference` `steps` optimiser steps on `loader`'s training
    batches, driven as its `Trainer.iteration` drives it: the reference's NVAE Adamax
    (`ref.Adamax`, with `train`'s betas and weight decay), per step the schedule's learning
    rate, temperature, eps, beta and clip (`schedule`: fondtrain's, which equals the
    reference's, tests/test_schedules.py), one TBPTT cycle of t_train inference steps on the
    batch, clip, Adamax step, detach; every `train.n_exp_refresh_every` steps after warm-up
    the n_exp table is set from the epoch's average largest rate at each t.
    `on_step(step, loss)` is called after each step. Returns every step's loss."""
    optimizer = ref.Adamax(reference.parameters(), lr=train.lr, betas=tuple(train.betas),
                           weight_decay=train.weight_decay)
    losses: list[float] = []
    step, epoch = 0, 0
    while step < steps:
        rate_sum = np.zeros(t_train)  # the reference's meters restart every epoch
        for count, batch in enumerate(loader.epoch(epoch), start=1):
            if step >= steps:
                break
            values = schedule.at(step).member(0)
            values = type(values)(*(v.item() for v in values.__dict__.values()))  # one member's floats
            for group in optimizer.param_groups:
                group["lr"] = values.lr
            reference.update_temp(values.temp)
            reference.update_eps(values.eps)
            optimizer.zero_grad()
            cycle, rates = [], []
            for t in range(t_train):
                reference.update_time(t)
                out = reference(batch["x"])
                cycle.append(torch.mean(out["loss_recon"] + out["loss_kl"].sum(-1) * values.beta))
                rates.append(float(out["posterior"].rate.detach().max()))
            # fondtrain's loss is per 256 pixels (1 on 16x16 patches, where the reference trains)
            loss = torch.stack(cycle).mean()
            (loss * 256.0 / batch["x"][0].numel()).backward()
            torch.nn.utils.clip_grad_norm_(reference.parameters(), values.max_norm)
            optimizer.step()
            reference.detach_inference_state()
            rate_sum += np.array(rates)
            if step % train.n_exp_refresh_every == 0 and not values.warming_up:
                reference.layer.update_n_exp(list(rate_sum / count))
            losses.append(loss.item())
            if on_step is not None:
                on_step(step, losses[-1])
            step += 1
        epoch += 1
    return losses
