"""A run's schedules give each member its own schedule's values at every step."""

from __future__ import annotations

import pytest
import torch

from fondtrain.config.schedules import Schedule, Schedules

MEMBERS = [
    dict(),  # the defaults
    dict(lr=2e-3, lr_min=0.0, warmup_portion=0.05, grad_clip=3000.0, beta_outer=8.0, beta_min=1e-3,
         kl_const_portion=0.01, kl_anneal_portion=0.3, temp_start=2.0, temp_stop=0.05, temp_anneal_portion=0.2),
    dict(warmup_portion=0.0, kl_const_portion=0.0, kl_anneal_portion=0.0, temp_anneal_portion=0.0),
    dict(anneal_temperature=False, beta_outer=64.0, kl_anneal_portion=1.0),  # a Gaussian member
    dict(warmup_portion=1.0 / 400, kl_anneal_portion=1.0 / 400),  # one-step warm-up and anneal
]


@pytest.mark.parametrize("total_steps", [400, 1, 7])
def test_population_schedule_equals_scalar_schedules(total_steps):
    schedules = [Schedule(total_steps=total_steps, **m) for m in MEMBERS]
    population = Schedules(schedules)
    assert len(population.schedules) == len(MEMBERS)
    for step in range(total_steps):
        values = population.at(step)
        for i, schedule in enumerate(schedules):
            for name, method in (("lr", "learning_rate"), ("beta", "beta"), ("eps", "eps"),
                                 ("temp", "temp"), ("max_norm", "max_norm")):
                got = getattr(values, name)
                assert got.shape == (len(MEMBERS),) and got.dtype == torch.float64
                assert float(got[i]) == getattr(schedule, method)(step), (name, step, i)
            assert bool(values.warming_up[i]) == schedule.warming_up(step)


def test_members_follow_their_own_warm_up():
    schedules = [Schedule(total_steps=1000, warmup_portion=w) for w in (0.0, 0.01, 0.1)]
    values = Schedules(schedules).at(50)
    assert values.warming_up.tolist() == [False, False, True]
    assert values.max_norm.tolist() == [300.0, 300.0, 900.0]


def test_member_schedules_must_share_the_run_length():
    with pytest.raises(ValueError, match="same number of steps"):
        Schedules([Schedule(total_steps=10), Schedule(total_steps=11)])
