"""The things the benchmark times, each built as a no-argument callable: the matrix-product
limit, fondtrain's training cycle and evaluation, and the reference's (from the user's
checkout), with the models they run on.

Both implementations start from the same parameters (the reference's initialisation
copied into fondtrain's model, or a checkpoint's trained parameters copied into the
reference's) and use the trainer's optimiser settings (`TrainConfig`). fondtrain's cycle is
the trainer's own batch function (`train.batch.train_batch`), for one member or many, in
float32 or under bf16 autocast (`precision`: the forward in torch.autocast, what
Accelerate's --mixed_precision bf16 does to a prepared model; state, optimiser and
gradients stay float32).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable

import torch

from fondtrain.bench import harness
from fondtrain.bench.settings import BenchSettings
from fondtrain.config import ModelConfig, RunConfig, TrainConfig
from fondtrain.config.schedules import ScheduleValues
from fondtrain.model import inference, upstream
from fondtrain.model.vae import IterativeVAE
from fondtrain.stats import log_grid, r2_per_sample
from fondtrain.train.batch import train_batch
from fondtrain.train.optim import MemberAdamax

OPTIM = TrainConfig()  # lr, betas, weight decay and clipping norm of a training run
ADAMAX_EPS = 1e-8  # as train/trainer.py builds its Adamax


# ----------------------------------------------------------------------------- inputs, models
def inputs(s: BenchSettings, device: torch.device, batch: int | None = None) -> torch.Tensor:
    """[batch, input_dim] standard normal inputs (whitened patches have unit variance)."""
    gen = torch.Generator().manual_seed(s.seed + 1)
    return torch.randn(batch or s.batch_size, s.input_dim, generator=gen).to(device)


def train_temp(poisson: bool, s: BenchSettings) -> float:
    """The cycles' sampler temperature: Poisson `s.train_temp`, Gaussian 1 (SPEC 6)."""
    return s.train_temp if poisson else 1.0


def fondtrain_model(preset: str, s: BenchSettings, ref_model=None,
                    device: torch.device | None = None, n_members: int = 1) -> IterativeVAE:
    """A fresh model of `s`'s sizes with `n_members` members seeded s.seed, s.seed + 1, ...
    (their own init and sampler generators; with `ref_model`: one member, its very
    parameters), n_exp = s.n_exp."""
    configs = [ModelConfig(preset=preset, input_dim=s.input_dim, n_latents=s.n_latents,
                           t_train=s.t_train, seed=s.seed + i) for i in range(n_members)]
    device = device or harness.device()
    model = IterativeVAE(configs[0], configs)
    if ref_model is not None:
        ours = upstream.state_dict_from_upstream(ref_model.state_dict())
        ours.pop("n_exp", None)
        model.load_state_dict(ours, strict=False)
    if model.is_poisson:
        model.fill_n_exp(s.n_exp)
    model.generators = [torch.Generator(device=device).manual_seed(c.seed) for c in configs]
    return model.to(device)


def reference_setup(s: BenchSettings, preset: str, device: torch.device):
    """(reference model on `device`, reference namespace) of `s`'s sizes, n_exp = s.n_exp."""
    from fondtrain.bench.reference import reference_model

    model, ref = reference_model(s.reference_dir, preset, n_latents=s.n_latents,
                                 t_train=s.t_train, seed=s.seed,
                                 input_side=int(round(math.sqrt(s.input_dim))))
    if model.cfg.type == "poisson":
        model.layer.n_exp.fill_(s.n_exp)
    return model.to(device), ref


def paired_models(preset: str, s: BenchSettings, device: torch.device):
    """(fondtrain model, reference model or None, reference namespace or None) with the
    same parameters: the reference's initialisation (n_exp = s.n_exp in both), or with a
    checkpoint its trained parameters and per-step n_exp in both."""
    ref_model = ref = None
    if not s.checkpoint:
        if s.reference_dir:
            ref_model, ref = reference_setup(s, preset, device)
        return fondtrain_model(preset, s, ref_model, device), ref_model, ref
    from fondtrain.runs.files import load_model

    ours = load_model(s.checkpoint)[0].train().to(device)
    ours.generators = [torch.Generator(device=device).manual_seed(s.seed)]
    if s.reference_dir:
        ref_model, ref = reference_setup(s, preset, device)
        ref_model.load_state_dict({**ref_model.state_dict(), **upstream.state_dict_to_upstream(ours)})
        if ours.is_poisson:  # per step; a longer schedule repeats the last value
            n_exp, theirs = ref_model.layer.n_exp, ours.n_exp[0].to(ref_model.layer.n_exp)
            n_exp.fill_(int(theirs[-1]))
            n_exp[: len(theirs)] = theirs[: len(n_exp)]
    return ours, ref_model, ref


