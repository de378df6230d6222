"""The optimiser (SPEC 6.5, 9.2): Adamax and gradient clipping of each member on its own.

Every parameter has a leading member axis P (W [P, M, K], log_bias [P, K], log_lr [P, C],
u_init [P, C, K], ...), and member i's slice is the parameter of its single-model run.
Member i's Adamax step and gradient clipping see only its own slices, with its own
hyperparameters, so P members step exactly like P separate runs, and one member (P = 1)
exactly like torch.optim.Adamax and torch.nn.utils.clip_grad_norm_ (tested).

Hyperparameters are [P] tensors on the parameters' device and the step has no host
synchronisation and no branch on tensor values (`adamax_step_`; `MemberAdamax` wraps it
as a torch optimizer with a state dict). Under DeepSpeed ZeRO, which hands the optimiser
flat partitions of the parameters, one member's [1] hyperparameters broadcast over them
unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

# torch.nn.utils.clip_grad_norm_'s guard against dividing by a zero norm.
CLIP_EPS = 1e-6


def _member_view(values: Tensor, like: Tensor) -> Tensor:
    """[P] -> [P, 1, ..., 1] in `like`'s dtype, to broadcast over a parameter [P, ...]."""
    return values.to(like.dtype).view((-1,) + (1,) * (like.dim() - 1))


def member_grad_norms(grads: Sequence[Tensor]) -> Tensor:
    """The global L2 norm of each member's gradients over all its parameters: [P] from
    gradients [P, ...] (at least one)."""
    n_members = grads[0].shape[0]
    norms = torch.stack([torch.linalg.vector_norm(g.reshape(n_members, -1), dim=1) for g in grads])
    return torch.linalg.vector_norm(norms, dim=0)


def clip_grads_per_member_(grads: Sequence[Tensor], max_norm: Tensor) -> Tensor:
    """Scale member i's gradients by min(1, max_norm_i / (norm_i + 1e-6)) in place, norm_i
    the L2 norm of all its gradients (torch.nn.utils.clip_grad_norm_'s rule, clamp and
    guard); max_norm [P]. Returns the norms before clipping [P]."""
    total = member_grad_norms(grads)
    coef = (max_norm.to(total.dtype) / (total + CLIP_EPS)).clamp(max=1.0)
    for g in grads:
        g.mul_(_member_view(coef, g))
    return total


