"""The C kernel of the eager CPU relaxed Poisson sampler (fondtrain/model/kernels):
its numbers against a plain float64 loop over the hashed draws, its early exit, threads,
gradients, and the build: cache, and the torch code where no kernel can be built."""

from __future__ import annotations

import math
import os

import pytest
import torch

from fondtrain.model import relaxed_poisson as R
from fondtrain.model.kernels import build
from fondtrain.model.kernels import sampler as kernel
from fondtrain.model.random_streams import draw_keys, hashed_exponential

FLOAT32_EPS = torch.finfo(torch.float32).eps
ZERO_BELOW = R.sigmoid_zero_below(torch.float32)
# |kernel - float64 loop| <= TOL max(1, max |float64 loop|), z and dz/du alike: float32
# rounding of up to 64 arrival times S_j, amplified by 1 / tau in a_j = (1 - S_j / r) / tau
# (the plain float32 torch expression is as far off: 1.6e-5 at worst in these cases).
TOL = 2e-5

needs_kernel = pytest.mark.skipif(not kernel.available(), reason="no C compiler: the kernel is not built")


def plain_float64(u: torch.Tensor, temp: float, n_exp: int, keys: torch.Tensor):
    """z and dz/du [1, ...] of one member by the SPEC's formulas in float64, arrival by
    arrival over every draw (no early exit), from the same float32 Exp(1) draws."""
    return plain_float64_sums(u, temp, [n_exp], keys)[n_exp]


def plain_float64_sums(u: torch.Tensor, temp: float, lengths, keys: torch.Tensor) -> dict:
    """`plain_float64` for each n_exp of `lengths` (one loop: the sums after n arrivals)."""
    exp_u = torch.exp(u.double())
    rate = exp_u + FLOAT32_EPS
    k = 1.0 / (rate * temp)
    arrival, z, slope = torch.zeros_like(rate), torch.zeros_like(rate), torch.zeros_like(rate)
    sums = {}
    for d in range(max(lengths) + 1):
        if d in lengths:
            sums[d] = (z, slope * k * exp_u / rate)
        arrival = arrival + hashed_exponential(u.float(), keys, d).double()
        s = torch.sigmoid(1.0 / temp - arrival * k)
        z = z + s
        slope = slope + s * (1.0 - s) * arrival
    return sums


def _log_rates(shape, low: float, seed: int) -> torch.Tensor:
    """log-rates from log(low) to log(low) + 3 (rates low .. 20 low)."""
    return (math.log(low) + 3.0 * torch.rand(shape, generator=torch.Generator().manual_seed(seed))).float()


def _close(actual: torch.Tensor, expected: torch.Tensor, tol: float = TOL) -> None:
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    torch.testing.assert_close(actual.double() / scale, expected / scale, rtol=0, atol=tol)


@needs_kernel
@pytest.mark.parametrize("low", [1e-4, 0.05, 1.5, 30.0])
@pytest.mark.parametrize("temp", [1.0, 0.3, 0.05, 0.01])
def test_kernel_equals_the_plain_float64_loop(low: float, temp: float):
    """Values and dz/du for n_exp 0..64 on odd sizes (blocks and vector loops with
    remainders), two members at two temperatures with their own keys."""
    u = _log_rates((2, 37, 61), low, seed=int(low * 1000) + int(temp * 100))
    keys = torch.tensor([[7, 2**31 - 1], [123456789, 0]])
    temps = [temp, 0.5 * temp]
    lengths = (0, 1, 2, 9, 64)
    plain = [plain_float64_sums(u[i:i + 1], temps[i], lengths, keys[i:i + 1]) for i in range(2)]
    for n_exp in lengths:
        z, dz = kernel.relaxed_poisson_kernel(u, temps, [n_exp, n_exp], keys, ZERO_BELOW, True)
        assert z.shape == u.shape and z.dtype == torch.float32
        for i in range(2):
            z_ref, dz_ref = plain[i][n_exp]
            _close(z[i:i + 1], z_ref)
            _close(dz[i:i + 1], dz_ref)
        if n_exp == 0:
            assert torch.equal(z, torch.zeros_like(u)) and torch.equal(dz, torch.zeros_like(u))