# ----------------------------------------------------------------------------- the limit
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def matmul_limit(batch: int, input_dim: int, n_latents: int, n_steps: int, per_step: int,
                 device: torch.device, precision: str = "fp32") -> Callable[[], None]:
    """The matrix products of n_steps steps alone: per_step products of [B, K] x [K, M] size,
    in the three shapes a step uses (z W^T, e W, and the weight gradient e^T z), with
    operands of `precision` (bf16: the products alone, no casts)."""
    gen = torch.Generator().manual_seed(0)
    dtype = DTYPES[precision]
    w = torch.randn(input_dim, n_latents, generator=gen).to(device, dtype)
    z = torch.randn(batch, n_latents, generator=gen).to(device, dtype)
    e = torch.randn(batch, input_dim, generator=gen).to(device, dtype)
    shapes = (lambda: z @ w.T, lambda: e @ w, lambda: e.T @ z)

    def run() -> None:
        for _ in range(n_steps):
            for i in range(per_step):
                shapes[i % 3]()
    return run


# ----------------------------------------------------------------------------- fondtrain
class LocalBackend:
    """The back-end calls `train_batch` makes, for one process without Accelerate's
    bookkeeping (what a prepared one-process model does: plain backward, no sync)."""

    @staticmethod
    def backward(loss: torch.Tensor) -> None:
        loss.backward()

    @staticmethod
    def no_sync(model):
        return contextlib.nullcontext()

    @staticmethod
    def unscale_gradients() -> None:
        pass


class Autocast:
    """`model` with its forward under torch.autocast(dtype), what Accelerate's
    --mixed_precision bf16 makes of a prepared model's forward (backward, clipping and the
    optimiser step run outside it, on float32 parameters and gradients)."""

    def __init__(self, model, dtype: torch.dtype = torch.bfloat16):
        self.model, self.dtype = model, dtype

    def __call__(self, *args, **kwargs):
        device_type = next(self.model.parameters()).device.type
        with torch.autocast(device_type, dtype=self.dtype):
            return self.model(*args, **kwargs)

    def parameters(self):
        return self.model.parameters()


def fondtrain_cycle(model: IterativeVAE, x: torch.Tensor, s: BenchSettings, backend=None,
                    optimizer=None, precision: str = "fp32", values: ScheduleValues | None = None,
                    keep_model: bool | None = None) -> Callable[[], object]:
    """One training cycle of every member as the trainer runs it (`train_batch`, one
    window, no accumulation): t_train steps forward, backward, each member clipped to its
    own norm, one MemberAdamax step; the callable returns the `BatchResult`. backend /
    optimizer: a prepared pair (e.g. an Accelerator's), else one process of `model`
    itself. precision: fp32, or bf16 (the forward under autocast, `Autocast`). values:
    the schedule's values at some step (default: the trained regime, peak lr, beta_outer,
    clamps open, s.train_temp).

    keep_model (default: when s.checkpoint is timed): the optimiser step runs at learning
    rate 0, the same work, so that every timed cycle is a cycle of the same model. A
    trained model must stay trained: each Adamax step from a fresh optimiser state moves
    every weight by about lr whatever its gradient, and two such steps took a vH16 ipvae
    trained for 3,000 steps from 65% to 22% of its latents above rate 0.1 by the end of a
    cycle, its sampler from 4.4 to 2.3 ms per call, a cycle cheaper than any the run made.
    """
    core = model if backend is None else backend.unwrap_model(model)
    caller = model if precision == "fp32" else Autocast(model, DTYPES[precision])
    p = core.n_members
    if optimizer is None:
        optimizer = MemberAdamax(model.parameters(), lr=[OPTIM.lr] * p, betas=tuple(OPTIM.betas),
                                 eps=ADAMAX_EPS, weight_decay=OPTIM.weight_decay)
    config = RunConfig(model=core.config, train=TrainConfig(batch_size=x.shape[0]))

    def column(value: float) -> torch.Tensor:
        return torch.full((p,), float(value), dtype=torch.float64)

    values = values or ScheduleValues(
        lr=column(OPTIM.lr), beta=column(core.config.beta_outer), eps=column(1.0),
        temp=column(train_temp(core.is_poisson, s)), max_norm=column(OPTIM.grad_clip),
        warming_up=torch.zeros(p, dtype=torch.bool))
    if keep_model if keep_model is not None else bool(s.checkpoint):
        values = dataclasses.replace(values, lr=torch.zeros_like(values.lr))

    def run(noise=None):
        return train_batch(caller, core, optimizer, backend or LocalBackend, x, values, config, noise)
    return run


