"""Feeders: stationary, jitter (OU drift, reflect-pad and crop), rotate (bilinear)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fondtrain.data.feeders import FEEDERS, JitterFeeder, make_feeder
from fondtrain.errors import UserError


@pytest.fixture
def x():
    return torch.randn(6, 256, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", list(FEEDERS))
def test_shapes_length_and_device(x, name):
    feeder = make_feeder(name, x, n_steps=7, seed=1)
    assert len(feeder) == 7
    frames = list(feeder)
    assert len(frames) == 7
    for f in frames:
        assert f.shape == (6, 256) and f.dtype == x.dtype and f.device == x.device
    with pytest.raises(IndexError):
        feeder[7]


def test_stationary_is_identity(x):
    feeder = make_feeder("stationary", x, 5)
    assert all(torch.equal(feeder[t], x) for t in range(5))


def test_jitter_is_deterministic_given_seed_and_moves(x):
    a = make_feeder("jitter", x, 20, seed=3)
    b = make_feeder("jitter", x, 20, seed=3)
    c = make_feeder("jitter", x, 20, seed=4)
    assert all(torch.equal(a[t], b[t]) for t in range(20))
    assert torch.equal(a[0], x)  # the walk starts at the centre
    assert any(not torch.equal(a[t], x) for t in range(20))
    assert not torch.equal(a.shifts, c.shifts)
    assert a.shifts.abs().max() <= 4  # max_shift = 16 // 4


def test_jitter_with_zero_noise_is_identity(x):
    feeder = make_feeder("jitter", x, 10, seed=5, diffusion=0.0)
    assert all(torch.equal(feeder[t], x) for t in range(10))


def test_jitter_crops_the_reflect_padded_image(x):
    feeder = make_feeder("jitter", x, 12, seed=2, diffusion=3.0, max_shift=5)
    padded = F.pad(x.reshape(6, 1, 16, 16), (5, 5, 5, 5), mode="reflect")[:, 0]
    for t in range(12):
        for b in range(6):
            dy, dx = feeder.shifts[t, b].tolist()
            want = padded[b, 5 + dy : 5 + dy + 16, 5 + dx : 5 + dx + 16].reshape(-1)
            assert torch.equal(feeder[t][b], want)


def test_jitter_restoring_force_pulls_back():
    x = torch.zeros(400, 256)
    free = JitterFeeder(x, 60, seed=0, diffusion=1.0, restoring=0.0, max_shift=15)
    pulled = JitterFeeder(x, 60, seed=0, diffusion=1.0, restoring=0.5, max_shift=15)
    spread_free = free.shifts[-1].float().pow(2).mean()
    spread_pulled = pulled.shifts[-1].float().pow(2).mean()
    # OU stationary variance 1 / (1 - 0.5^2) = 1.33 per axis vs 59 for the free walk
    assert spread_pulled < 3.0 < 20.0 < spread_free


def test_rotate_zero_and_full_turn_are_identity(x):
    still = make_feeder("rotate", x, 3, degrees_per_step=0.0)
    assert all(torch.allclose(still[t], x, atol=1e-5) for t in range(3))
    turn = make_feeder("rotate", x, 2, degrees_per_step=360.0)
    assert torch.allclose(turn[1], x, atol=1e-4)
    assert torch.allclose(make_feeder("rotate", x, 1)[0], x, atol=1e-5)


def test_rotate_quarter_turn_matches_rot90(x):
    feeder = make_feeder("rotate", x, 5, degrees_per_step=90.0)
    img = x.reshape(6, 16, 16)
    for t in range(5):
        want = torch.rot90(img, k=t, dims=(1, 2)).reshape(6, 256)
        assert torch.allclose(feeder[t], want, atol=1e-4), t


def test_rotate_random_start_depends_on_seed(x):
    a = make_feeder("rotate", x, 2, seed=1, random_start=True)
    b = make_feeder("rotate", x, 2, seed=1, random_start=True)
    c = make_feeder("rotate", x, 2, seed=2, random_start=True)
    assert torch.equal(a[1], b[1]) and not torch.equal(a[1], c[1])
    assert torch.allclose(a.angles(1) - a.angles(0), torch.full((6,), 8.0, dtype=torch.float64))


def test_bad_feeder_requests():
    with pytest.raises(UserError, match="unknown feeder 'shake'"):
        make_feeder("shake", torch.zeros(2, 16), 3)
    with pytest.raises(UserError, match="has no option speed"):
        make_feeder("rotate", torch.zeros(2, 16), 3, speed=2)
    with pytest.raises(UserError, match="M = 15 is not a square"):
        make_feeder("jitter", torch.zeros(2, 15), 3)
    with pytest.raises(UserError, match=r"\[B, M\] tensor"):
        make_feeder("stationary", torch.zeros(16), 3)
    assert len(make_feeder("stationary", torch.zeros(2, 15), 3)) == 3