@needs_kernel
@pytest.mark.parametrize("temp", [1.0, 0.05])
def test_kernel_early_exit_changes_no_bit(temp: float):
    """Stopping an entry once a_j < zero_below skips terms that are exactly 0: the kernel
    told never to stop (zero_below -inf: every arrival of every entry) gives the same
    bits. On a sparse posterior most entries stop at their first arrival."""
    u = torch.where(torch.rand(3, 50, 70, generator=torch.Generator().manual_seed(1)) < 0.8,
                    _log_rates((3, 50, 70), 1e-3, seed=2), _log_rates((3, 50, 70), 0.5, seed=3))
    keys = draw_keys([torch.Generator().manual_seed(s) for s in range(3)], 3)
    lengths = [40, 13, 1]
    z, dz = kernel.relaxed_poisson_kernel(u, [temp] * 3, lengths, keys, ZERO_BELOW, True)
    z_all, dz_all = kernel.relaxed_poisson_kernel(u, [temp] * 3, lengths, keys, -math.inf, True)
    assert torch.equal(z, z_all) and torch.equal(dz, dz_all)
    # and without the derivative, the same sample
    z_only, none = kernel.relaxed_poisson_kernel(u, [temp] * 3, lengths, keys, ZERO_BELOW, False)
    assert none is None and torch.equal(z_only, z)


@needs_kernel
@pytest.mark.parametrize("temp", [1.0, 0.5])
def test_kernel_tail_exit_on_a_dense_posterior_changes_no_bit(temp: float):
    """A trained model's posterior at high temperature: rates 0.2-4, where no term is
    exactly 0 before n_exp and the entries stop once their terms no longer change their
    float32 sums (a_j < -1): the same bits as every arrival of every entry."""
    u = _log_rates((2, 64, 96), 0.2, seed=12)
    keys = draw_keys([torch.Generator().manual_seed(s) for s in (4, 5)], 2)
    for lengths in ([64, 64], [32, 9]):
        z, dz = kernel.relaxed_poisson_kernel(u, [temp] * 2, lengths, keys, ZERO_BELOW, True)
        z_all, dz_all = kernel.relaxed_poisson_kernel(u, [temp] * 2, lengths, keys, -math.inf, True)
        assert torch.equal(z, z_all) and torch.equal(dz, dz_all)
    # the case is one where the tail exit acts: half the entries' last 32 terms change nothing
    sums = [plain_float64_sums(u[:1], temp, [32, 64], keys[:1])[n][0] for n in (32, 64)]
    assert float(((sums[1] - sums[0]).abs() < 1e-8).float().mean()) > 0.5


@needs_kernel
def test_kernel_gives_the_same_numbers_on_any_thread_count():
    """Threads take disjoint ranges of entries, each entry's numbers are its own."""
    u = _log_rates((1, 200, 512), 0.01, seed=4)  # enough entries for 2 threads
    keys = torch.tensor([[11, 12]])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = kernel.relaxed_poisson_kernel(u, [0.3], [12], keys, ZERO_BELOW, True)
        torch.set_num_threads(2)
        two = kernel.relaxed_poisson_kernel(u, [0.3], [12], keys, ZERO_BELOW, True)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


@needs_kernel
@pytest.mark.parametrize("temp", [1.0, 0.1])
def test_sampler_kernel_and_torch_code_draw_the_same_numbers(monkeypatch, temp: float):
    """relaxed_poisson on float32 (the kernel) and with the kernel turned off (the torch
    code, `_sum_arrivals` over the same hashed stream) from the same generator state:
    values and gradients to float32 rounding; both leave the generator where the other
    does."""
    u = _log_rates((2, 30, 41), 0.02, seed=5)
    weights = torch.randn(u.shape, generator=torch.Generator().manual_seed(6))
    results = []
    for available in (True, False):
        monkeypatch.setattr(kernel, "available", lambda a=available: a)
        gens = [torch.Generator().manual_seed(8), torch.Generator().manual_seed(9)]
        leaf = u.clone().requires_grad_(True)
        z = R.relaxed_poisson(leaf, temp, [17, 6], generators=gens)
        (grad,) = torch.autograd.grad((weights * z).sum(), leaf)
        results.append((z.detach(), grad, [int(torch.randint(2**31, (), generator=g)) for g in gens]))
    (z_k, g_k, next_k), (z_t, g_t, next_t) = results
    torch.testing.assert_close(z_k, z_t, rtol=1e-5, atol=1e-5)
    scale = g_t.abs().max()
    assert scale > 0
    torch.testing.assert_close(g_k / scale, g_t / scale, rtol=1e-5, atol=1e-5)
    assert next_k == next_t