def clip_grad_norm_per_member_(parameters: Iterable[Tensor], max_norm: Tensor) -> Tensor:
    """torch.nn.utils.clip_grad_norm_ applied to each member's own parameters [P, ...]
    (those with a gradient), in place; max_norm [P]; returns the norms before clipping [P]."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(max_norm.shape, device=max_norm.device)
    return clip_grads_per_member_(grads, max_norm)


def adamax_step_(params: Sequence[Tensor], grads: Sequence[Tensor], exp_avgs: Sequence[Tensor],
                 exp_infs: Sequence[Tensor], steps: Sequence[Tensor], *, lr: Tensor, beta1: Tensor,
                 beta2: Tensor, weight_decay: Tensor, eps: float) -> None:
    """One Adamax step of every member, in place: torch.optim.Adamax's update (L2 weight
    decay added to the gradient, first moment, infinity norm, bias-corrected step) with
    member i's lr, betas and weight decay on member i's slice.

    params, grads, exp_avgs, exp_infs: [P, ...] each; steps: 0-dim float32 step counts
    (one per parameter, as torch keeps them); lr, beta1, beta2, weight_decay: [P] (float64:
    the bias correction is computed in double precision, as torch does on the host).
    """
    for param, grad, exp_avg, exp_inf, step in zip(params, grads, exp_avgs, exp_infs, steps, strict=True):
        step += 1
        grad = grad + _member_view(weight_decay, param) * param
        exp_avg.lerp_(grad, _member_view(1.0 - beta1, param))
        torch.maximum(exp_inf.mul_(_member_view(beta2, param)), grad.abs().add_(eps), out=exp_inf)
        neg_step_size = -(lr / (1.0 - beta1 ** step))
        param.addcdiv_(exp_avg * _member_view(neg_step_size, param), exp_inf)


def set_lr(optimizer, lr: Tensor) -> None:
    """Every member's learning rate of the coming steps ([P]), in place in each parameter
    group of a MemberAdamax (also under an Accelerate or DeepSpeed wrapper: both expose
    the groups)."""
    for group in optimizer.param_groups:
        group["lr"].copy_(lr)


def _as_members(value, n_members: int, name: str) -> Tensor:
    values = torch.as_tensor(value, dtype=torch.float64).reshape(-1).clone()
    if values.numel() == 1:
        values = values.expand(n_members).clone()
    if values.numel() != n_members:
        raise ValueError(f"{name} needs one value per member ({n_members}), got {values.numel()}")
    return values


class MemberAdamax(torch.optim.Optimizer):
    """Adamax with per-member hyperparameters for parameters [P, ...] (torch.optim.Adamax's
    state names and update).

    lr: [P] values (a sequence or tensor; P = its length); betas, weight_decay: floats
    (every member) or [P] values; eps shared. Member i's slices follow torch.optim.Adamax
    with member i's values (tested). The state per parameter has torch's names (step,
    exp_avg, exp_inf). `set_lr` writes a step's learning rates.
    """

    def __init__(self, params, lr, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay=0.0):
        lr = torch.as_tensor(lr, dtype=torch.float64).reshape(-1)
        n = lr.numel()
        defaults = dict(lr=_as_members(lr, n, "lr"),
                        betas=(_as_members(betas[0], n, "beta1"), _as_members(betas[1], n, "beta2")),
                        weight_decay=_as_members(weight_decay, n, "weight_decay"), eps=float(eps))
        if (defaults["lr"] < 0).any() or (defaults["weight_decay"] < 0).any():
            raise ValueError("lr and weight_decay must not be negative")
        if any(((b < 0) | (b >= 1)).any() for b in defaults["betas"]):
            raise ValueError("betas must lie in [0, 1)")
        self.n_members = n
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() == 0 or p.shape[0] != n:
                    raise ValueError(f"a parameter needs a leading member axis of {n}, "
                                     f"got shape {tuple(p.shape)}")

    def _on_device(self, group: dict, device: torch.device) -> None:
        # the model may move to its device after the optimiser was built
        if group["lr"].device != device:
            group["lr"] = group["lr"].to(device)
            group["betas"] = tuple(b.to(device) for b in group["betas"])
            group["weight_decay"] = group["weight_decay"].to(device)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            self._on_device(group, params[0].device)
            for p in params:
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_inf"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            states = [self.state[p] for p in params]
            adamax_step_(params, [p.grad for p in params], [s["exp_avg"] for s in states],
                         [s["exp_inf"] for s in states], [s["step"] for s in states],
                         lr=group["lr"], beta1=group["betas"][0], beta2=group["betas"][1],
                         weight_decay=group["weight_decay"], eps=group["eps"])
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        """Also reads torch.optim.Adamax's state dict of a single model (float hyperparameters,
        moments without the member axis), what fondtrain checkpointed before every model
        had one."""
        state_dict = _with_member_axis(state_dict)
        super().load_state_dict(state_dict)
        for group in self.param_groups:  # hyperparameters back to float64 [P]
            group["lr"] = group["lr"].to(torch.float64)
            group["betas"] = tuple(b.to(torch.float64) for b in group["betas"])
            group["weight_decay"] = group["weight_decay"].to(torch.float64)
            for p in group["params"]:  # torch casts step counts to its own choice
                if "step" in self.state.get(p, {}):
                    self.state[p]["step"] = self.state[p]["step"].to(device=p.device, dtype=torch.float32).clone()


def _with_member_axis(state_dict: dict) -> dict:
    """A single model's Adamax state dict as a population of one's (unchanged if it is one)."""
    groups = state_dict["param_groups"]
    if all(isinstance(g["lr"], Tensor) for g in groups):
        return state_dict
    def one(value) -> Tensor:
        return torch.tensor([float(value)], dtype=torch.float64)

    new_groups = [{**g, "lr": one(g["lr"]), "betas": tuple(one(b) for b in g["betas"]),
                   "weight_decay": one(g["weight_decay"])} for g in groups]
    state = {index: {k: (v.unsqueeze(0) if k != "step" else v).clone() for k, v in values.items()}
             for index, values in state_dict["state"].items()}
    return {"state": state, "param_groups": new_groups}
