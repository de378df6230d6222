"""A whole TBPTT window as one compiled graph: forward over t_train steps of every
micro-batch, backward, global-norm clipping and the Adamax step (SPEC 6).

Why torch.compile(fullgraph=True) and not CUDA-graph capture of the eager cycle: the
eager cycle's CPU samplers draw numpy words and shrink their working set (host reads,
data-dependent shapes), and its fused autograd Functions cannot be traced by
torch.func; a pure function of (parameters, optimiser state, inputs, schedule tensors)
compiles on every device (fused C++/OpenMP kernels on CPUs, Triton on GPUs, and with
`mode="reduce-overhead"` CUDA graphs of the result), and CI checks the no-graph-break
promise on its CPUs.

The graph is `torch.func.grad_and_value` of the window loss, written with the model's own
public pieces (free_energy_grad, clamp_state_step, decode, kl, step_loss through
torch.func.functional_call) and the graph samplers (graph_sampler.py), followed by
torch.nn.utils.clip_grad_norm_'s and torch.optim.Adamax's formulas as tensor operations
that update the parameters and the optimiser's own state tensors in place. So checkpoints
(model and optimizer state dicts) are the eager trainer's, and eager and compiled steps
can alternate. Inside a window: fixed shapes, no host reads, no Python branch on a tensor
value, random numbers drawn on the device inside the graph (CPU: the hashed draws of
graph_sampler.py, keyed by two numbers from torch's generator per window; other devices:
torch.rand_like, inductor's Philox), schedules (lr, beta, eps, temp, max_norm) as 0-dim
tensors, so that their changes never recompile. Both draw through torch's generator
state, so a checkpoint's RNG state replays them (resume equals uninterrupted).

The sampler length: one graph per length bucket n_max (N_EXP_BUCKETS) >= the largest
n_exp[t]; the per-step n_exp enter as a tensor and mask the arrivals beyond them (same
distribution, n_max - n_exp wasted arrivals). An n_exp refresh that stays within the
bucket costs nothing; crossing into a new bucket compiles a new graph once (as long as
the first; dynamo keeps at most `torch._dynamo.config.recompile_limit` graphs, 8 by
default, per process: beyond that the cycle warns and the trainer goes eager).

Scope: one process (DDP gradient averaging and DeepSpeed are not part of the graph),
float32 without autocast, torch.optim.Adamax with one parameter group.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fondtrain.model.gaussian import gaussian_nll, gaussian_sample
from fondtrain.model.graph_sampler import hashed_normal, relaxed_poisson_graph
from fondtrain.model.vae import CycleOutput, IterativeVAE, State, plain_update

# Sampler lengths a graph is built for (then any n_exp up to the bucket reuses it).
N_EXP_BUCKETS = (4, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192, 256)


def n_exp_bucket(n_exp: int) -> int:
    """The smallest bucket >= n_exp (beyond the table: the next multiple of 64)."""
    for bucket in N_EXP_BUCKETS:
        if bucket >= n_exp:
            return bucket
    return -(-n_exp // 64) * 64


@dataclass
class BatchOutput:
    """What `CompiledCycle.train_batch` leaves for logging and the n_exp tracker.

    out: the last window's last micro-batch, as the eager cycle's CycleOutput (its loss
    detached); grad_norm: the last optimiser step's norm before clipping (0-dim);
    max_rates: largest posterior rate at each step t over the micro-batches [t_total]
    (Poisson; None for Gaussian); compile_s: seconds this call spent building a graph
    (0.0 when it reused one), to keep out of samples/s.
    """

    out: CycleOutput
    grad_norm: Tensor
    max_rates: Tensor | None
    compile_s: float


class _WindowLoss(nn.Module):
    """The summed micro-batch losses of one window, forward = what torch.func differentiates.

    A module so that torch.func.functional_call substitutes the parameters (keys "vae.W",
    ...) into the model's own methods.
    """

    def __init__(self, vae: IterativeVAE, n_max: int):
        super().__init__()
        self.vae = vae
        self.n_max = n_max

    def forward(self, micro_inputs, carries, n_exp, temp, beta, eps, noise, keys):
        total, new_carries, stats = 0.0, [], []
        for j, (x, carry) in enumerate(zip(micro_inputs, carries, strict=True)):
            loss, new_carry, stat = self.cycle(x, carry, n_exp, temp, beta, eps,
                                               None if noise is None else noise[j], keys, j)
            total = total + loss / len(micro_inputs)
            new_carries.append(new_carry)
            stats.append(stat)
        return total, (tuple(new_carries), stats)

    def sample(self, state: State, temp, n_exp, noise, keys, sample_index: int) -> Tensor:
        """z [B, K]; `sample_index` numbers the window's samples of this micro-batch, so
        that the hashed sampler gives every arrival its own counter."""
        if self.vae.is_poisson:
            return relaxed_poisson_graph(state.components[0], temp, self.n_max, n_exp, noise,
                                         keys, sample_index * self.n_max)
        mu, xi = state.components
        if noise is None:
            noise = torch.randn_like(mu) if keys is None else hashed_normal(mu, keys, sample_index)
        return gaussian_sample(mu, xi, temp, noise)

    def update(self, x, state: State, z, eps, temp, prior: State) -> State:
        """The plain update of SPEC 3.3-3.4 (the model's `plain_update`: what compiles)."""
        return State(plain_update(self.vae, x, state.components, z, eps, temp, prior.components))

    def cycle(self, inputs, carry, n_exp, temp, beta, eps, noise, keys, micro_index: int):
        """t_train steps of one micro-batch from `carry` (state values, C x [B, K]).

        inputs [B, M] or [t_train, B, M]; n_exp [t_train] int; noise None or per step and
        sample: Poisson [t_train, n_inner + 1, n_max, B, K], Gaussian [t_train,
        n_inner + 1, B, K]; keys: the hashed sampler's (or None). Returns (loss, the
        reattached carry, detached statistics).
        """
        vae = self.vae
        n_inner = vae.config.n_iters_inner
        # carry + (u0 - stopgrad u0): the value of the carry, the gradient of u_init
        # (init_state at t = 0, reattach_to_init after: SPEC 6)
        state = State(tuple(c + (u0 - u0.detach()) for c, u0 in zip(carry, vae.u_init, strict=True)))
        losses, recons, kls, max_rates = [], [], [], []
        samples = (micro_index * vae.config.t_train) * (n_inner + 1)  # numbers the samples
        for i in range(vae.config.t_train):
            x = inputs if inputs.dim() == 2 else inputs[i]
            prior = state
            for n in range(n_inner):
                z = self.sample(state, temp, n_exp[i], None if noise is None else noise[i, n],
                                keys, samples + i * (n_inner + 1) + n)
                state = self.update(x, state, z, eps, temp, prior)
            z = self.sample(state, temp, n_exp[i], None if noise is None else noise[i, n_inner],
                            keys, samples + i * (n_inner + 1) + n_inner)
            x_hat = vae.decode(z)
            recon = gaussian_nll(x, x_hat, vae.dec_log_sigma_effective())
            kl = vae.kl(state, prior, temp)
            losses.append(vae.step_loss(recon, kl, beta))
            recons.append(recon.detach().mean())
            kls.append(kl.detach().sum(-1).mean())
            if vae.is_poisson:
                max_rates.append(torch.exp(state.components[0].detach().max()))
        step_losses = torch.stack(losses)
        new_carry = tuple((u0 + (u - u0)).detach()
                          for u0, u in zip(vae.u_init, state.components, strict=True))
        last_x = inputs if inputs.dim() == 2 else inputs[-1]
        stats = dict(step_losses=step_losses.detach(), recon=torch.stack(recons),
                     kl=torch.stack(kls), last_z=z.detach(), last_x_hat=x_hat.detach(),
                     last_x=last_x)
        if max_rates:  # (torch.func's outputs must be tensors: no None entries)
            stats["max_rate"] = torch.stack(max_rates)
        return step_losses.mean(), new_carry, stats


def _clip_(grads: list[Tensor], max_norm: Tensor) -> Tensor:
    """torch.nn.utils.clip_grad_norm_ on a list: the global 2-norm, grads scaled in place
    by min(max_norm / (norm + 1e-6), 1). Returns the norm before clipping."""
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    for g in grads:
        g.mul_(coef)
    return norm


def _adamax_(params, grads, exp_avgs, exp_infs, steps, lr: Tensor, beta1: float,
             beta2: float, eps: float, weight_decay: float) -> None:
    """torch.optim.Adamax's single-tensor step, in place: step += 1; g += wd p;
    m = lerp(m, g, 1 - beta1); v = max(beta2 v, |g| + eps);
    p += (-lr / (1 - beta1^step)) m / v, the step size in float64 as torch's Python
    scalar arithmetic has it (lr a float64 0-dim tensor)."""
    for p, g, m, v, step in zip(params, grads, exp_avgs, exp_infs, steps, strict=True):
        step.add_(1.0)
        if weight_decay != 0:
            g = g + weight_decay * p
        m.lerp_(g, 1.0 - beta1)
        v.copy_(torch.maximum(v * beta2, g.abs() + eps))
        clr = (lr / (1.0 - beta1 ** step.to(torch.float64))).to(p.dtype)
        p.add_((-clr) * m / v)


class CompiledCycle:
    """Runs the trainer's batch (n_iters_outer windows of grad_accum micro-batches, one
    optimiser step per window) through compiled window graphs.

    model: the (unwrapped) IterativeVAE; optimizer: its torch.optim.Adamax (state created
    here as torch's would be, updated in place); mode / options: torch.compile's.
    `train_batch` returns None, after a one-line warning, if compiling or running the
    graph fails: the caller then runs its eager cycle, from then on.
    """

    def __init__(self, model: IterativeVAE, optimizer: torch.optim.Optimizer, grad_accum: int,
                 mode: str | None = None, options: dict | None = None):
        check_supported(model, optimizer)
        self.model = model
        self.optimizer = optimizer
        self.grad_accum = grad_accum
        self.names = [name for name, _ in model.named_parameters()]
        self.params = [p for _, p in model.named_parameters()]
        group = optimizer.param_groups[0]
        self.adamax = dict(beta1=float(group["betas"][0]), beta2=float(group["betas"][1]),
                           eps=float(group["eps"]), weight_decay=float(group["weight_decay"]))
        self._compile_kwargs = dict(fullgraph=True, dynamic=False, mode=mode, options=options)
        self._graphs: dict[int, object] = {}
        self.failed = False
        # schedule values: persistent 0-dim tensors filled each call (static addresses)
        device = model.W.device
        self._scalars = {name: torch.zeros((), device=device) for name in
                         ("temp", "beta", "eps", "max_norm")}
        self._scalars["lr"] = torch.zeros((), dtype=torch.float64, device=device)

    # ------------------------------------------------------------------ the graph
    def _window_fn(self, n_max: int):
        loss_module = _WindowLoss(self.model, n_max)
        names, adamax = ["vae." + n for n in self.names], self.adamax

        def window(params, exp_avgs, exp_infs, steps, micro_inputs, carries, n_exp,
                   temp, beta, eps, lr, max_norm, noise, keys):
            def loss_fn(param_dict):
                return torch.func.functional_call(
                    loss_module, param_dict,
                    (micro_inputs, carries, n_exp, temp, beta, eps, noise, keys))

            grads, (_, (new_carries, stats)) = torch.func.grad_and_value(loss_fn, has_aux=True)(
                dict(zip(names, params, strict=True)))
            grads = [grads[n] for n in names]
            with torch.no_grad():
                grad_norm = _clip_(grads, max_norm)
                _adamax_(params, grads, exp_avgs, exp_infs, steps, lr, **adamax)
            return grad_norm, new_carries, stats

        return window

    def _graph(self, n_max: int):
        if n_max not in self._graphs:
            self._graphs[n_max] = torch.compile(self._window_fn(n_max), **self._compile_kwargs)
        return self._graphs[n_max]

    def _keys(self, windows, n_max: int) -> Tensor | None:
        """Fresh keys (int64 [2], from torch's generator) for the hashed samplers on CPU,
        where it beats the compiled torch.rand_like; None (rand_like) on other devices or
        when a window's draws would overflow its 32-bit counters."""
        cfg = self.model.config
        per_sample = n_max if self.model.is_poisson else 2  # arrivals, or Box-Muller's pair
        draws = len(windows) * cfg.t_train * (cfg.n_iters_inner + 1) * per_sample
        numel = max(w.shape[-2] for w in windows) * cfg.n_latents
        if self.model.W.device.type != "cpu" or draws * numel >= 2**32:
            return None
        return torch.randint(2**31, (2,), dtype=torch.int64)

    def _optimizer_state(self):
        """Adamax's per-parameter tensors, created as torch.optim.Adamax creates them."""
        states = []
        for p in self.params:
            state = self.optimizer.state[p]
            if not state:
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_inf"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            states.append(state)
        return ([s["exp_avg"] for s in states], [s["exp_inf"] for s in states],
                [s["step"] for s in states])

    # ------------------------------------------------------------------ one batch
    def train_batch(self, inputs: Tensor, *, lr: float, beta: float, eps: float, temp: float,
                    max_norm: float, noise: list | None = None) -> BatchOutput | None:
        """One batch as the eager trainer runs it; None (and a warning) if the graph fails.

        inputs: [B, M] (stationary) or [t_total, B, M]; noise (exact replay, tests): per
        window, per micro-batch, the tensor `_WindowLoss.cycle` takes.
        """
        if self.failed:
            return None
        model, cfg = self.model, self.model.config
        for name, value in dict(lr=lr, beta=beta, eps=eps, temp=temp, max_norm=max_norm).items():
            self._scalars[name].fill_(value)
        s = self._scalars
        self.optimizer.param_groups[0]["lr"] = lr  # as the eager trainer leaves it (checkpoints)
        micro_inputs = inputs.chunk(self.grad_accum, dim=-2)
        carries = tuple(tuple(u0.detach().expand(mi.shape[-2], -1).contiguous() for u0 in model.u_init)
                        for mi in micro_inputs)
        n_max = n_exp_bucket(max(model.n_exp_at(t) for t in range(cfg.t_total)))
        compile_s, rates = 0.0, []
        for outer in range(cfg.n_iters_outer):
            t0 = outer * cfg.t_train
            windows = tuple(mi if mi.dim() == 2 else mi[t0:t0 + cfg.t_train] for mi in micro_inputs)
            fresh = n_max not in self._graphs
            start = time.perf_counter()
            try:
                grad_norm, carries, stats = self._graph(n_max)(
                    self.params, *self._optimizer_state(), windows, carries,
                    model.n_exp[t0:t0 + cfg.t_train].clone(), s["temp"], s["beta"], s["eps"], s["lr"],
                    s["max_norm"], None if noise is None else noise[outer], self._keys(windows, n_max))
            except Exception as exc:  # noqa: BLE001 - any compiler failure: back to eager
                if outer:  # an optimiser step was taken: the batch cannot be redone eagerly
                    raise
                self._fail(exc)
                return None
            if fresh:
                compile_s += time.perf_counter() - start
            if "max_rate" in stats[0]:
                rates.append(torch.stack([st["max_rate"] for st in stats]).amax(0))
        last = stats[-1]
        out = CycleOutput(loss=last["step_losses"].mean(), state=State(carries[-1]),
                          step_losses=last["step_losses"], recon=last["recon"], kl=last["kl"],
                          max_rate=last.get("max_rate"), last_z=last["last_z"],
                          last_x_hat=last["last_x_hat"], last_x=last["last_x"])
        return BatchOutput(out, grad_norm, torch.cat(rates) if rates else None, compile_s)

    def _fail(self, exc: Exception) -> None:
        self.failed = True
        self._graphs.clear()
        first_line = (str(exc).strip().splitlines() or [""])[0][:200]
        warnings.warn(f"compiling the training cycle failed ({type(exc).__name__}: {first_line}); "
                      "training continues with the eager cycle", RuntimeWarning, stacklevel=3)


def check_supported(model: IterativeVAE, optimizer: torch.optim.Optimizer) -> None:
    """Raise ValueError (one sentence) for a set-up the compiled cycle does not cover."""
    if not isinstance(optimizer, torch.optim.Adamax) or len(optimizer.param_groups) != 1:
        raise ValueError("the compiled cycle implements torch.optim.Adamax with one parameter group")
    group = optimizer.param_groups[0]
    if group.get("maximize") or group.get("capturable") or group.get("differentiable"):
        raise ValueError("the compiled cycle implements Adamax without maximize/capturable/differentiable")
    if any(p.dtype != torch.float32 for p in model.parameters()):
        raise ValueError("the compiled cycle runs float32 models")
    if torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1:
        raise ValueError("the compiled cycle runs in one process (no gradient all-reduce in the graph)")
