"""End to end: train a tiny iP-VAE on digits here, save it as a run, evaluate and compare."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from fondtrain.config import DataConfig, ModelConfig, RunConfig, save_yaml
from fondtrain.data.sources import load_source
from fondtrain.errors import UserError
from fondtrain.eval.compare import compare
from fondtrain.eval.evaluate import EvalOptions, evaluate
from fondtrain.model.vae import IterativeVAE
from fondtrain.stats import R2_LABELS
from tests.train_helpers import ACCELERATE_2PROC

FIGURES = ("convergence", "dictionary", "reconstructions", "latents", "tuning_bar", "tuning_grating",
           "gabor", "gabor_fits")
# Small but complete: every part of the evaluation runs, on a few hundred samples.
FAST = dict(n_steps=100, window=20, n_val=200, probe_steps=50, tuning_steps=50, n_orientations=8,
            probe_max_samples=600, batch_size=512)


def _train_tiny(n_iters: int = 150, batch: int = 64) -> tuple[IterativeVAE, RunConfig]:
    """iP-VAE with 32 latents on the 8x8 digits: Adamax, beta and eps warm up, temperature
    anneals, as the real schedule does (in miniature)."""
    torch.manual_seed(0)
    config = RunConfig(model=ModelConfig(preset="ipvae", input_dim=64, n_latents=32, t_train=8,
                                         beta_outer=4.0),
                       data=DataConfig(dataset="digits"))
    model = IterativeVAE(config.model)
    x = torch.from_numpy(load_source("digits").x_train)
    opt = torch.optim.Adamax(model.parameters(), lr=3e-2, weight_decay=3e-4)
    gen = torch.Generator().manual_seed(0)
    for i in range(n_iters):
        frac = i / n_iters
        warm = min(1.0, frac / 0.3)
        temp = max(0.05, 1.0 - frac / 0.5)
        idx = torch.randint(0, len(x), (batch,), generator=gen)
        out = model(x[idx], model.init_state(batch), 0, config.model.t_train, temp,
                    config.model.beta_outer * warm, warm)
        opt.zero_grad()
        out.loss.sum().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 300.0)
        opt.step()
    return model.eval(), config


def _save_run(run: Path, model: IterativeVAE, config: RunConfig, step: int = 1) -> Path:
    from safetensors.torch import save_file

    ckpt = run / "ckpt" / f"step-{step:08d}"
    ckpt.mkdir(parents=True)
    save_yaml(config, run / "config.yaml")
    save_yaml(config, ckpt / "config.yaml")
    save_file(model.state_dict(), str(ckpt / "model.safetensors"))
    (ckpt / "COMPLETE").write_text(f"{step}\n")
    return run


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    model, config = _train_tiny()
    return _save_run(tmp_path_factory.mktemp("runs") / "tiny", model, config)


@pytest.fixture(scope="module")
def evaluated(tiny_run: Path) -> dict:
    """The plain run's metrics (its one member is named "")."""
    return evaluate(tiny_run, options=EvalOptions(shards_root=str(tiny_run / "no-shards"), **FAST),
                    verbose=False)[""]


def _check_png(path: Path, min_side: int = 150) -> None:
    from matplotlib.image import imread

    image = imread(str(path))
    assert image.ndim == 3 and min(image.shape[:2]) >= min_side, (path, image.shape)
    assert image[..., :3].std() > 0.02, f"{path} is (nearly) constant"


def test_eval_writes_metrics_figures_and_tensorboard(tiny_run: Path, evaluated: dict):
    out = tiny_run / "eval"
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["final"] == evaluated["final"]
    for key in ("convergence", "final", "at_training_horizon", "probe", "tuning", "usage", "model",
                "dataset", "n_samples", "n_steps", "temp", "figures", "training_step", "gabor"):
        assert key in on_disk, key
    table = on_disk["convergence"]
    for key in ("step", "mse", "r2_mean", "r2_pooled", "r2_median", "frac_zeros",
                "lifetime_sparseness", "population_sparseness", "loss", "nll",
                "kl_reference", "kl_exact"):
        assert len(table[key]) == len(table["step"]), key
    assert table["step"][:5] == [1, 2, 3, 5, 7] and table["step"][-1] == 100 and 8 in table["step"]
    assert on_disk["temp"] == 0.0 and on_disk["n_samples"] == 200 and on_disk["training_step"] == 1
    assert on_disk["r2_definitions"] == R2_LABELS  # which R^2 is which, beside the numbers
    assert not on_disk["out_of_distribution"]
    for name in FIGURES:
        assert on_disk["figures"][name] == f"figures/{name}.png"
        _check_png(out / "figures" / f"{name}.png")
    assert (out / "tuning.npz").is_file()
    gabor = on_disk["gabor"]
    assert gabor["n_used"] == on_disk["usage"]["n_units"] - on_disk["usage"]["n_silent"]
    assert 0 <= gabor["n_good"] <= gabor["n_used"] and (out / "gabor.npz").is_file()
    assert list((tiny_run / "tb" / "eval").glob("events.out.tfevents.*"))


