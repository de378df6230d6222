"""A diverging run (issue 22, item 1): a non-finite loss, gradient or weight is found where
the loop syncs anyway and stops the run with one sentence, exit 2; no checkpoint with
non-finite weights is written and the finite ones are kept (not pruned). One model and a
population (one process, and members split over 2 real gloo processes) alike."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from fondtrain.config import RunConfig
from fondtrain.config.sweep import members_from_sweep, run_members
from fondtrain.errors import UserError
from fondtrain.model.vae import IterativeVAE
from fondtrain.runs import files as run_files
from fondtrain.train.checkpoint import save_checkpoint
from tests.train_helpers import REPO, RUN_2PROC, subprocess_env, tiny_config, tiny_flags


class _Single:
    """What DivergenceWatch needs of an Accelerator in one process."""

    num_processes, is_main_process = 1, True


def _result(loss, grad_norm):
    return SimpleNamespace(out=SimpleNamespace(loss=torch.as_tensor(loss)), grad_norm=torch.as_tensor(grad_norm))


def test_the_first_non_finite_step_and_member_are_named_at_the_next_check(tmp_path):
    from fondtrain.train.divergence import DivergenceWatch

    config = tiny_config(tmp_path, tmp_path, "w", log_every=10, n_exp_refresh_every=1000)
    members = members_from_sweep(config, "seed=0,1,2")
    core = IterativeVAE(config.model, [m.config.model for m in members])
    watch = DivergenceWatch(_Single(), core, config, last_step=100, ckpt_root=tmp_path / "ckpt", members=members)
    for step in range(1, 10):  # no check before step 10: the flags stay on the device
        bad = step >= 3
        watch.observe(step, _result([0.5, float("nan") if bad else 0.5, 0.5], [1.0, 1.0, 1.0]))
    with pytest.raises(UserError) as err:
        watch.observe(10, _result([0.5, float("nan"), 0.5], [1.0, 1.0, 1.0]))
    message = str(err.value)
    assert "training diverged at step 3: the loss of member s1 is not finite" in message, message
    assert "no checkpoint was written before it" in message and "--lr (now 0.005)" in message


def test_non_finite_weights_or_gradient_norm_of_one_model_are_found(tmp_path):
    from fondtrain.train.divergence import DivergenceWatch

    config = tiny_config(tmp_path, tmp_path, "w", log_every=5)
    core = IterativeVAE(config.model)
    members = run_members(config)  # a plain run: one member, named ""
    watch = DivergenceWatch(_Single(), core, config, last_step=100, ckpt_root=tmp_path / "ckpt", members=members)
    watch.observe(4, _result(0.5, float("inf")))
    with pytest.raises(UserError, match="at step 4: the gradient norm is not finite"):
        watch.check(4)
    fresh = DivergenceWatch(_Single(), core, config, last_step=100, ckpt_root=tmp_path / "ckpt", members=members)
    with torch.no_grad():
        core.W[0, 0, 0] = float("nan")
    with pytest.raises(UserError, match="at step 7: the weights are not finite"):
        fresh.check(7)


def test_a_checkpoint_with_non_finite_weights_is_never_written(tmp_path):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(torch.nn.Linear(4, 4))
    root = tmp_path / "ckpt"
    for step in (10, 20):
        save_checkpoint(accelerator, root, step, {"global_step": step}, RunConfig(), keep_last=2)
    with torch.no_grad():
        model.weight[1, 2] = float("nan")
    with pytest.raises(UserError) as err:
        save_checkpoint(accelerator, root, 30, {"global_step": 30}, RunConfig(), keep_last=2)
    message = str(err.value)
    assert "not writing checkpoint step-00000030" in message and "weights are not finite (weight)" in message
    assert f"the last finite checkpoint is {root / 'step-00000020'}" in message
    assert sorted(p.name for p in root.iterdir()) == ["step-00000010", "step-00000020"]  # nothing pruned


def _train(flags, cwd, command=None):
    return subprocess.run([*(command or [sys.executable]), str(REPO / "launch" / "train.py"), *flags], cwd=cwd,
                          env=subprocess_env(), capture_output=True, text=True, timeout=600)


def _one_sentence(proc) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


def _all_finite(checkpoint) -> bool:
    from safetensors.torch import load_file

    return all(bool(torch.isfinite(v).all()) for v in load_file(str(checkpoint / run_files.MODEL_FILE)).values()
               if v.is_floating_point())


@pytest.mark.slow
def test_a_run_that_diverges_stops_and_keeps_its_finite_checkpoints(digits_shards, tmp_path):
    flags = tiny_flags(digits_shards, tmp_path / "runs", "d", ckpt_every=5, keep_last=2)
    assert _train([*flags, "--max_steps=10"], tmp_path).returncode == 0
    ckpt = tmp_path / "runs" / "d" / "ckpt"
    finite = sorted(p.name for p in ckpt.iterdir())
    assert finite == ["step-00000005", "step-00000010"]
    line = _one_sentence(_train([*flags, "--max_steps=60", "--lr=1e6", "--resume=force"], tmp_path))
    assert "training diverged at step 1" in line and "is not finite" in line, line
    assert f"the last finite checkpoint is {ckpt / 'step-00000010'}" in line and "--lr (now 1e+06)" in line
    assert sorted(p.name for p in ckpt.iterdir()) == finite  # nothing non-finite written, nothing pruned
    assert all(_all_finite(c) for c in run_files.list_checkpoints(ckpt))


@pytest.mark.slow
def test_igvae_with_a_huge_clip_norm_does_not_finish_with_nan(digits_shards, tmp_path):
    flags = tiny_flags(digits_shards, tmp_path / "runs", "g", model="igvae", ckpt_every=5, max_steps=30,
                       lr=1e6, grad_clip=1e30)
    line = _one_sentence(_train(flags, tmp_path))
    assert "training diverged at step" in line and "--grad_clip (now 1e+30)" in line, line
    assert "no checkpoint was written before it" in line
    assert run_files.list_checkpoints(tmp_path / "runs" / "g" / "ckpt") == []


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_a_diverging_member_stops_a_population_and_is_named(digits_shards, tmp_path, processes):
    """Member 1 (init_scale 1e30) is not finite from its first step; with 2 processes it
    is trained by rank 1 alone (--population_parallel split) and named by rank 0, once,
    through launch/run.py."""
    flags = tiny_flags(digits_shards, tmp_path / "runs", "p", sweep="init_scale=1,1e30", max_steps=20,
                       ckpt_every=5)
    proc = _train(flags, tmp_path, None if processes == 1 else RUN_2PROC)
    line = _one_sentence(proc)
    assert "training diverged at step 1: the loss of member is1e+30 is not finite" in line, line
    assert run_files.list_checkpoints(tmp_path / "runs" / "p" / "ckpt") == []


def test_an_overflowing_gradient_norm_under_fp16_is_the_loss_scalers(tmp_path):
    """fp16's loss scaler skips a step whose gradients overflow (and lowers the scale): not a
    divergence. Nor is the NaN that stands for a norm DeepSpeed did not compute."""
    from fondtrain.train.divergence import DivergenceWatch

    for precision, backend, sweep, grad_norm in (("fp16", "accelerate", "seed=0,1,2", torch.tensor([float("inf")] * 3)),
                                                 ("no", "deepspeed", "", torch.tensor([float("nan")]))):
        config = tiny_config(tmp_path, tmp_path, "w", log_every=1, mixed_precision=precision, backend=backend,
                             sweep=sweep)
        members = run_members(config)
        core = IterativeVAE(config.model, [m.config.model for m in members])
        watch = DivergenceWatch(_Single(), core, config, last_step=100, ckpt_root=tmp_path, members=members)
        loss = torch.full((len(members),), 0.5)
        result = SimpleNamespace(out=SimpleNamespace(loss=loss), grad_norm=grad_norm)
        watch.observe(1, result)  # checks at once (log_every 1): no error
