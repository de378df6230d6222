"""`fondtrain bench` runs end to end on tiny sizes and reports every figure (no timing
assertions: the numbers depend on the machine): float32 and bf16 cycles beside their
matmul limits, the bf16 precision check, and the projection of the paper's run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fondtrain import bench
from fondtrain.bench import candidates, harness, jobs, projection, report
from fondtrain.bench.settings import (
    NATURAL16_N_TRAIN,
    TRAINED_N_EXP,
    bf16_is_fast,
    default_precisions,
    paper_n_train,
    use_checkpoint,
)
from fondtrain.config import PRESETS, ModelConfig, RunConfig
from fondtrain.config.schedules import schedule_for
from fondtrain.stats import log_grid

TINY = dict(batch_size=8, input_dim=16, n_latents=12, t_train=3, eval_steps=7, repeats=1, n_exp=4,
            scaling=False, processes=(), memory=False)


def test_bench_reports_every_figure_on_tiny_sizes(tmp_path):
    s = bench.BenchSettings(**TINY, n_train=1000, epochs=2, precisions=("fp32", "bf16"))
    out = tmp_path / "bench.json"
    lines: list[str] = []
    results = bench.run(s, str(out), log=lines.append)
    assert json.loads(out.read_text())["speed"].keys() == set(PRESETS)
    assert results["precisions"] == ["fp32", "bf16"] and "bf16" in results["precision_note"]
    for preset in PRESETS:
        row = results["speed"][preset]
        for key in ("fondtrain_cycle", "limit_cycle", "fondtrain_eval", "limit_eval",
                    "fondtrain_eval_log_grid", "fondtrain_samples_per_s", "projected_run_hours",
                    "fondtrain_cycle_bf16", "limit_cycle_bf16", "bf16_cycle_speedup", "bf16_limit_speedup",
                    "fondtrain_cycle_bf16_over_limit"):
            assert row[key] > 0, key
        assert row["projected_run_hours"] == 2 * 1000 / row["fondtrain_samples_per_s"] / 3600
        assert row["bf16_cycle_speedup"] == row["fondtrain_cycle"] / row["fondtrain_cycle_bf16"]
        assert results["precision_check"][preset]["bf16"]["passes"], results["precision_check"][preset]
        entry = results["projection"]["presets"][preset]
        assert set(entry["precisions"]) == {"fp32", "bf16"} and entry["best"] in ("fp32", "bf16")
        assert math.isclose(sum(w for _, w in entry["temperatures"]), 1.0)
        for r in entry["precisions"].values():  # hours = steps x the weighted mean cycle
            mean = sum(w * r["cycle_at_temp_s"][f"{t:g}"] for t, w in entry["temperatures"])
            assert math.isclose(r["cycle_s"], mean) and math.isclose(r["hours"], 2 * 125 * mean / 3600)
    assert results["projection"]["run"] == {
        "dataset": "natural16", "n_train": 1000, "n_train_source": "--n_train", "epochs": 2, "batch_size": 8,
        "steps_per_epoch": 125, "total_steps": 250, "steps": 250}
    assert any("ipvae: cycle" in line for line in lines)
    assert any("ipvae bf16 (autocast): cycle" in line for line in lines)
    assert any("LOWER BOUND" in line for line in lines)  # a fresh model's projection says so


def test_markdown_has_the_bf16_rows_the_check_and_the_projection(tmp_path):
    s = bench.BenchSettings(**TINY, presets=("ipvae",), n_train=1000, epochs=2, precisions=("bf16",))
    out = tmp_path / "bench.md"
    bench.run(s, str(out), log=lambda _: None)
    text = out.read_text()
    assert "precisions fp32, bf16 (as asked" in text  # float32 is always the baseline
    assert "| ipvae, bf16 |" in text and "float32 / bf16: cycle" in text
    assert "| preset | precision | loss rel. difference |" in text
    rows = [line for line in text.splitlines() if line.startswith("| ipvae | fp32 | 1: ")]
    assert len(rows) == 1 and "0.505: " in rows[0] and "0.01: " in rows[0]
    assert "LOWER BOUND" in text and "250 steps" in text


def test_the_projection_reads_natural16s_manifest(tmp_path):
    assert paper_n_train(tmp_path) == (NATURAL16_N_TRAIN, "natural16's documented default (shards not built)")
    folder = tmp_path / "natural16"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"splits": {"train": {"n_samples": 99_800}}}))
    n, source = paper_n_train(tmp_path)
    assert n == 99_800 and source.endswith("manifest.json")
    run = projection.paper_run(bench.BenchSettings(shards_root=str(tmp_path)))
    assert run["steps_per_epoch"] == 499 and run["total_steps"] == 300 * 499 == run["steps"]
    # the paper's run: 100k patches at batch 200 for 300 epochs is 150,000 steps
    assert projection.paper_run(bench.BenchSettings(shards_root=str(tmp_path / "none")))["total_steps"] == 150_000
    cut = projection.paper_run(bench.BenchSettings(shards_root=str(tmp_path / "none"), projection_steps=5000))
    assert cut["steps"] == 5000 and cut["total_steps"] == 150_000


@pytest.mark.parametrize(("steps", "rtol"), [(150_000, 2e-5), (5000, 2e-5), (75_000, 2e-5), (100_000, 2e-5),
                                             (7, 2e-2)])
def test_temperature_nodes_give_the_mean_over_the_schedule(steps, rtol):
    """The nodes' weighted mean of a cost quadratic in the temperature equals its mean over
    the projected steps of the real schedule (Simpson's rule is exact for the integral; the
    steps are discrete, which matters only for a tiny run)."""
    total = 150_000 if steps != 7 else 10
    nodes = projection.temperature_nodes("ipvae", total, steps)
    schedule = schedule_for(RunConfig(model=ModelConfig(preset="ipvae")), total)

    def cost(temp):
        return 1.0 + 0.7 * temp - 0.4 * temp**2

    exact = sum(cost(schedule.temp(i)) for i in range(steps)) / steps
    assert math.isclose(sum(w for _, w in nodes), 1.0)
    assert math.isclose(sum(w * cost(t) for t, w in nodes), exact, rel_tol=rtol)
    assert projection.temperature_nodes("igvae", total, steps) == [(1.0, 1.0)]


def test_the_projection_model_is_trained_or_has_a_trained_n_exp():
    s = bench.BenchSettings(**TINY)
    model = projection.projection_model("ipvae", s, harness.device())
    assert model.n_exp.tolist() == [list(TRAINED_N_EXP[:3])]
    assert model.n_exp_at(2) == [TRAINED_N_EXP[2]]  # the host copy follows
    assert projection.trained_n_exp(20)[-4:] == [TRAINED_N_EXP[-1]] * 4


def test_the_goal_is_the_paper_runs_at_vh16_sizes():
    run = {"steps": 150_000, "total_steps": 150_000}
    row = {"hours": 2.5}
    goal = projection.goal_for("ipvae", bench.BenchSettings(), run, row, threads=2)
    assert goal["met"] and math.isclose(goal["cycle_s"], 0.072) and goal["threads"] == 2
    assert not projection.goal_for("ipvae", bench.BenchSettings(), run, {"hours": 3.5}, 2)["met"]
    assert projection.goal_for("ipvae", bench.BenchSettings(n_latents=12), run, row, 2) is None
    assert projection.goal_for("igvae", bench.BenchSettings(), run, row, 2) is None
    assert projection.goal_for("ipvae", bench.BenchSettings(), {"steps": 5000, "total_steps": 150_000}, row, 2) is None


def test_a_timed_checkpoint_stays_the_model_it_was():
    """A trained model's cycles run their optimiser step at learning rate 0 (the same work),
    so that every round times that model; a fresh model's cycles train it, as before."""
    device = harness.device()

    def parameters_after_two_cycles(s, **kw):
        model = candidates.fondtrain_model("ipvae", s, None, device)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        run = candidates.fondtrain_cycle(model, candidates.inputs(s, device), s, **kw)
        results = [run(), run()]
        assert all(torch.isfinite(r.grad_norm).all() and (r.grad_norm > 0).all() for r in results)  # backward ran
        return before, model.state_dict()

    fresh = bench.BenchSettings(**TINY)
    for settings, kw, kept in ((fresh, {}, False), (fresh, {"keep_model": True}, True),
                               (bench.BenchSettings(**TINY, checkpoint="runs/some-run"), {}, True)):
        before, after = parameters_after_two_cycles(settings, **kw)
        same = all(torch.equal(before[k], after[k]) for k in ("W", "log_bias", "log_lr"))
        assert same == kept, (settings.checkpoint, kw)