@needs_kernel
def test_kernel_keeps_non_finite_log_rates_as_the_torch_code_does(monkeypatch):
    """A NaN log-rate gives a NaN sample (a diverged run shows), +-inf the torch code's
    values: the early exit does not hide them."""
    u = _log_rates((1, 4, 9), 0.5, seed=9)
    u[0, 0, :3] = torch.tensor([math.nan, math.inf, -math.inf])
    results = []
    for available in (True, False):
        monkeypatch.setattr(kernel, "available", lambda a=available: a)
        leaf = u.clone().requires_grad_(True)
        z = R.relaxed_poisson(leaf, 0.3, [8], generators=[torch.Generator().manual_seed(1)])
        z.sum().backward()
        results.append((z.detach(), leaf.grad))
    (z_k, g_k), (z_t, g_t) = results
    assert z_k[0, 0, 0].isnan() and g_k[0, 0, 0].isnan()
    torch.testing.assert_close(z_k, z_t, rtol=1e-5, atol=1e-5, equal_nan=True)
    torch.testing.assert_close(g_k, g_t, rtol=1e-5, atol=1e-5, equal_nan=True)


@needs_kernel
@pytest.mark.parametrize("temp", [1.0, 0.2])
def test_sampler_gradient_is_the_plain_expressions_derivative(temp: float):
    """The gradient through relaxed_poisson's autograd Function (backward: grad_z times
    the kernel's dz/du) against central differences of the plain float64 expression of
    the same draws (the keys the sampler takes from the same generator state)."""
    u = _log_rates((1, 3, 5), 0.3, seed=7)
    weights = torch.randn(u.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    keys = draw_keys([torch.Generator().manual_seed(3)], 1)
    leaf = u.clone().requires_grad_(True)
    z = R.relaxed_poisson(leaf, temp, [9], generators=[torch.Generator().manual_seed(3)])
    (grad,) = torch.autograd.grad((weights.float() * z).sum(), leaf)

    def loss(v: torch.Tensor) -> float:
        return float((weights * plain_float64(v, temp, 9, keys)[0]).sum())

    h = 1e-6
    numerical = torch.zeros_like(weights)
    for i in range(u.numel()):
        step = torch.zeros(u.numel(), dtype=torch.float64)
        step[i] = h
        step = step.view(u.shape)
        numerical.view(-1)[i] = (loss(u.double() + step) - loss(u.double() - step)) / (2 * h)
    assert numerical.abs().max() > 0.1
    _close(grad, numerical, 1e-5)


# ----------------------------------------------------------------------------- build
def test_kernel_builds_where_a_compiler_exists():
    """A machine with a C compiler runs the kernel, not the torch code."""
    if build._compiler() is None:
        pytest.skip("no C compiler")
    assert kernel.available()


def test_build_caches_the_library_and_falls_back_without_a_compiler(monkeypatch, tmp_path):
    """A build writes one library, named by the source, compiler and CPU, into the cache
    folder; a later process loads it without building. With no compiler (a bad $CC) the
    sampler warns once and runs the torch code, with the kernel's numbers."""
    if build._compiler() is None:
        pytest.skip("no C compiler")
    monkeypatch.setenv("FONDTRAIN_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setattr(build, "_loaded", {})
    assert build.load("relaxed_poisson.c") is not None
    built = list(tmp_path.iterdir())
    assert len(built) == 1 and built[0].name.startswith("relaxed_poisson-") and built[0].suffix == ".so"
    stamp = os.stat(built[0]).st_mtime_ns
    monkeypatch.setattr(build, "_loaded", {})  # as a new process
    assert build.load("relaxed_poisson.c") is not None
    assert list(tmp_path.iterdir()) == built and os.stat(built[0]).st_mtime_ns == stamp

    u = _log_rates((1, 20, 30), 0.1, seed=8)
    with_kernel = R.relaxed_poisson(u, 0.3, [10], generators=[torch.Generator().manual_seed(2)])
    monkeypatch.setenv("CC", "no-such-compiler")
    monkeypatch.setattr(build, "_loaded", {})
    with pytest.warns(RuntimeWarning, match="not available.*no C compiler found"):
        fallback = R.relaxed_poisson(u, 0.3, [10], generators=[torch.Generator().manual_seed(2)])
    assert not kernel.available()  # remembered: no second warning, no second try
    torch.testing.assert_close(fallback, with_kernel, rtol=1e-5, atol=1e-5)


def test_kernels_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("FONDTRAIN_KERNELS", "0")
    monkeypatch.setattr(build, "_loaded", {})
    assert not kernel.available()
