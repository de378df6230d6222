"""Schedules equal the reference trainer's, step for step (tests/data/schedules.npz)."""

import numpy as np
import pytest

from fondtrain.config.schedules import Schedule, Schedules
from tests.golden import DATA


@pytest.mark.parametrize("preset,beta_outer,poisson", [("ipvae", 24.0, True), ("igvae", 8.0, False)])
def test_schedules_match_reference(preset, beta_outer, poisson):
    ref = np.load(DATA / "schedules.npz")
    n = int(ref["meta/epochs"]) * int(ref["meta/batches_per_epoch"])
    schedule = Schedule(total_steps=n, lr=5e-3, grad_clip=300.0, beta_outer=beta_outer,
                        anneal_temperature=poisson)
    values = [Schedules([schedule]).at(g) for g in range(n)]
    for key, attr in [("beta", "beta"), ("eps", "eps"), ("temp", "temp"),
                      ("lr", "lr"), ("max_norm", "max_norm")]:
        ours = np.array([float(getattr(v, attr)[0]) for v in values])
        np.testing.assert_allclose(ours, ref[f"{preset}/{key}"], rtol=1e-6, atol=1e-9,
                                   err_msg=key)


def test_schedule_shape_on_a_long_run():
    s = Schedule(total_steps=100_000, lr=5e-3, beta_outer=24.0)
    assert s.learning_rate(0) == 0.0 and s.warming_up(0) and s.max_norm(0) == 900.0
    assert s.beta(99) == pytest.approx(1e-4)
    assert s.beta(10_100) == 24.0 and s.eps(10_100) == 1.0
    assert s.temp(50_000) == pytest.approx(0.01)
    assert s.temp(25_000) == pytest.approx(0.505, abs=1e-3)
    lrs = [s.learning_rate(g) for g in range(500, 100_000, 997)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))
    assert s.learning_rate(99_999) == pytest.approx(1e-5, rel=1e-3)
