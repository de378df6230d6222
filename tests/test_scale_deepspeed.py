"""The DeepSpeed back end: config filling, and a real 2-process ZeRO run on the CPU (torchrun,
gloo) that trains, checkpoints from every rank, resumes, and matches Accelerate DDP.

The multi-process test needs DeepSpeed (`pip install -e .[deepspeed]`) and is skipped
cleanly without it.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from fondtrain.config import RunConfig, TrainConfig
from fondtrain.errors import UserError
from fondtrain.runs import files as run_files
from fondtrain.train.backends import deepspeed_config
from tests.train_helpers import REPO, subprocess_env

HAVE_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
ZERO1 = REPO / "launch" / "deepspeed" / "zero1.json"
ZERO2 = REPO / "launch" / "deepspeed" / "zero2.json"


def _config(**train) -> RunConfig:
    return RunConfig(train=TrainConfig(**train))


def test_shipped_deepspeed_configs_are_zero_1_and_2():
    for path, stage in ((ZERO1, 1), (ZERO2, 2)):
        ds = json.loads(path.read_text())
        assert ds["zero_optimization"]["stage"] == stage
        assert ds["zero_allow_untested_optimizer"] is True  # torch's Adamax under ZeRO


def test_deepspeed_config_takes_batch_clip_and_precision_from_fondtrain():
    ds = deepspeed_config(_config(batch_size=50, grad_accum=4, deepspeed_config=str(ZERO2)), world_size=8)
    # the loop accumulates micro-batches itself: DeepSpeed sees one micro-batch per step
    assert ds["train_micro_batch_size_per_gpu"] == 50 and ds["gradient_accumulation_steps"] == 1
    assert ds["train_batch_size"] == 400
    assert ds["gradient_clipping"] == 0.0  # clipped per step from the schedule instead
    assert ds["zero_optimization"]["stage"] == 2 and "torch_autocast" not in ds
    bf16 = deepspeed_config(_config(mixed_precision="bf16"), world_size=1)
    assert bf16["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}
    assert bf16["zero_optimization"]["stage"] == 1  # the default without a JSON


def test_deepspeed_config_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        deepspeed_config(_config(deepspeed_config=str(tmp_path / "missing.json")), 1)
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(UserError, match="not valid JSON"):
        deepspeed_config(_config(deepspeed_config=str(bad)), 1)
    whole_model_bf16 = tmp_path / "bf16.json"
    whole_model_bf16.write_text(json.dumps({"bf16": {"enabled": True}}))
    with pytest.raises(UserError, match="--mixed_precision bf16"):
        deepspeed_config(_config(deepspeed_config=str(whole_model_bf16)), 1)
    with pytest.raises(UserError, match="needs loss scaling"):
        deepspeed_config(_config(mixed_precision="fp16"), 1)


def test_launch_script_drops_the_deepspeed_launchers_local_rank():
    sys.path.insert(0, str(REPO / "launch"))
    try:
        import train as launch_train
    finally:
        sys.path.pop(0)
    assert launch_train._drop_local_rank(["--local_rank=3", "--model", "igvae", "--local_rank", "1"]) == \
        ["--model", "igvae"]


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_DEEPSPEED, reason="DeepSpeed not installed (pip install -e .[deepspeed])")
def test_two_process_deepspeed_trains_checkpoints_resumes_and_matches_ddp(digits_shards, tmp_path):
    """One torchrun launch of 2 CPU processes runs four trainings in turn:
    split10 (ZeRO-1, 10 steps) -> split20 (the same run resumed from disk to 20 steps),
    whole (ZeRO-2, 20 steps in one go) and ddp (Accelerate DDP, 20 steps). Micro-batch
    accumulation is on and the clip norm is small, so the schedule's clipping (3x in
    warm-up) is active. All four must agree; both ranks must hold identical parameters."""
    out = tmp_path / "out"
    out.mkdir()
    runs = tmp_path / "runs"
    common = ["--dataset", "digits", "--shards_root", str(digits_shards), "--runs_root", str(runs),
              "--model", "ipvae", "--n_latents", "16", "--t_train", "2", "--batch_size", "10",
              "--grad_accum", "2", "--epochs", "20", "--log_every", "5", "--n_exp_refresh_every", "4",
              "--warmup_portion", "0.01", "--grad_clip", "1.0"]
    ds1 = ["--backend", "deepspeed", "--deepspeed_config", str(ZERO1)]
    ds2 = ["--backend", "deepspeed", "--deepspeed_config", str(ZERO2)]
    phases = [
        {"label": "split10", "argv": common + ds1 + ["--name", "split", "--max_steps", "10"]},
        {"label": "split20", "argv": common + ds1 + ["--name", "split", "--max_steps", "20"]},
        {"label": "whole", "argv": common + ds2 + ["--name", "whole", "--max_steps", "20"]},
        {"label": "ddp", "argv": common + ["--name", "ddp", "--max_steps", "20"]},
    ]
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"out": str(out), "phases": phases}))
    env = subprocess_env(DS_ACCELERATOR="cpu")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             str(REPO / "tests" / "scale_worker.py"), str(plan)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert "resuming" in log and "from step-00000010 (step 10)" in log

    def params(label: str, rank: int) -> dict[str, torch.Tensor]:
        saved = torch.load(out / f"{label}-rank{rank}.pt")
        return saved["params"]

    for label in ("split10", "split20", "whole", "ddp"):
        a, b = params(label, 0), params(label, 1)
        for name in a:
            torch.testing.assert_close(b[name], a[name], rtol=0, atol=0, msg=f"{label} {name}: ranks differ")
    reference = params("ddp", 0)
    for label in ("split20", "whole"):
        for name, value in params(label, 0).items():
            torch.testing.assert_close(value, reference[name], rtol=1e-5, atol=1e-6, msg=f"{label} {name}")
    moved = params("split10", 0)["W"] - params("split20", 0)["W"]
    assert moved.abs().max() > 1e-4, "the resumed run trained on"

    # the checkpoint: engine files from every rank, full weights, fondtrain's state
    step10 = runs / "split" / "ckpt" / "step-00000010"
    engine_files = sorted(p.name for p in (step10 / "deepspeed").iterdir())
    assert engine_files == ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt",
                            "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    assert (step10 / "random_states_0.pkl").is_file() and (step10 / "random_states_1.pkl").is_file()
    weights = load_file(str(step10 / run_files.MODEL_FILE))
    torch.testing.assert_close(weights["W"], params("split10", 0)["W"], rtol=0, atol=0)
    assert run_files.read_trainer_state(step10)["world_size"] == 2

    # one process cannot load 2-process ZeRO shards: one sentence, exit status 2
    single = subprocess.run([sys.executable, str(REPO / "launch" / "train.py"), *ds1, *common,
                             "--name", "split", "--max_steps", "30"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert single.returncode == 2, single.stdout[-2000:] + single.stderr[-2000:]
    error = [line for line in single.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and "ZeRO optimiser shards of 2 processes" in error[0], single.stderr[-2000:]
    # and a DeepSpeed checkpoint is not mistaken for an Accelerate one (in-process: cheap)
    from fondtrain.cli.flags import parse_args
    from fondtrain.train.trainer import train

    with pytest.raises(UserError, match="--backend deepspeed"):
        train(parse_args(common + ["--name", "split", "--max_steps", "30"]))

def test_missing_deepspeed_is_one_sentence(monkeypatch):
    """Without DeepSpeed installed, --backend deepspeed says how to install it."""
    import builtins

    from fondtrain.train.backends import DeepSpeedBackend

    real_import = builtins.__import__

    def no_deepspeed(name, *args, **kwargs):
        if name == "deepspeed" or name.startswith("deepspeed."):
            raise ImportError("No module named 'deepspeed'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_deepspeed)
    with pytest.raises(UserError, match=r"pip install -e \.\[deepspeed\]"):
        DeepSpeedBackend(_config(backend="deepspeed"))

