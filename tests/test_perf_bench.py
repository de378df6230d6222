"""`fondtrain bench` runs end to end on tiny sizes and reports every figure (no timing
assertions: the numbers depend on the machine)."""

from __future__ import annotations

import json

from fondtrain import bench


def test_bench_reports_every_figure_on_tiny_sizes(tmp_path):
    s = bench.BenchSettings(batch_size=8, input_dim=16, n_latents=12, t_train=3, eval_steps=7,
                            repeats=1, n_exp=4, scaling=False, processes=(), memory=False,
                            n_train=1000, epochs=2)
    out = tmp_path / "bench.json"
    lines: list[str] = []
    results = bench.run(s, str(out), log=lines.append)
    assert json.loads(out.read_text())["speed"].keys() == set(bench.PRESETS)
    for preset in bench.PRESETS:
        row = results["speed"][preset]
        for key in ("fondtrain_cycle", "limit_cycle", "fondtrain_eval", "limit_eval",
                    "fondtrain_eval_log_grid", "fondtrain_samples_per_s", "projected_run_hours"):
            assert row[key] > 0, key
        assert row["projected_run_hours"] == 2 * 1000 / row["fondtrain_samples_per_s"] / 3600
    assert any("ipvae: cycle" in line for line in lines)


def test_log_grid():
    assert bench.log_grid(1000)[:8] == [1, 2, 3, 5, 7, 10, 20, 30]
    assert bench.log_grid(1000)[-1] == 1000 and bench.log_grid(12) == [1, 2, 3, 5, 7, 10, 12]


def test_memory_job_counts_saved_tensors():
    s = bench.BenchSettings(batch_size=8, input_dim=16, n_latents=12, t_train=3, n_exp=4)
    r = bench._memory_job("fondtrain", "ipvae", s)
    assert r["saved_mb"] > 0 and r["peak_mb"] >= 0
