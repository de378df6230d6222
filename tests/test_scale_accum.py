"""Gradient accumulation: grad_accum=2 with batch B equals grad_accum=1 with batch 2B.

The trainer loads batch_size x grad_accum samples per step and splits them into
micro-batches, each with its own posterior state. For the comparison to be exact the
sampler noise of a sample must not depend on which micro-batch it sits in, so the
Gaussian noise is replaced by a deterministic function of each sample's own state. The
gradients handed to every optimiser step (recorded where the trainer clips and steps) and
the parameters after the run must then agree to float tolerance.
"""

from __future__ import annotations

import pytest
import torch

from fondtrain.config import ModelConfig
from fondtrain.model.vae import IterativeVAE
from fondtrain.train import batch as train_batch
from fondtrain.train.backends import clip_and_step
from fondtrain.train.trainer import train
from tests.train_helpers import tiny_config


def _per_sample_noise(self, state, temp, t=0, generators=None):
    """Noise that is a fixed, smooth function of each sample's own state and t (a steep one,
    e.g. sin(1000 mu), would amplify the float rounding differences between a [B, K] and a
    [2B, K] matmul into visibly different gradients after a few steps)."""
    mu, xi = state.components
    return torch.sin(5.0 * mu.detach() + 3.0 * xi.detach() + 0.37 * (t + 1))


def _run(digits_shards, tmp_path, monkeypatch, batch_size: int, grad_accum: int):
    recorded = []

    def recording(accelerator, model, optimizer, max_norm):
        recorded.append([p.grad.detach().clone() for p in model.parameters()])
        return clip_and_step(accelerator, model, optimizer, max_norm)

    monkeypatch.setattr(train_batch, "clip_and_step", recording)
    monkeypatch.setattr(IterativeVAE, "draw_noise", _per_sample_noise)
    config = tiny_config(digits_shards, tmp_path / "runs", f"accum-{grad_accum}", batch_size=batch_size,
                         grad_accum=grad_accum, max_steps=3, warmup_portion=0.0, grad_clip=50.0)
    # two optimiser steps per batch (n_iters_outer 2): states carried across them per micro-batch
    config.model = ModelConfig(preset="igvae", input_dim=64, n_latents=16, t_train=3, n_iters_outer=2,
                               beta_outer=1.0)
    initial_w = IterativeVAE(config.model).W.detach().clone()
    result = train(config)
    params = {k: v.detach().clone() for k, v in result.model.state_dict().items()}
    assert not torch.allclose(params["W"], initial_w), "the run moved the parameters"
    return recorded, params


@pytest.mark.slow
def test_two_micro_batches_equal_one_double_batch(digits_shards, tmp_path, monkeypatch):
    accum_grads, accum_params = _run(digits_shards, tmp_path, monkeypatch, batch_size=16, grad_accum=2)
    whole_grads, whole_params = _run(digits_shards, tmp_path, monkeypatch, batch_size=32, grad_accum=1)
    assert len(accum_grads) == len(whole_grads) == 3 * 2
    for step, (a, w) in enumerate(zip(accum_grads, whole_grads, strict=True)):
        for i, (ga, gw) in enumerate(zip(a, w, strict=True)):
            assert gw.abs().max() > 0
            torch.testing.assert_close(ga, gw, rtol=1e-5, atol=1e-5, msg=f"optimiser step {step}, param {i}")
    norms = [torch.linalg.vector_norm(torch.cat([g.flatten() for g in w])) for w in whole_grads]
    assert max(norms) > 50.0, "the clip norm is reached, so clipping is compared too"
    for name, value in whole_params.items():
        torch.testing.assert_close(accum_params[name], value, rtol=1e-4, atol=1e-6, msg=name)