# The precision check's bounds on a lower precision's training cycle against float32's from
# the same parameters and noise: the loss within the bound of the 40-step bf16 training
# test (tests/test_scale_precision.py BF16_LOSS_RTOL); the gradient (every parameter's, as
# one vector) closer to float32's than NOISE_SHARE x the distance between two float32
# gradients of the same batch under different sampler noise: the error then adds at most
# NOISE_SHARE^2 = 1% to the variance that the sampler's noise gives the gradient anyway.
LOSS_RTOL = 5e-3
NOISE_SHARE = 0.1


class ReplayNoise:
    """One cycle's sampler noise for `train_batch` (`noise(outer, j)` returns it): step i
    gives every sample's standard noise in `draw_noise`'s layout, drawn from (seed, i), so
    every model it is given to gets the same; a step's noise is drawn when the step asks
    for it (a [n_exp, B, K] tensor per Poisson sample: a whole cycle's can take a GB)."""

    def __init__(self, model: IterativeVAE, batch: int, temp: float, seed: int):
        self.model, self.batch, self.temp, self.seed = model, batch, temp, seed

    def __call__(self, outer: int, j: int) -> ReplayNoise:
        return self

    def __len__(self) -> int:
        return self.model.config.t_train

    def __getitem__(self, i: int):
        if not 0 <= i < len(self):
            raise IndexError(i)
        m = self.model
        gen = torch.Generator(device=m.W.device).manual_seed(self.seed * 100_003 + i)
        state = m.init_state(self.batch)
        return tuple(m.draw_noise(state, self.temp, i, [gen] * m.n_members)
                     for _ in range(m.config.n_iters_inner + 1))

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def _cycle_loss_and_gradient(model: IterativeVAE, x: torch.Tensor, s: BenchSettings, precision: str,
                             noise) -> tuple[torch.Tensor, torch.Tensor]:
    """One cycle's loss [P] and its gradient (every parameter's, flattened, before
    clipping and the optimiser step) with the given noise."""
    grads: dict[str, torch.Tensor] = {}
    hooks = [p.register_post_accumulate_grad_hook(lambda p, n=name: grads.__setitem__(n, p.grad.detach().clone()))
             for name, p in model.named_parameters() if p.requires_grad]
    try:
        out = fondtrain_cycle(model, x, s, precision=precision)(noise).out
    finally:
        for hook in hooks:
            hook.remove()
    flat = torch.cat([grads[name].double().flatten().cpu() for name in sorted(grads)])
    return out.loss.detach().double().cpu(), flat


def precision_check(preset: str, s: BenchSettings, device: torch.device, precision: str,
                    draws: int = 2) -> dict:
    """Does a training cycle in `precision` compute what float32's does? For each of
    `draws` (>= 2) sampler noise draws, one cycle in float32 and one in `precision`, each
    from a fresh copy of the bench's parameters (`paired_models`) and given that same
    noise, so that only the arithmetic differs. Returns {'loss_rel_diff', 'grad_rel_diff'
    (the largest over the draws), 'grad_noise_rel' (the smallest relative distance between
    two draws' float32 gradients), 'loss_rtol', 'noise_share', 'passes', 'draws'}: passes
    when everything is finite, the loss within LOSS_RTOL and the gradient's error within
    NOISE_SHARE x grad_noise_rel."""
    x = inputs(s, device)
    results: dict[str, list] = {"fp32": [], precision: []}
    for draw in range(max(2, draws)):
        for p in results:
            model = paired_models(preset, s, device)[0]
            noise = ReplayNoise(model, x.shape[0], train_temp(model.is_poisson, s), s.seed + 100 + draw)
            results[p].append(_cycle_loss_and_gradient(model, x, s, p, noise))
    finite = all(bool(torch.isfinite(v).all()) for pair in results[precision] for v in pair)
    loss_diff = max(float(((low - ref).abs() / ref.abs().clamp_min(1e-30)).max())
                    for (ref, _), (low, _) in zip(results["fp32"], results[precision], strict=True))
    grad_diff = max(float((low - ref).norm() / ref.norm().clamp_min(1e-30))
                    for (_, ref), (_, low) in zip(results["fp32"], results[precision], strict=True))
    grads = [g for _, g in results["fp32"]]
    noise_rel = min(float((a - b).norm() / a.norm().clamp_min(1e-30)) for a, b in zip(grads, grads[1:], strict=False))
    if not finite:
        loss_diff = grad_diff = float("inf")
    return {"loss_rel_diff": loss_diff, "grad_rel_diff": grad_diff, "grad_noise_rel": noise_rel,
            "loss_rtol": LOSS_RTOL, "noise_share": NOISE_SHARE, "draws": len(grads),
            "passes": finite and loss_diff <= LOSS_RTOL and grad_diff <= NOISE_SHARE * noise_rel}


