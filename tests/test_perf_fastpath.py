"""The fast paths of the hot loop compute the same numbers as the plain ones: values and
gradients, to float tolerance (no timing here: see `fondtrain bench`).

Models, states and samples carry the member axis (P = 1 here unless said otherwise);
`relaxed_poisson` takes one sampler length and one generator per member."""

from __future__ import annotations

import warnings

import pytest
import torch

from fondtrain.config import ModelConfig
from fondtrain.model import clamps, inference
from fondtrain.model import poisson as P
from fondtrain.model import relaxed_poisson as R
from fondtrain.model.kernels import sampler as kernel
from fondtrain.model.n_exp import n_exp_for_rate
from fondtrain.model.random_streams import exponential_noise, member_exponential_noise
from fondtrain.model.vae import IterativeVAE, State
from tests import oracles

B, M, K = 6, 16, 10
TOL = {torch.float32: 2e-5, torch.float64: 1e-11}
# sums of the same terms in another order or in other kernel lanes: rounding apart
ROUNDING = {torch.float32: 1e-5, torch.float64: 1e-13}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _gens(seed: int) -> list[torch.Generator]:
    """One seeded generator per member of a population of one."""
    return [_gen(seed)]


# ----------------------------------------------------------------------------- sampler
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("temp", [1.0, 0.3, 0.01])
def test_streamed_sampler_equals_explicit_noise_and_plain_autograd(monkeypatch, dtype, temp: float):
    """Drawing the arrivals inside the sampler (no [n_exp, B, K] tensor: the C kernel in
    float32 where it is built, else and in float64 the torch code) gives the sample that
    the same generator's `exponential_noise` gives (the same hashed stream: bit for bit in
    the torch code, to rounding in the kernel), and both match the reference's autograd
    expression in value and gradient (the explicit-noise one with entries dropped)."""
    monkeypatch.setattr(R, "COMPACT_FRACTION", 2.0)  # never drop: the same sums as the noise's
    n_exp = 13
    u = torch.linspace(-7.0, 2.5, B * K, dtype=dtype).reshape(1, B, K)
    weights = torch.randn(1, B, K, generator=_gen(1), dtype=dtype)
    u_stream = u.clone().requires_grad_(True)
    z_stream = R.relaxed_poisson(u_stream, temp, [n_exp], generators=_gens(7))
    noise = member_exponential_noise([n_exp], (B, K), generators=_gens(7))
    assert noise.shape == (n_exp, 1, B, K)
    u_noise = u.clone().requires_grad_(True)
    z_noise = R.relaxed_poisson(u_noise, temp, [n_exp], noise)
    monkeypatch.setattr(R, "COMPACT_FRACTION", 0.25)
    u_dropping = u.clone().requires_grad_(True)
    z_dropping = R.relaxed_poisson(u_dropping, temp, [n_exp], noise)
    u_ref = u.clone().requires_grad_(True)
    z_ref = oracles.relaxed_poisson_reference(u_ref, temp, noise.to(dtype))
    in_kernel = dtype == torch.float32 and kernel.available()
    rounding = ROUNDING[dtype]  # another order of additions (dropping entries), or the kernel's
    same = rounding if in_kernel else 0.0  # the same stream, bit for bit in the torch code
    torch.testing.assert_close(z_stream, z_noise, rtol=same, atol=same)
    torch.testing.assert_close(z_dropping, z_noise, rtol=rounding, atol=rounding)
    tol = TOL[dtype]
    torch.testing.assert_close(z_stream, z_ref, rtol=tol, atol=tol)
    grads = [torch.autograd.grad((weights * z).sum(), v)[0] for z, v in
             ((z_stream, u_stream), (z_noise, u_noise), (z_dropping, u_dropping), (z_ref, u_ref))]
    scale = grads[3].abs().max()
    assert scale > 0
    torch.testing.assert_close(grads[0] / scale, grads[1] / scale, rtol=same, atol=same)
    torch.testing.assert_close(grads[2], grads[1], rtol=rounding, atol=rounding)
    torch.testing.assert_close(grads[0] / scale, grads[3] / scale, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("temp", [1.0, 0.05, 0.01])
def test_dropping_finished_entries_changes_no_bit(monkeypatch, dtype, temp: float):
    """`_sum_arrivals` drops entries whose later terms are exactly 0 and stops when none is
    left: on a sparse posterior (most rates tiny) it draws for far fewer entries, and its
    sums, taken in blocks of arrivals, equal those of the full one-at-a-time loop to
    rounding."""
    n_exp, n = 40, 20000
    gen = _gen(21)
    u = torch.where(torch.rand(n, generator=gen) < 0.8, -8.0 + 3 * torch.rand(n, generator=gen),
                    4 * torch.rand(n, generator=gen) - 1).to(dtype)  # 80% with rates < 0.14
    k = (P.poisson_rate(u) * temp).reciprocal()
    inv_temp = torch.tensor(1.0 / temp, dtype=dtype)
    noise = exponential_noise(n_exp, torch.Size([n]), generator=gen).to(dtype)
    drawn = []

    def draw(j, count, live):
        drawn.extend([n if live is None else live.numel()] * count)
        rows = noise[j:j + count]
        return rows.clone() if live is None else rows[:, live]

    z, acc = R._sum_arrivals(draw, n_exp, k, inv_temp, True)
    monkeypatch.setattr(R, "COMPACT_FRACTION", 2.0)
    monkeypatch.setattr(R, "ARRIVAL_BLOCK", 1)  # one arrival at a time, every entry
    z_full, acc_full = R._sum_arrivals(lambda j, count, live: noise[j:j + count].clone(), n_exp, k,
                                       inv_temp, True)
    tol = ROUNDING[dtype]
    torch.testing.assert_close(z, z_full, rtol=tol, atol=tol)
    torch.testing.assert_close(acc, acc_full, rtol=tol, atol=tol)
    assert drawn[0] == n and sum(drawn) < 0.6 * n_exp * n, drawn  # working set per arrival
    assert drawn == sorted(drawn, reverse=True)


@pytest.mark.parametrize("use_noise", [False, True])
def test_sampler_of_no_arrivals_is_zero(use_noise: bool):
    """n_exp is 0 for a step whose largest rate is below ~1e-3 (the 0.999 quantile of its
    Poisson): the sample and its gradient are then 0, as the plain expression says."""
    assert n_exp_for_rate(1e-4) == 0
    u = torch.full((1, B, K), -9.0, requires_grad=True)
    noise = member_exponential_noise([0], (B, K), generators=_gens(0)) if use_noise else None
    assert noise is None or noise.shape == (0, 1, B, K)
    z = R.relaxed_poisson(u, 0.5, [0], noise, _gens(0))
    z.sum().backward()
    assert torch.equal(z, torch.zeros(1, B, K)) and torch.equal(u.grad, torch.zeros(1, B, K))


def test_streamed_sampler_without_grad_and_needs_a_length_per_member():
    u = torch.zeros(1, B, K)
    with torch.no_grad():
        z = R.relaxed_poisson(u, 0.5, [4], generators=_gens(0))
    assert z.shape == (1, B, K) and not z.requires_grad
    assert float(z.min()) >= 0 and float(z.max()) <= 4
    with pytest.raises(ValueError):  # no length for the member
        R.relaxed_poisson(u, 0.5, [])
    with pytest.raises(ValueError):  # a temperature per member, for two members
        R.relaxed_poisson(u, torch.tensor([0.5, 0.3]), [4])


# ----------------------------------------------------------------------------- state step
STEP_P = 2  # members of the state-step tests: each its own log_lr and clamp opening


def _wide_inputs(posterior: str, dtype):
    gen = _gen(3)
    if posterior == "poisson":
        value = torch.empty(STEP_P, B, K, dtype=dtype).uniform_(-9.5, 11.0, generator=gen)
        grad = 6.0 * torch.randn(STEP_P, B, K, generator=gen, dtype=dtype)
    else:
        value = 4.0 * torch.randn(STEP_P, B, K, generator=gen, dtype=dtype)
        grad = 5.0 * torch.randn(STEP_P, B, K, generator=gen, dtype=dtype)
    value[:, 0, :3] = torch.tensor([-8.0, 10.0, 0.0], dtype=dtype)  # at the floor and a ceiling
    return value, grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("posterior", ["poisson", "gaussian"])
@pytest.mark.parametrize("eps", [1.0, 0.25, "tensor"])
def test_fused_state_step_equals_plain_composition(dtype, posterior: str, eps):
    """The shapes the model passes: value and grad [P, B, K], log_lr [P, 1, 1], the clamp
    ceilings floats or, with a per-member eps, [P, 1, 1] tensors."""
    eps = torch.tensor([0.6, 0.35], dtype=dtype).view(STEP_P, 1, 1) if eps == "tensor" else eps
    c_du = clamps.clamp_ceiling(eps, 10.0 if posterior == "poisson" else 7.0, posterior)
    c_u = clamps.clamp_ceiling(eps, 10.0 if posterior == "poisson" else 2.0, posterior)
    value, grad = _wide_inputs(posterior, dtype)
    weights = torch.randn(STEP_P, B, K, generator=_gen(4), dtype=dtype)
    results = []
    for fn in (clamps.state_step, oracles.state_step_reference):
        v = value.clone().requires_grad_(True)
        g = grad.clone().requires_grad_(True)
        log_lr = torch.tensor([0.3, -0.4], dtype=dtype).view(STEP_P, 1, 1).requires_grad_(True)
        new = fn(v, g, log_lr, c_du, c_u, posterior)
        grads = torch.autograd.grad((weights * new).sum(), (v, g, log_lr))
        results.append((new, *grads))
    tol = TOL[dtype]
    for fast, plain in zip(*results, strict=True):
        scale = plain.abs().max().clamp(min=1.0)
        torch.testing.assert_close(fast / scale, plain / scale, rtol=tol, atol=tol)


# ----------------------------------------------------------------------------- whole model
def _model(preset: str, n_inner: int = 1) -> IterativeVAE:
    cfg = ModelConfig(preset=preset, input_dim=M, n_latents=K, t_train=4, n_iters_inner=n_inner,
                      init_scale=0.3, u_init_low=-2.0, u_init_high=0.5)
    model = IterativeVAE(cfg).double()
    gen = _gen(5)
    with torch.no_grad():
        model.dec_log_sigma.copy_(0.2 * torch.randn(1, M, generator=gen, dtype=torch.float64))
        model.log_bias.add_(0.3 * torch.randn(1, K, generator=gen, dtype=torch.float64))
        model.log_lr.fill_(-0.7)
        if preset == "igrelu":
            model.log_gain.copy_(0.2 * torch.randn(1, K, generator=gen, dtype=torch.float64))
    return model


@pytest.mark.parametrize("preset", ["ipvae", "igvae", "igrelu"])
@pytest.mark.parametrize("n_inner", [1, 2])
def test_fast_and_plain_training_cycles_agree(preset: str, n_inner: int):
    """A TBPTT cycle with the fused steps and the streamed sampler against the plain
    composition fed the same noise: loss, statistics and every parameter gradient (the
    sampler draws the numbers of `draw_noise`, whichever entries it skips)."""
    x = torch.randn(B, M, generator=_gen(6), dtype=torch.float64)
    temp = 0.4 if preset == "ipvae" else 1.0
    outs = []
    for fast in (True, False):
        model = _model(preset, n_inner)
        model.fast_path = fast
        state = model.init_state(B)
        if fast:  # draws its own noise, streamed
            out = model(x, state, 0, 4, temp, 3.0, 0.8, generators=_gens(8))
        else:  # the same noise, drawn up front as [n_exp, P, B, K] tensors
            out = _cycle_with_drawn_noise(model, x, state, temp, _gens(8))
        out.loss.sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        outs.append((out, grads))
    (fast, g_fast), (plain, g_plain) = outs
    torch.testing.assert_close(fast.step_losses, plain.step_losses, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fast.kl, plain.kl, rtol=1e-10, atol=1e-10)
    if preset == "ipvae":
        torch.testing.assert_close(fast.max_rate, plain.max_rate, rtol=1e-12, atol=0)
    for name, grad in g_plain.items():
        scale = grad.abs().max().clamp(min=1e-6)
        torch.testing.assert_close(g_fast[name] / scale, grad / scale, rtol=1e-9, atol=1e-9)


@pytest.mark.skipif(not kernel.available(), reason="no C compiler: the kernel is not built")
def test_float32_cycle_with_the_kernel_equals_replayed_noise():
    """A float32 iP-VAE cycle whose sampler is the C kernel against the same cycle fed
    `draw_noise`'s noise (the torch code): loss and gradients to float32 rounding."""
    x = torch.randn(B, M, generator=_gen(6))
    outs = []
    for replay in (False, True):
        model = _model("ipvae", 2).float()
        state = model.init_state(B)
        if replay:
            out = _cycle_with_drawn_noise(model, x, state, 0.4, _gens(8))
        else:
            out = model(x, state, 0, 4, 0.4, 3.0, 0.8, generators=_gens(8))
        out.loss.sum().backward()
        outs.append((out, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (drawn, g_drawn), (replayed, g_replayed) = outs
    torch.testing.assert_close(drawn.step_losses, replayed.step_losses, rtol=1e-5, atol=1e-5)
    for name, grad in g_replayed.items():
        scale = grad.abs().max().clamp(min=1e-6)
        torch.testing.assert_close(g_drawn[name] / scale, grad / scale, rtol=1e-4, atol=1e-4)


def _cycle_with_drawn_noise(model: IterativeVAE, x, state: State, temp: float, gens):
    """model.forward with explicit noise that the generators give in the order a step
    draws it (update samples, then the output sample, each from its current state)."""
    return model(x, state, 0, 4, temp, 3.0, 0.8, noise=_drawn_noise(model, x, state, temp, gens))


def _drawn_noise(model: IterativeVAE, x, state: State, temp: float, gens, eps: float = 0.8,
                 n_steps: int = 4) -> list[tuple]:
    noise = []
    current = state
    n_inner = model.config.n_iters_inner
    with torch.no_grad():
        for t in range(n_steps):
            step_noise, prior = [], current
            for _ in range(n_inner):
                step_noise.append(model.draw_noise(current, temp, t, gens))
                z = model.sample(current, temp, step_noise[-1], t=t)
                current = model.update(x, current, z, eps, temp, prior)
            step_noise.append(model.draw_noise(current, temp, t, gens))
            noise.append(tuple(step_noise))
    return noise


@pytest.mark.parametrize("preset", ["ipvae", "igvae"])
def test_step_without_outputs_gives_the_same_state(preset: str):
    model = _model(preset)
    x = torch.randn(B, M, generator=_gen(9), dtype=torch.float64)
    state = model.init_state(B)
    temp = 0.5 if preset == "ipvae" else 1.0
    full = model.step(x, state, temp, 1.0, 1.0, 0, generators=_gens(2))
    bare = model.step(x, state, temp, 1.0, 1.0, 0, generators=_gens(2), outputs=False)
    assert bare.z is None and bare.x_hat is None and bare.loss is None
    for a, b in zip(full.state.components, bare.state.components, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("preset", ["ipvae", "igrelu"])
def test_infer_on_a_step_grid(preset: str):
    model = _model(preset)
    x = torch.randn(B, M, generator=_gen(10), dtype=torch.float64)
    temp = 0.0 if preset == "ipvae" else 1.0
    full = inference.run(model, x, 12, temp, generators=_gens(1))
    grid = inference.run(model, x, 12, temp, generators=_gens(1), record=[1, 2, 5, 10])
    assert grid["steps"].tolist() == [1, 2, 5, 10, 12]
    torch.testing.assert_close(grid["state"], full["state"][[0, 1, 4, 9, 11]], rtol=0, atol=0)
    torch.testing.assert_close(grid["x_hat"], full["x_hat"][[0, 1, 4, 9, 11]], rtol=0, atol=0)
    fast = inference.run(model, x, 12, temp, generators=_gens(1), record=[5], same_stream=False)
    assert fast["steps"].tolist() == [5, 12] and fast["z"].shape == (2, 1, B, K)
    assert torch.isfinite(fast["loss"]).all()


# ----------------------------------------------------------------------------- torch.compile
# `enable_compile` compiles the whole TBPTT cycle (`fondtrain.model.cycle`); a real compile
# is exercised by tests/test_model_compiled_cycle.py and `fondtrain bench --compile`. Here
# torch.compile is replaced, so these run without a compiler.
CYCLE = dict(t_start=0, n_steps=4, beta=3.0, eps=0.75)  # values float32 holds exactly


def _cycle(model: IterativeVAE, x, temp, noise):
    """One cycle from u_init on explicit noise, backward on the members' summed loss:
    (outputs, parameter gradients)."""
    model.zero_grad(set_to_none=True)
    out = model(x, model.init_state(B), CYCLE["t_start"], CYCLE["n_steps"], temp, CYCLE["beta"],
                CYCLE["eps"], noise=noise)
    out.loss.sum().backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters()}


def _graph_compile(monkeypatch):
    """torch.compile replaced by a function that runs the graph's code eagerly with
    torch.compiler.is_compiling() True during the call (the code paths a real graph traces:
    the graph sampler, the plain update), and records its calls."""
    calls = []

    def fake_compile(fn, **kwargs):
        def call(*args, **kw):
            calls.append(kwargs)
            with monkeypatch.context() as m:
                m.setattr(torch.compiler, "is_compiling", lambda: True)
                return fn(*args, **kw)
        return call

    monkeypatch.setattr(torch, "compile", fake_compile)
    return calls


def test_compiled_cycle_falls_back_to_eager_when_compile_breaks(monkeypatch):
    """The optional compiled cycle never breaks a run: a compiler that fails at its first
    call leaves a warning and the eager cycle, with the same result."""
    model = _model("igvae")
    x = torch.randn(B, M, generator=_gen(11), dtype=torch.float64)
    noise = _drawn_noise(model, x, model.init_state(B), 1.0, _gens(3), CYCLE["eps"])
    expected, expected_grads = _cycle(model, x, 1.0, noise)

    def broken_compile(fn, **kwargs):
        def call(*args, **kw):
            raise RuntimeError("no C++ compiler")
        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    assert model.enable_compile()
    with pytest.warns(RuntimeWarning, match="compiling the TBPTT cycle failed"):
        got, grads = _cycle(model, x, 1.0, noise)
    assert model.compiled_cycle is None
    torch.testing.assert_close(got.loss, expected.loss, rtol=0, atol=0)
    for a, b in zip(got.state.components, expected.state.components, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for name, grad in expected_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=0, atol=0)


def test_enable_compile_reports_a_missing_compiler(monkeypatch):
    def unavailable(fn, **kwargs):
        raise RuntimeError("torch.compile is not supported here")

    monkeypatch.setattr(torch, "compile", unavailable)
    model = _model("ipvae")
    with pytest.warns(UserWarning, match="unavailable"):
        assert model.enable_compile() is False
    assert model.compiled_cycle is None
    monkeypatch.delattr(torch, "compile")  # a torch without torch.compile: eager, quietly
    assert model.enable_compile() is False
    assert model.compiled_cycle is None


@pytest.mark.parametrize(("preset", "temp", "n_inner"), [("ipvae", 0.5, 2), ("igvae", 1.0, 1),
                                                         ("igrelu", 1.0, 2)])
def test_compiled_cycle_path_equals_eager(monkeypatch, preset: str, temp: float, n_inner: int):
    """What the compiled cycle runs (schedule values as [P] tensors, the graph sampler of a
    bucket's length with the arrivals beyond n_exp masked, the plain update) gives the
    eager cycle's numbers on the same noise: loss, statistics, state and gradients."""
    model = _model(preset, n_inner)
    if model.is_poisson:  # lengths below their bucket (graph_n_max 16): masked arrivals
        model.set_n_exp(torch.tensor([[0.5, 4.0, 2.0, 5.5]]))
        assert model.n_exp_at(0) == [4] and model.longest_n_exp() == 14
    x = torch.randn(B, M, generator=_gen(12), dtype=torch.float64)
    noise = _drawn_noise(model, x, model.init_state(B), temp, _gens(4), CYCLE["eps"])
    eager, eager_grads = _cycle(model, x, temp, noise)
    calls = _graph_compile(monkeypatch)
    assert model.enable_compile()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback to eager
        compiled, grads = _cycle(model, x, temp, noise)
    assert len(calls) == 1 and model.compiled_cycle is not None
    if model.is_poisson:
        assert model.graph_n_max == 16
    for key in ("loss", "step_losses", "recon", "kl", "max_rate", "last_z", "last_x_hat"):
        a, b = getattr(compiled, key), getattr(eager, key)
        if b is None:
            assert a is None, key
            continue
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=key)
    for a, b in zip(compiled.state.components, eager.state.components, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for name, grad in eager_grads.items():
        scale = grad.abs().max().clamp(min=1e-6)
        torch.testing.assert_close(grads[name] / scale, grad / scale, rtol=1e-12, atol=1e-12,
                                   msg=name)


@pytest.mark.parametrize("temp", [1.0, 0.05])
def test_vectorized_sampler_of_accelerators_equals_streamed(temp: float):
    """The whole-tensor sampler used on accelerators (`_vectorized`, called here on the
    CPU) computes what the CPU's streamed one does, value and gradient, and its own noise
    path replays."""
    u = torch.linspace(-6.0, 2.0, B * K, dtype=torch.float64).reshape(1, B, K)
    noise = member_exponential_noise([9], (B, K), generators=_gens(2))
    weights = torch.randn(1, B, K, generator=_gen(3), dtype=torch.float64)
    u_stream = u.clone().requires_grad_(True)
    z_stream = R.relaxed_poisson(u_stream, temp, [9], noise)
    (g_stream,) = torch.autograd.grad((weights * z_stream).sum(), u_stream)
    z_vec, dz_du = R._vectorized(u, (temp,), (9,), noise, (None,), True)
    g_vec = weights * dz_du  # the sampler's backward: grad_z * dz/du
    torch.testing.assert_close(z_vec, z_stream, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_vec, g_stream, rtol=1e-12, atol=1e-12)
    drawn, _ = R._vectorized(u, (temp,), (9,), None, tuple(_gens(5)), False)
    again, _ = R._vectorized(u, (temp,), (9,), member_exponential_noise([9], (B, K), generators=_gens(5)),
                             (None,), False)
    torch.testing.assert_close(drawn, again, rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("preset", ["ipvae", "igrelu"])
def test_cuda_cycle_matches_cpu(preset: str):
    """On a GPU the same cycle fed the same noise gives the CPU's loss and gradients."""
    temp = 0.4 if preset == "ipvae" else 1.0
    x = torch.randn(B, M, generator=_gen(6), dtype=torch.float64)
    cpu_model = _model(preset)
    noise = _drawn_noise(cpu_model, x, cpu_model.init_state(B), temp, _gens(8))
    results = []
    for device in ("cpu", "cuda"):
        model = _model(preset).to(device)
        moved = [tuple(n.to(device) for n in step) for step in noise]
        out = model(x.to(device), model.init_state(B), 0, 4, temp, 3.0, 0.8, noise=moved)
        out.loss.sum().backward()
        results.append((out.loss.cpu(), {n: p.grad.cpu() for n, p in model.named_parameters()}))
    (loss_cpu, g_cpu), (loss_gpu, g_gpu) = results
    torch.testing.assert_close(loss_gpu, loss_cpu, rtol=1e-9, atol=1e-9)
    for name, grad in g_cpu.items():
        scale = grad.abs().max().clamp(min=1e-6)
        torch.testing.assert_close(g_gpu[name] / scale, grad / scale, rtol=1e-7, atol=1e-7)
