"""benchmarks/projection_check.py: the projected time of a run's steps from its timed
cycles, its clock from TensorBoard (a stop and resume left out), and a real tiny run."""

from __future__ import annotations

import importlib.util

import pytest

from tests.train_helpers import REPO, tiny_config


def _load():
    spec = importlib.util.spec_from_file_location("projection_check", REPO / "benchmarks" / "projection_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_projected_seconds_interpolate_between_timed_steps():
    check = _load()
    costs = [(0, 1.0), (100, 3.0)]
    assert check.projected_seconds(costs, 0, 100) == pytest.approx(sum(1 + 2 * s / 100 for s in range(1, 101)))
    assert check.projected_seconds(costs, 100, 150) == pytest.approx(50 * 3.0)  # constant after the last
    assert check.projected_seconds([(50, 2.0)], 0, 10) == pytest.approx(20.0)  # constant before the first


def test_the_clock_leaves_out_a_stop_and_resume():
    check = _load()
    points = [(s, s * 0.1) for s in range(0, 500, 100)] + [(s, 1000 + s * 0.1) for s in range(500, 1600, 100)]
    stretch, gaps = check.longest_stretch(points)
    assert gaps == 1 and stretch[0][0] == 500 and stretch[-1][0] == 1500


@pytest.mark.slow
def test_a_tiny_run_is_checked_end_to_end(digits_shards, tmp_path, capsys):
    from fondtrain.train.trainer import train

    result = train(tiny_config(digits_shards, tmp_path / "runs", "proj", max_steps=40, ckpt_every=20, log_every=5))
    status = _load().main([str(result.run_dir), "--threads", "1", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "timing the cycles of steps 0, 20, 40 (fp32" in out and "| 20 |" in out
    assert "steps 5-40: measured" in out and "measured / projected" in out
    assert status in (0, 1)  # a tiny run is mostly overhead: no claim about the ratio here