def test_trained_model_converges_and_is_sensible(evaluated: dict):
    table = evaluated["convergence"]
    loss = np.asarray(table["loss"])
    drop = loss[0] - loss.min()
    assert drop > 0.1 * abs(loss[0]), loss  # inference improves the free energy a lot
    running_min = np.minimum.accumulate(loss)
    # nearly monotone: 200 samples of noise, and this 150-iteration model drifts a little late
    assert np.all(loss <= running_min + 0.2 * drop), loss
    assert loss[-1] < loss[0] - 0.8 * drop
    final = evaluated["final"]
    assert final["r2_pooled"] > 0.3 and final["r2_median"] > 0.3
    assert 0.0 < final["frac_zeros"] < 1.0
    assert 0.0 < final["population_sparseness"] <= 1.0
    assert final["mse"] == pytest.approx(table["mse"][-1])


def test_probe_beats_chance_and_tuning_is_summarised(evaluated: dict):
    probe = evaluated["probe"]["digits"]
    assert probe["latent_acc"] > 0.3 and probe["pixel_acc"] > 0.8
    assert probe["n_train"] == 600 and probe["n_test"] == 360 and probe["n_classes"] == 10
    bars = evaluated["tuning"]["bar"]
    assert bars["n_units"] == 32 and bars["n_responsive"] > 0
    assert 0.0 <= bars["osi_median"] <= 1.0


def test_out_of_distribution_npy_patches_are_resized(tiny_run: Path, tmp_path: Path):
    """A 16x16 data set (an .npy file) on the 8x8 model: resized, written to eval-npy."""
    patches = np.random.default_rng(0).normal(size=(60, 16, 16)).astype(np.float32)
    np.save(tmp_path / "patches.npy", patches)
    opts = EvalOptions(dataset="npy", path=str(tmp_path / "patches.npy"), n_steps=20, probe=False,
                       tuning=False, figures=False, tensorboard=False, shards_root=str(tmp_path / "none"))
    metrics = evaluate(tiny_run, options=opts, verbose=False)[""]
    assert metrics["out_of_distribution"] and metrics["dataset"] == "npy"
    assert "16x16 -> 8x8" in metrics["data"]["resized"]
    assert (tiny_run / "eval-npy" / "metrics.json").is_file()


def test_compare_tables_and_plot(tiny_run: Path, evaluated: dict, tmp_path: Path):
    out = tmp_path / "cmp" / "compare.md"
    table = compare([tiny_run, tiny_run / "eval" / "metrics.json"], out, verbose=False)
    lines = out.read_text().strip().splitlines()
    assert len(lines) == 8 and lines[0].startswith("| run | step | preset") and lines[4] == ""
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    row = dict(zip(header, [cell.strip() for cell in lines[2].strip("|").split("|")], strict=True))
    gabor = evaluated["gabor"]
    assert row["step"] == str(evaluated["training_step"])
    assert row["Gabor good/used"] == f"{gabor['n_good']}/{gabor['n_used']}"
    assert row["Gabor median VE"] == f"{gabor['r2_median']:.4g}"
    assert [line.split(":")[0] for line in lines[5:]] == ["R2 paper", "R2 pooled", "R2 median"]
    assert "tiny" in table and "ipvae" in lines[2]
    _check_png(out.with_suffix(".png"))
    compare([tiny_run], tmp_path / "cmp.csv", verbose=False)
    assert (tmp_path / "cmp.csv").read_text().startswith("run,step,preset")
    from fondtrain.cli import main

    main(["compare", str(tiny_run), str(tiny_run), "--out", str(tmp_path / "cli.md")])
    assert (tmp_path / "cli.md").read_text().count("| tiny") == 2  # second one is tiny'
    assert (tmp_path / "cli.png").is_file()


