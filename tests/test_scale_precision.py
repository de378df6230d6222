"""Mixed precision through Accelerate (torch autocast) on the CPU.

What autocast does here: on the CPU, bf16 autocast runs matmul-class ops (the dictionary
products W a(z) and e W) in bfloat16 and leaves elementwise ops alone; their bfloat16
outputs immediately meet float32 tensors (x, exp(log_bias), the state) and type promotion
returns float32. So the state update, the log-rates, the sampler's cumulative sums and the
KL stay in float32 without any casts in the model; these tests pin that down.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fondtrain.config import ModelConfig
from fondtrain.errors import UserError
from fondtrain.model.vae import IterativeVAE
from tests.train_helpers import scalars, tiny_config

# bf16 keeps ~3 significant digits in the matmuls; over the 40-step run below the logged
# training loss stays within this relative distance of float32's (measured on the CPU:
# at most 1.5e-4, same seed and data).
BF16_LOSS_RTOL = 5e-3


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps one process-wide state with one mixed-precision mode: reset it so
    that bf16 and float32 runs can share a process (and leave no bf16 behind)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.parametrize("preset", ["ipvae", "igvae", "igrelu"])
def test_autocast_bf16_keeps_the_state_update_in_float32(preset):
    torch.manual_seed(0)
    model = IterativeVAE(ModelConfig(preset=preset, input_dim=64, n_latents=16, t_train=3, init_scale=0.1))
    x = torch.randn(8, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, model.init_state(8), 0, 3, temp=0.5, beta=1.0, eps=0.5)
    assert out.last_x_hat.dtype == torch.bfloat16, "autocast is active: the dictionary product is bf16"
    assert all(c.dtype == torch.float32 for c in out.state.components)
    assert out.loss.dtype == torch.float32 and out.kl.dtype == torch.float32
    if out.max_rate is not None:
        assert out.max_rate.dtype == torch.float32
    out.loss.backward()
    assert all(p.grad.dtype == torch.float32 for p in model.parameters() if p.grad is not None)
    assert torch.isfinite(out.loss)


@pytest.mark.slow
def test_bf16_training_tracks_float32(digits_shards, tmp_path, fresh_accelerate_state):
    from accelerate.state import AcceleratorState

    from fondtrain.train.trainer import train

    losses = {}
    for precision in ("no", "bf16"):
        AcceleratorState._reset_state(reset_partial_state=True)
        config = tiny_config(digits_shards, tmp_path / "runs", f"mp-{precision}", epochs=6,
                             mixed_precision=precision, max_steps=40, log_every=4, lr=1e-2)
        result = train(config)
        assert result.step == 40
        losses[precision] = np.array([v for _, v in scalars(result.run_dir / "tb")["train/loss"]])
    fp32, bf16 = losses["no"], losses["bf16"]
    assert len(fp32) == len(bf16) == 10 and np.isfinite(bf16).all()
    relative = np.abs(bf16 - fp32) / np.abs(fp32)
    assert relative.max() < BF16_LOSS_RTOL, relative
    assert relative.max() > 0, "bf16 must actually change the arithmetic"


def test_fp16_on_the_cpu_is_refused(digits_shards, tmp_path, fresh_accelerate_state):
    from fondtrain.train.trainer import train

    with pytest.raises(UserError, match="fp16 mixed precision needs a GPU"):
        train(tiny_config(digits_shards, tmp_path / "runs", "fp16", mixed_precision="fp16", max_steps=1))


def test_unknown_precision_and_backend_are_one_sentence():
    from fondtrain.config import TrainConfig

    with pytest.raises(UserError, match="mixed_precision must be one of no, bf16, fp16"):
        TrainConfig(mixed_precision="fp8")
    with pytest.raises(UserError, match="backend must be one of accelerate, deepspeed"):
        TrainConfig(backend="fsdp")