def test_bf16_limit_and_cycle_run_in_bf16():
    s = bench.BenchSettings(**TINY)
    device = harness.device()
    candidates.matmul_limit(4, 5, 6, 2, 3, device, "bf16")()
    model = candidates.fondtrain_model("igvae", s, None, device)
    result = candidates.fondtrain_cycle(model, candidates.inputs(s, device), s, precision="bf16")()
    assert result.out.last_x_hat.dtype == torch.bfloat16  # the decoder product ran under autocast
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert isinstance(bf16_is_fast(device), bool)
    assert default_precisions(device) == (("fp32", "bf16") if bf16_is_fast(device) else ("fp32",))


def test_precision_check_compares_the_same_noise(monkeypatch):
    s = bench.BenchSettings(**TINY)
    device = harness.device()
    same = candidates.precision_check("ipvae", s, device, "fp32")  # float32 against itself
    assert same["loss_rel_diff"] == 0 and same["grad_rel_diff"] == 0 and same["passes"]
    assert same["grad_noise_rel"] > 0  # two noise draws do differ
    r = candidates.precision_check("igrelu", s, device, "bf16")
    assert 0 < r["grad_rel_diff"] < r["noise_share"] * r["grad_noise_rel"] and r["passes"]
    monkeypatch.setattr(candidates, "NOISE_SHARE", 0.0)
    assert not candidates.precision_check("igrelu", s, device, "bf16")["passes"]
    assert "FAILS" in report.check_text({**r, "passes": False})


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
    model.set_n_exp([[3.0, 0.2]])  # n_exp = quantiles 9 and 2 (one member)
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
    # the projection times the trained model, and says so
    assert results["projection"]["model"] == "checkpoint" and "trained: the checkpoint" in text
    assert "LOWER BOUND" not in text


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
