"""Per-member Adamax and clipping against torch's own, member slice by member slice."""

from __future__ import annotations

import io

import pytest
import torch

from fondtrain.train.optim import (
    MemberAdamax,
    adamax_step_,
    clip_grad_norm_per_member_,
    clip_grads_per_member_,
    member_grad_norms,
    set_lr,
)

P = 3
SHAPES = [(P, 6, 5), (P, 5), (P, 1, 5)]  # like W [P, M, K], log_bias [P, K], log_lr [P, C, 1]
LR = [5e-3, 2e-3, 1e-2]
WD = [3e-4, 0.0, 1e-2]
BETA1 = [0.9, 0.8, 0.95]
BETA2 = [0.999, 0.99, 0.9999]
# float32 rounding: torch adds the weight decay with one fused multiply-add where this
# adds a product, so an element may differ by an ulp or so of the gradient
TOL = dict(rtol=2e-6, atol=1e-8)


def make_params(seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in SHAPES]


def grads_at(step: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + step)
    # members' gradients on different scales: clipping bites for some members only
    scale = torch.tensor([1.0, 30.0, 0.01])
    return [torch.randn(s, generator=gen) * scale.view((-1,) + (1,) * (len(s) - 1)) for s in SHAPES]


def single_runs(params):
    """P torch.optim.Adamax, each over its member's slices (copies)."""
    runs = []
    for i in range(P):
        slices = [torch.nn.Parameter(p.detach()[i].clone()) for p in params]
        opt = torch.optim.Adamax(slices, lr=LR[i], betas=(BETA1[i], BETA2[i]), eps=1e-8, weight_decay=WD[i])
        runs.append((slices, opt))
    return runs


def test_adamax_equals_torch_adamax_per_member_and_resumes_from_its_state_dict():
    params = make_params()
    runs = single_runs(params)
    opt = MemberAdamax(params, lr=LR, betas=(BETA1, BETA2), weight_decay=WD)
    saved = None
    for step in range(8):
        if step == 3:  # a schedule moves the learning rates
            new_lr = [0.5 * v for v in LR]
            set_lr(opt, torch.tensor(new_lr, dtype=torch.float64))
            for i, (_, single) in enumerate(runs):
                single.param_groups[0]["lr"] = new_lr[i]
        for p, g in zip(params, grads_at(step), strict=True):
            p.grad = g.clone()
        opt.step()
        for i, (slices, single) in enumerate(runs):
            for s, g in zip(slices, grads_at(step), strict=True):
                s.grad = g[i].clone()
            single.step()
        if step == 4:
            buffer = io.BytesIO()
            torch.save({"params": [p.detach().clone() for p in params], "opt": opt.state_dict()}, buffer)
            saved = buffer.getvalue()
    for i, (slices, single) in enumerate(runs):
        for p, s in zip(params, slices, strict=True):
            torch.testing.assert_close(p.detach()[i], s.detach(), **TOL)
            torch.testing.assert_close(opt.state[p]["exp_avg"][i], single.state[s]["exp_avg"], **TOL)
            torch.testing.assert_close(opt.state[p]["exp_inf"][i], single.state[s]["exp_inf"], **TOL)
            assert float(opt.state[p]["step"]) == float(single.state[s]["step"]) == 8.0
    assert not torch.equal(params[0].detach()[0], make_params()[0].detach()[0])  # it did move

    # resume from step 5's state dict: the same three steps give the same parameters
    checkpoint = torch.load(io.BytesIO(saved))
    resumed = [torch.nn.Parameter(t) for t in checkpoint["params"]]
    opt2 = MemberAdamax(resumed, lr=[1.0] * P)  # every hyperparameter comes from the state dict
    opt2.load_state_dict(checkpoint["opt"])
    assert opt2.param_groups[0]["lr"].dtype == torch.float64
    for step in range(5, 8):
        for p, g in zip(resumed, grads_at(step), strict=True):
            p.grad = g.clone()
        opt2.step()
    for a, b in zip(params, resumed, strict=True):
        assert torch.equal(a.detach(), b.detach())


