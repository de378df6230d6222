"""`fondtrain bench` runs end to end on tiny sizes and reports every figure (no timing
assertions: the numbers depend on the machine)."""

from __future__ import annotations

import json

from fondtrain import bench
from fondtrain.bench import candidates, harness, jobs
from fondtrain.bench.settings import use_checkpoint
from fondtrain.config import PRESETS
from fondtrain.stats import log_grid


def test_bench_reports_every_figure_on_tiny_sizes(tmp_path):
    s = bench.BenchSettings(batch_size=8, input_dim=16, n_latents=12, t_train=3, eval_steps=7,
                            repeats=1, n_exp=4, scaling=False, processes=(), memory=False,
                            n_train=1000, epochs=2)
    out = tmp_path / "bench.json"
    lines: list[str] = []
    results = bench.run(s, str(out), log=lines.append)
    assert json.loads(out.read_text())["speed"].keys() == set(PRESETS)
    for preset in PRESETS:
        row = results["speed"][preset]
        for key in ("fondtrain_cycle", "limit_cycle", "fondtrain_eval", "limit_eval",
                    "fondtrain_eval_log_grid", "fondtrain_samples_per_s", "projected_run_hours"):
            assert row[key] > 0, key
        assert row["projected_run_hours"] == 2 * 1000 / row["fondtrain_samples_per_s"] / 3600
    assert any("ipvae: cycle" in line for line in lines)


def test_log_grid():
    """The steps the log-grid evaluation records (fondtrain.stats.log_grid, SPEC 7)."""
    assert log_grid(1000)[:8] == [1, 2, 3, 5, 7, 10, 20, 30]
    assert log_grid(1000)[-1] == 1000 and log_grid(12) == [1, 2, 3, 5, 7, 10, 12]


def test_memory_job_counts_saved_tensors():
    s = bench.BenchSettings(batch_size=8, input_dim=16, n_latents=12, t_train=3, n_exp=4)
    r = jobs.memory_job("fondtrain", "ipvae", s)
    assert r["saved_mb"] > 0 and r["peak_mb"] >= 0


def test_bench_times_a_checkpoint_at_its_sizes(tmp_path):
    """--checkpoint: the trained model's preset, sizes and n_exp, as Markdown tables."""
    from safetensors.torch import save_file

    from fondtrain.config import ModelConfig, RunConfig, save_yaml
    from fondtrain.model.vae import IterativeVAE

    config = RunConfig(model=ModelConfig(preset="ipvae", input_dim=9, n_latents=5, t_train=2))
    model = IterativeVAE(config.model)
    model.set_n_exp([3.0, 0.2])  # n_exp = quantiles 9 and 2
    ckpt = tmp_path / "run" / "ckpt" / "step-00000001"
    ckpt.mkdir(parents=True)
    save_yaml(config, tmp_path / "run" / "config.yaml")
    save_file(model.state_dict(), str(ckpt / "model.safetensors"))
    (ckpt / "COMPLETE").write_text("1\n")
    s = bench.BenchSettings(batch_size=4, eval_steps=3, repeats=1, n_train=100, epochs=1,
                            checkpoint=str(tmp_path / "run"), train_temp=0.05)
    out = tmp_path / "bench.md"
    lines: list[str] = []
    results = bench.run(s, str(out), log=lines.append)
    assert list(results["speed"]) == ["ipvae"]
    assert results["settings"]["n_latents"] == 5 and results["settings"]["input_dim"] == 9
    assert "scaling" not in results and "processes" not in results and "memory_mb" not in results
    ours = candidates.paired_models("ipvae", use_checkpoint(s), harness.device())[0]
    assert ours.n_exp.tolist() == model.n_exp.tolist() and ours.training
    text = out.read_text()
    assert "K=5" in text and "temperature 0.05" in text and "| ipvae |" in text


def test_bracketed_ratio_spans_the_batched_call_with_the_singles():
    """Each round runs n // 2 singles, the batched call, the other singles, and the ratio
    is the batched call's CPU time over the round's singles' sum."""
    calls: list[str] = []

    def single():
        calls.append("s")
        sum(range(200_000))

    def batched():
        calls.append("B")
        sum(range(1_200_000))  # 2x the work of 3 singles

    r = harness.bracketed_ratio(single, batched, 3, repeats=2)
    assert "".join(calls) == "sB" + "sBss" * 2  # warm-up, then bracketed rounds
    assert r["ratio_min"] <= r["ratio"] <= r["ratio_max"]
    assert 1.4 < r["ratio"] < 2.8 and r["batched_s"] > 2 * r["single_s"] > 0