def eval_every_step(model: IterativeVAE, x: torch.Tensor, n_steps: int) -> Callable[[], torch.Tensor]:
    """n_steps inference steps at evaluation temperature reporting R^2 and the squared
    error on every step (what the reference's `xtract_ftr` loop computes): device sums
    [n_steps, 2], read once at the end."""
    temp = inference.eval_temperature(model)

    @torch.no_grad()
    def run() -> torch.Tensor:
        sums = torch.zeros(n_steps, 2, device=x.device)
        for step, out in inference.steps(model, x, n_steps, temp):  # eps 1, beta 0
            sums[step - 1, 0] = r2_per_sample(x, out.x_hat).sum()
            sums[step - 1, 1] = (x - out.x_hat).pow(2).sum()
        return sums.cpu()
    return run


def eval_log_grid(model: IterativeVAE, x: torch.Tensor, n_steps: int) -> Callable[[], torch.Tensor]:
    """n_steps inference steps with outputs only on the log grid of SPEC 7."""
    temp = inference.eval_temperature(model)
    grid = log_grid(n_steps)

    def run() -> torch.Tensor:
        traces = inference.run(model, x, n_steps, temp, record=grid, same_stream=False)
        return (x - traces["x_hat"]).pow(2).sum(-1).cpu()
    return run


# ----------------------------------------------------------------------------- reference
def reference_cycle(model, ref, x: torch.Tensor, s: BenchSettings) -> Callable[[], None]:
    """The reference's `Trainer.iteration` for one batch (stationary feeder, no warm-up):
    `_fun` per step with its host reads (loss.item(), rate.max().item()), then backward,
    clip (.item()), its NVAE Adamax step and `detach_inference_state`."""
    optim = ref.Adamax(model.parameters(), lr=OPTIM.lr, betas=tuple(OPTIM.betas),
                       eps=ADAMAX_EPS, weight_decay=OPTIM.weight_decay)
    poisson = model.cfg.type == "poisson"
    temp = train_temp(poisson, s)
    beta = model.cfg.beta_outer
    scale = 256.0 / float(math.prod(model.cfg.input_sz))
    t_train = model.cfg.t_train

    def run() -> None:
        model.train()
        model.update_temp(temp)
        model.update_eps(1.0)
        optim.zero_grad()
        loss_seq, counter = 0, 0
        stats = []
        for t in range(t_train):
            model.update_time(t)
            output = model(x)
            loss = torch.mean(output["loss_recon"] + torch.sum(output["loss_kl"], dim=-1) * beta)
            loss = loss * scale
            loss_seq += loss
            counter += 1
            with torch.no_grad():
                stats.append(loss.item())
                if poisson:
                    stats.append(output["posterior"].rate.max().item())
        (loss_seq / counter).backward()
        stats.append(torch.nn.utils.clip_grad_norm_(model.parameters(), OPTIM.grad_clip).item())
        optim.step()
        optim.zero_grad()
        model.detach_inference_state()
    return run


def reference_eval(model, x: torch.Tensor, n_steps: int, save_freq: int = 100):
    """The reference's `Trainer.xtract_ftr` loop for one batch: per step `xtract_ftr` with
    u, du, samples, r2 and mse, their sums to numpy, u and samples every save_freq steps."""
    extras = ["u", "du", "samples", "r2", "mse"]

    @torch.no_grad()
    def run():
        model.eval()
        kept, sums = [], []
        for t in range(n_steps):
            model.update_time(t)
            output = model.xtract_ftr(x, return_extras=extras)
            norms = torch.linalg.norm(output["du"], dim=-1)
            sums.append((norms.sum().cpu().numpy(), output["r2"].sum().cpu().numpy(),
                         output["mse"].sum().cpu().numpy()))
            if t == 0 or (t + 1) % save_freq == 0:
                kept.append((output["u"].cpu().numpy(), output["samples"].cpu().numpy()))
        return sums
    return run