def test_a_single_models_torch_adamax_state_resumes_as_one_member():
    """What fondtrain checkpointed before every model had a member axis: torch.optim.Adamax
    over parameters without it. It loads into MemberAdamax of one member and steps on
    exactly as torch's optimiser does."""
    gen = torch.Generator().manual_seed(4)
    plain = [torch.nn.Parameter(torch.randn(s[1:], generator=gen)) for s in SHAPES]
    torch_opt = torch.optim.Adamax(plain, lr=LR[0], betas=(BETA1[0], BETA2[0]), eps=1e-8, weight_decay=WD[0])
    for step in range(3):
        for p, g in zip(plain, grads_at(step), strict=True):
            p.grad = g[0].clone()
        torch_opt.step()
    ours = [torch.nn.Parameter(p.detach()[None].clone()) for p in plain]
    opt = MemberAdamax(ours, lr=[1.0])
    opt.load_state_dict(torch_opt.state_dict())
    for step in range(3, 6):
        for p, q, g in zip(plain, ours, grads_at(step), strict=True):
            p.grad, q.grad = g[0].clone(), g[:1].clone()
        torch_opt.step()
        opt.step()
    for p, q in zip(plain, ours, strict=True):
        torch.testing.assert_close(q.detach()[0], p.detach(), **TOL)
        assert float(opt.state[q]["step"]) == 6.0


def test_clip_equals_clip_grad_norm_per_member():
    params = make_params(1)
    max_norm = torch.tensor([300.0, 5.0, 1e-3], dtype=torch.float64)
    grads = grads_at(0)
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    norms = clip_grad_norm_per_member_(params, max_norm)
    assert norms.shape == (P,)
    clipped = 0
    for i in range(P):
        slices = [torch.nn.Parameter(p.detach()[i].clone()) for p in params]
        for s, g in zip(slices, grads, strict=True):
            s.grad = g[i].clone()
        expected = torch.nn.utils.clip_grad_norm_(slices, float(max_norm[i]))
        torch.testing.assert_close(norms[i], expected, rtol=1e-6, atol=0)
        for p, s in zip(params, slices, strict=True):
            torch.testing.assert_close(p.grad[i], s.grad, rtol=1e-6, atol=0)
        clipped += bool(expected > max_norm[i])
    assert clipped == 2  # member 0 is under its limit and keeps its gradient
    # clipped members end at max_norm x norm / (norm + 1e-6), torch's guarded ratio
    after = (max_norm.float() * norms / (norms + 1e-6))[1:]
    torch.testing.assert_close(member_grad_norms([p.grad for p in params])[1:], after, rtol=1e-5, atol=0)


def test_optimiser_refuses_parameters_without_the_member_axis():
    with pytest.raises(ValueError, match="leading member axis"):
        MemberAdamax([torch.nn.Parameter(torch.zeros(4, 2))], lr=LR)
    with pytest.raises(ValueError, match="one value per member"):
        MemberAdamax(make_params(), lr=LR, weight_decay=[0.0, 1.0])


def test_clip_and_step_compile_to_one_graph():
    """No graph break (fullgraph=True) and the compiled step equals the eager one."""
    params = [p.detach() for p in make_params(2)]

    def cycle(params, grads, exp_avgs, exp_infs, steps, max_norm, lr, beta1, beta2, wd):
        norms = clip_grads_per_member_(grads, max_norm)
        adamax_step_(params, grads, exp_avgs, exp_infs, steps, lr=lr, beta1=beta1, beta2=beta2,
                     weight_decay=wd, eps=1e-8)
        return norms

    def run(fn):
        ps = [p.clone() for p in params]
        avgs, infs = [torch.zeros_like(p) for p in ps], [torch.zeros_like(p) for p in ps]
        steps = [torch.zeros(()) for _ in ps]
        f64 = dict(dtype=torch.float64)
        for step in range(3):
            fn(ps, grads_at(step), avgs, infs, steps, torch.tensor([300.0, 5.0, 1e-3], **f64),
               torch.tensor(LR, **f64), torch.tensor(BETA1, **f64), torch.tensor(BETA2, **f64),
               torch.tensor(WD, **f64))
        return ps

    torch._dynamo.reset()
    compiled = torch.compile(cycle, fullgraph=True, backend="aot_eager")
    for a, b in zip(run(cycle), run(compiled), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)