def test_checkpoint_flag_and_errors(tiny_run: Path, tmp_path: Path, capsys):
    from fondtrain.cli import main

    ckpt = tiny_run / "ckpt" / "step-00000001"
    metrics = evaluate(checkpoint=ckpt / "model.safetensors", verbose=False,
                       options=EvalOptions(n_steps=5, probe=False, tuning=False, figures=False,
                                           tensorboard=False,
                                           out=str(tmp_path / "e"), shards_root=str(tmp_path)))[""]
    assert metrics["run"] == str(tiny_run) and (tmp_path / "e" / "metrics.json").is_file()
    # a reference .pt (what hadivafaii/IterativeVAE saves): no run config, digits by size
    from fondtrain.model.upstream import state_dict_to_upstream
    from fondtrain.runs.files import load_model

    model, _ = load_model(tiny_run)
    ref = tmp_path / "reference" / "IPVAE+Trainer-0300.pt"
    ref.parent.mkdir()
    torch.save({"model": state_dict_to_upstream(model)}, ref)
    metrics = evaluate(checkpoint=ref, verbose=False, options=EvalOptions(
        n_steps=5, probe=False, tuning=False, figures=False, tensorboard=False,
        shards_root=str(tmp_path)))[""]
    assert metrics["dataset"] == "digits" and metrics["trained_on"] is None
    assert (ref.parent / "eval" / "metrics.json").is_file()

    empty = tmp_path / "empty-run"
    empty.mkdir()
    with pytest.raises(UserError, match="no complete checkpoint"):
        evaluate(empty)
    with pytest.raises(UserError, match="path"):
        evaluate(tiny_run, options=EvalOptions(dataset="vh16", shards_root=str(tmp_path)))
    with pytest.raises(UserError, match="fondtrain eval"):
        compare([empty], tmp_path / "c.md")
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", str(empty)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    with pytest.raises(SystemExit):
        main(["eval", str(tiny_run), "--no_such_option", "3"])
    assert "no_such_option" in capsys.readouterr().err


def test_eval_command_shows_progress_when_piped(tiny_run: Path, tmp_path: Path, capsys):
    """`fondtrain eval` with stdout piped: a plain progress line per inference stage."""
    from fondtrain.cli import main

    main(["eval", str(tiny_run), "--out", str(tmp_path / "e"), "--n_steps", "10", "--window", "5", "--n_val", "50",
          "--notuning", "--nofigures", "--notensorboard", "--probe_max_samples", "100",
          "--shards_root", str(tmp_path)])
    out = capsys.readouterr().out
    assert re.search(r"^convergence: 10/10 steps \(100%\), \d+ s elapsed$", out, re.M), out
    assert re.search(r"^latent responses: (\d+)/\1 steps \(100%\), \d+ s elapsed$", out, re.M), out  # the probe


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_mnist_probe_from_idx_files(tiny_run: Path, tmp_path: Path):
    """--mnist FOLDER adds a probe on (fake) 28x28 MNIST, shrunk to the model's 8x8."""
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 200), ("t10k", 100)):
        labels = rng.integers(0, 4, n)
        images = rng.integers(0, 40, (n, 28, 28))
        for i, label in enumerate(labels):  # the class is the bright quadrant
            r, c = divmod(int(label), 2)
            images[i, r * 14:(r + 1) * 14, c * 14:(c + 1) * 14] += 200
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", labels)
    opts = EvalOptions(n_steps=10, window=5, mnist=str(tmp_path), tuning=False, figures=False,
                       tensorboard=False, n_val=50, out=str(tmp_path / "e"), shards_root=str(tmp_path))
    probe = evaluate(tiny_run, options=opts, verbose=False)[""]["probe"]
    assert set(probe) == {"digits", "mnist"}
    assert probe["mnist"]["n_train"] == 200 and probe["mnist"]["n_classes"] == 4
    assert "28x28 -> 8x8" in probe["mnist"]["data"] and probe["mnist"]["pixel_acc"] > 0.9


@pytest.mark.slow
def test_data_parallel_eval_with_accelerate_launch(tiny_run: Path, evaluated: dict, tmp_path: Path):
    """Two CPU processes under `accelerate launch` split the rows and sum / gather metrics."""
    import os
    import subprocess

    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    out = tmp_path / "ddp"
    cmd = [*ACCELERATE_2PROC, "-m", "fondtrain.cli", "eval", str(tiny_run), "--out", str(out), "--notensorboard",
           "--shards_root", str(tiny_run / "no-shards"), "--nofigures",
           *[f"--{k}={v}" for k, v in FAST.items()]]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_processes"] == 2 and metrics["n_samples"] == evaluated["n_samples"] == 200
    assert metrics["probe"]["digits"]["n_train"] == 600 and metrics["tuning"]["bar"]["n_units"] == 32

    # The same two parts with the same per-rank seeds in this process, summed by hand,
    # give the table the two processes reduced with Accelerate.
    from fondtrain.eval.convergence import accumulate_convergence, rank_seed
    from fondtrain.eval.data import load_eval_data
    from fondtrain.eval.dist import Ranks
    from fondtrain.runs.files import load_model

    model, _ = load_model(tiny_run)
    x = torch.from_numpy(load_eval_data("digits", shards_root=None).x_val[:200])
    steps = metrics["convergence"]["step"]
    parts = [accumulate_convergence(model, x[r * 100:(r + 1) * 100], FAST["n_steps"], 0.0, 4.0, steps,
                                    FAST["batch_size"], seed=rank_seed(0, r))[0] for r in (0, 1)]
    (table,) = parts[0].merged(parts[1]).tables(Ranks("cpu"), 64)
    for key, values in metrics["convergence"].items():
        np.testing.assert_allclose(values, table[key], rtol=1e-9, atol=1e-12, err_msg=key)
