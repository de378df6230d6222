"""The iterative VAEs: iP-VAE (`ipvae`), iG-VAE (`igvae`) and iGrelu-VAE (`igrelu`).

There is no encoder. The posterior of each input is a *state* refined by gradient steps on
the free energy (SPEC 3); the decoder is a linear dictionary W [M, K]. The step function
is pure given (parameters, x, state, noise): state lives in a small `State` dataclass
passed in and out, never in module attributes.

Notation: B batch, M input dimension, K latents, C state components (1 Poisson log-rate
u; 2 Gaussian mean mu and log-std xi).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fondtrain.config import ModelConfig
from fondtrain.model import clamps, gaussian, member_chunks, poisson
from fondtrain.model.compiled import CompiledStep, compile_step
from fondtrain.model.members import (
    check_members,
    draw_member_noise,
    initial_parameters,
    member_view,
    poisson_kl_members,
    sample_members,
    stacked_parameters,
)
from fondtrain.model.n_exp import NExpTable
from fondtrain.model.states import CycleOutput, State, StepOutput


class IterativeVAE(NExpTable, nn.Module):
    """Parameters (SPEC 2) and the inference dynamics (SPEC 3-5) of one preset.

    Parameters: W [M, K], dec_log_sigma [M], log_bias [K], log_lr [C], u_init [C, K],
    log_gain [K] (igrelu only). Buffer: n_exp [t_total], the relaxed Poisson sampler's
    length at each step (`NExpTable`: n_exp_at, set_n_exp).

    `members` (ModelConfigs differing from `config` only in seed, beta_outer, beta_inner,
    init_scale, poisson_kl) makes a population: the same model with a leading member axis
    P on every parameter, state and output, member i exactly `IterativeVAE(members[i])`
    (`fondtrain.model.members`). Its temp, beta and eps may be [P] tensors, and its
    `generator` arguments are lists of P generators. `n_members` is None for one model.

    `fast_path` (default True) selects the fused implementations of the hot loop: the
    state step as one autograd node (`clamps.state_step`). They compute the same numbers
    as the plain composition (`fast_path = False`, `plain_update`), which tests compare.
    `enable_compile` runs the deterministic parts of a step through torch.compile
    (`fondtrain.model.compiled`).
    """

    fast_path: bool = True

    def __init__(self, config: ModelConfig, members: list[ModelConfig] | None = None):
        super().__init__()
        self.config = config
        self.n_members = None if members is None else len(members)
        if members is None:
            params = initial_parameters(config)
        else:
            check_members(config, members)
            params = stacked_parameters(members)
            self.members = list(members)
            # per-member constants of the dynamics: not parameters, not saved
            self.register_buffer("member_beta_inner", torch.tensor(
                [m.beta_inner for m in members]), persistent=False)
            self.register_buffer("member_kl_reference", torch.tensor(
                [m.poisson_kl == "reference" for m in members]), persistent=False)
        for name, value in params.items():
            setattr(self, name, nn.Parameter(value))
        # a population's sampler generators, one per member, used where a call passes
        # none (training: seeded per member by the trainer); None: the default generator
        self.generators: list[torch.Generator] | None = None
        self.register_n_exp(config.t_total, config.n_exp_p, self.n_members)
        self.compiled: CompiledStep | None = None  # see enable_compile

    # ------------------------------------------------------------------ basic pieces
    @property
    def is_poisson(self) -> bool:
        return self.config.posterior == "poisson"

    def _row(self, param: Tensor) -> Tensor:
        """A per-latent or per-pixel parameter as it broadcasts over [B, K] / [B, M]:
        itself, or a population's [P, K] viewed [P, 1, K]."""
        return param if self.n_members is None else param.unsqueeze(-2)

    def _member(self, value, rank: int = 3):
        """A per-member number broadcast over [P, B, K] (`members.member_view`)."""
        return member_view(value, self.n_members, rank)

    def _log_lr(self, i: int) -> Tensor:
        """log_lr of component i: 0-dim, or a population's [P, 1, 1]."""
        return self.log_lr[i] if self.n_members is None else self.log_lr[:, i].view(-1, 1, 1)

    def _beta_inner(self):
        if self.n_members is None:
            return self.config.beta_inner
        return self.member_beta_inner.view(-1, 1, 1)

    def is_sequence(self, inputs: Tensor) -> bool:
        """Whether inputs hold one input per step ([n_steps, B, M]; a population's
        [n_steps, P, B, M]) rather than one for every step ([B, M] or [P, B, M])."""
        return inputs.dim() == (3 if self.n_members is None else 4)

    def activation(self, z: Tensor) -> Tensor:
        """a(z): identity, or relu(z) exp(log_gain) for igrelu. [B, K] -> [B, K]."""
        if self.config.preset == "igrelu":
            return torch.relu(z) * torch.exp(self._row(self.log_gain))
        return z

    def activation_derivative(self, z: Tensor) -> Tensor | None:
        """a'(z) [B, K]; None where a is the identity (saves a multiply)."""
        if self.config.preset == "igrelu":
            return (z > 0).to(z.dtype) * torch.exp(self._row(self.log_gain))
        return None

    def decode(self, z: Tensor) -> Tensor:
        """Reconstruction mean x_hat = W a(z): [B, K] -> [B, M]."""
        return self.activation(z) @ self.W.transpose(-1, -2)

    def dec_log_sigma_effective(self) -> Tensor:
        """Effective decoder log-std [M] ([P, M])."""
        return clamps.effective_dec_log_sigma(self.dec_log_sigma)

    def init_state(self, batch_size: int) -> State:
        """The learnable initial state u_init broadcast over the batch: C x [B, K]
        (a population: C x [P, B, K])."""
        k = self.config.n_latents
        if self.n_members is None:
            return State(tuple(u.expand(batch_size, k) for u in self.u_init))
        return State(tuple(u.unsqueeze(1).expand(-1, batch_size, k) for u in self.u_init.unbind(1)))

    def reattach_to_init(self, state: State) -> State:
        """u <- u_init + stopgrad(u - u_init): cut the graph between TBPTT cycles but let
        the gradient still reach u_init (SPEC 6)."""
        inits = self.init_state(state.batch_size).components
        return State(tuple(
            u0 + (u - u0).detach() for u0, u in zip(inits, state.components, strict=True)
        ))

    # ------------------------------------------------------------------ sampling
    def draw_noise(self, state: State, temp: float, t: int = 0,
                   generator: torch.Generator | None = None) -> Tensor | None:
        """Standard noise behind one sample: Exp(1) [n_exp, B, K] (Poisson, tau > 0),
        N(0, 1) [B, K] (Gaussian), None for the exact Poisson sampler (tau = 0); a
        population: `members.draw_member_noise`."""
        if self.n_members is not None:
            return draw_member_noise(self, state, temp, t, generator)
        ref = state.components[0]
        if self.is_poisson:
            if temp == 0:
                return None
            n_exp = self.n_exp_at(t, state)
            return poisson.exponential_noise(n_exp, ref.shape, ref.device, generator)
        return torch.randn(ref.shape, device=ref.device, generator=generator)

    def sample(self, state: State, temp: float, noise: Tensor | None,
               generator: torch.Generator | None = None, t: int = 0) -> Tensor:
        """z ~ q(z | state) at temperature temp (SPEC 4), [B, K]; reparameterised except
        for the exact Poisson sample at temp 0 (which uses `generator`).

        noise None draws it from `generator`: the relaxed Poisson sampler then streams its
        n_exp(t) arrivals through [B, K] buffers (the same numbers as
        `sample(state, temp, draw_noise(state, temp, t, generator))`, without ever
        holding the [n_exp, B, K] noise).
        A population: `members.sample_members`.
        """
        if self.n_members is not None:
            return sample_members(self, state, temp, noise, generator, t)
        if self.is_poisson:
            u = state.components[0]
            if temp == 0:
                return poisson.exact_poisson(u, generator)
            if noise is None:
                return poisson.relaxed_poisson(u, temp, n_exp=self.n_exp_at(t, state),
                                               generator=generator)
            return poisson.relaxed_poisson(u, temp, noise)
        mu, xi = state.components
        if noise is None:
            noise = self.draw_noise(state, temp, t, generator)
        return gaussian.gaussian_sample(mu, xi, temp, noise)

    # ------------------------------------------------------------------ one update
    def recon_grad(self, x: Tensor, z: Tensor) -> Tensor:
        """g_rec = -a'(z) * (W^T ((x - W a(z)) / sigma_dec^2)), the gradient of the
        reconstruction loss w.r.t. z (SPEC 3.2). x [B, M], z [B, K] -> [B, K]."""
        inv_var = torch.exp(-2.0 * self._row(self.dec_log_sigma_effective()))
        # (W a(z) - x) carries the minus sign: bit for bit -(x - W a(z)), one pass less
        error = (self.decode(z) - x) * inv_var
        grad = error @ self.W
        deriv = self.activation_derivative(z)
        return grad if deriv is None else grad * deriv

    def free_energy_grad(self, x: Tensor, state: State, z: Tensor, temp: float = 1.0,
                         prior: State | None = None) -> tuple[Tensor, ...]:
        """The (scaled) free-energy gradient the update follows, one [B, K] per component.

        Poisson: g = g_rec [+ beta_inner (u - u0)] + exp(log_bias).
        Gaussian: noise e = (z - mu) / (tau sigma); g_mu = g_rec, g_xi = g_rec e sigma
        [+ beta_inner ((mu - mu0) / sigma0^2, exp(2 (xi - xi0)) - 1)]; natural-gradient
        scaling g_mu *= sigma^2, g_xi *= 1/2; then g_mu += exp(log_bias).
        The inner-KL terms enter only when n_iters_inner > 1 (then `prior` is needed).
        """
        cfg = self.config
        g_rec = self.recon_grad(x, z)
        with_kl = cfg.n_iters_inner > 1
        if with_kl and prior is None:
            raise ValueError("n_iters_inner > 1 needs the step's prior state")
        if self.is_poisson:
            (u,) = state.components
            g = g_rec
            if with_kl:
                g = g + self._beta_inner() * (u - prior.components[0])
            return (g + torch.exp(self._row(self.log_bias)),)
        mu, xi = state.components
        sigma = torch.exp(xi)
        with torch.no_grad():
            noise = (z - mu) / (self._member(temp) * sigma)
        g_mu = g_rec
        g_xi = g_rec * noise * sigma
        if with_kl:
            mu0, xi0 = prior.components
            beta_inner = self._beta_inner()
            g_mu = g_mu + beta_inner * (mu - mu0) / torch.exp(2.0 * xi0)
            g_xi = g_xi + beta_inner * (torch.exp(2.0 * (xi - xi0)) - 1.0)
        g_mu = g_mu * sigma**2 + torch.exp(self._row(self.log_bias))
        return (g_mu, 0.5 * g_xi)

    def clamp_state_step(self, values: Tensor, index: int, which: str,
                         eps: float | Tensor) -> Tensor:
        """Soft clamp of a step ('du') or of the new state ('u') of component `index`."""
        cfg = self.config
        c_final = (cfg.clamp_du if which == "du" else cfg.clamp_u)[index]
        c = clamps.clamp_ceiling(self._member(eps), c_final, cfg.posterior)
        if self.is_poisson:
            return clamps.poisson_clamp(values, c)
        return clamps.softclamp_sym(values, c)

    def update(self, x: Tensor, state: State, z: Tensor, eps: float | Tensor = 1.0,
               temp: float = 1.0, prior: State | None = None) -> State:
        """One gradient update of the state, deterministic given the sample z (SPEC 3.3-3.4).

        d_c = clamp(-exp(log_lr_c) g_c, c_du); new_c = clamp(state_c + d_c, c_u).
        x [B, M]; z [B, K]; `temp` is needed to recover the Gaussian noise from z;
        `prior` (the state at the start of the step) only when n_iters_inner > 1.
        """
        prior_c = None if prior is None else prior.components
        if self.compiled is not None:
            new = self.compiled.update(self, x, state.components, z, eps, temp, prior_c)
            if new is not None:
                return State(new)
            self.disable_compile()
        if not self.fast_path:
            return State(plain_update(self, x, state.components, z, eps, temp, prior_c))
        grads = self.free_energy_grad(x, state, z, temp, prior)
        cfg = self.config
        eps = self._member(eps)
        new = []
        for i, (value, grad) in enumerate(zip(state.components, grads, strict=True)):
            c_du = clamps.clamp_ceiling(eps, cfg.clamp_du[i], cfg.posterior)
            c_u = clamps.clamp_ceiling(eps, cfg.clamp_u[i], cfg.posterior)
            new.append(clamps.state_step(value, grad, self._log_lr(i), c_du, c_u, cfg.posterior))
        return State(tuple(new))

    def enable_compile(self, mode: str | None = None, **options) -> bool:
        """Run the update and the step outputs through torch.compile (forward and
        backward; `fondtrain.model.compiled`). Returns False (and stays eager) where
        torch.compile is unavailable; a compiled part that fails warns once and the model
        goes back to the eager step for good. mode: torch.compile's (None = default)."""
        self.compiled = compile_step(plain_update, plain_outputs, mode, **options)
        return self.compiled is not None

    def disable_compile(self) -> None:
        self.compiled = None

    # ------------------------------------------------------------------ one step
    def kl(self, state: State, prior: State, temp: float = 1.0) -> Tensor:
        """KL(q(state) || q(prior)) per latent, [B, K] (SPEC 5)."""
        if self.is_poisson:
            u, u0 = state.components[0], prior.components[0]
            if self.n_members is not None:
                return poisson_kl_members(u, u0, self.member_kl_reference)
            return poisson.poisson_kl(u, u0, self.config.poisson_kl)
        (mu, xi), (mu0, xi0) = state.components, prior.components
        return gaussian.gaussian_kl(mu, xi, mu0, xi0, self._member(temp))

    def kl_both_forms(self, state: State, prior: State) -> dict[str, Tensor]:
        """Poisson only: both KL forms {'reference', 'exact'}, each [B, K]."""
        u, u0 = state.components[0], prior.components[0]
        return {form: poisson.poisson_kl(u, u0, form) for form in ("reference", "exact")}

    def step(self, x: Tensor, state: State, temp: float, beta: float, eps: float | Tensor = 1.0,
             t: int = 0, noise: tuple[Tensor | None, ...] | None = None,
             generator: torch.Generator | None = None, outputs: bool = True) -> StepOutput:
        """One inference step at time t (SPEC 3): n_iters_inner updates against the prior
        u0 = `state`, then a fresh sample from the new state, its reconstruction and losses.

        noise: optional standard noise for the n_iters_inner update samples followed by
        the output sample (for exact replay); drawn with `generator` when None.
        outputs=False stops after the updates: no output sample, decode, NLL or KL (z,
        x_hat, recon, kl and loss are None). The state's dynamics do not depend on them.
        """
        cfg = self.config
        prior = state
        n_inner = cfg.n_iters_inner
        if noise is None:
            noise = (None,) * (n_inner + 1)
        grad_samples = []
        for n in range(n_inner):
            z = self.sample(state, temp, noise[n], generator, t)
            grad_samples.append(z)
            state = self.update(x, state, z, eps, temp, prior)
        if not outputs:
            return StepOutput(state, None, None, None, None, None, tuple(grad_samples), prior)
        z = self.sample(state, temp, noise[n_inner], generator, t)
        outputs = None
        if self.compiled is not None:
            outputs = self.compiled.outputs(self, x, state.components, prior.components, z,
                                            beta, temp)
            if outputs is None:
                self.disable_compile()
        if outputs is None:
            outputs = plain_outputs(self, x, state.components, prior.components, z, beta, temp)
        x_hat, recon, kl, loss = outputs
        return StepOutput(state, z, x_hat, recon, kl, loss, tuple(grad_samples), prior)

    def step_loss(self, recon: Tensor, kl: Tensor, beta: float | Tensor) -> Tensor:
        """mean_b(recon + beta sum_k kl) * 256 / M (SPEC 6): recon [B], kl [B, K] -> []
        (a population: [P, B], [P, B, K] -> each member's loss [P])."""
        beta = self._member(beta, rank=2)
        return (recon + beta * kl.sum(-1)).mean(-1) * (256.0 / self.config.input_dim)

    # ------------------------------------------------------------------ one TBPTT cycle
    def forward(self, inputs: Tensor, state: State, t_start: int, n_steps: int, temp: float,
                beta: float, eps: float | Tensor = 1.0,
                noise: list[tuple[Tensor | None, ...]] | None = None,
                generator: torch.Generator | None = None) -> CycleOutput:
        """One TBPTT cycle: n_steps consecutive steps from time t_start on the same batch.

        inputs: [B, M] (the same input each step) or [n_steps, B, M] (a feeder's sequence);
        a population also takes [P, B, M] and needs a sequence as [n_steps, P, B, M].
        The loss is the mean of the steps' losses (SPEC 6), a population's one per member
        [P] (train on their sum: member i's gradient is then its own loss's). This is `forward` so that DDP
        sees exactly one forward per backward. Statistics are detached device tensors:
        read them only every few steps (no host sync in the cycle). A population on a CPU
        runs a few members at a time (`member_chunks`: cache-sized tensors, same numbers).
        """
        if member_chunks.use_chunks(self, state, generator):
            return member_chunks.chunked_forward(self, inputs, state, t_start, n_steps, temp,
                                                 beta, eps, noise, generator)
        losses, recons, kls, max_rates = [], [], [], []
        out = None
        for i in range(n_steps):
            x = inputs[i] if self.is_sequence(inputs) else inputs
            step_noise = None if noise is None else noise[i]
            out = self.step(x, state, temp, beta, eps, t_start + i, step_noise, generator)
            losses.append(out.loss)
            with torch.no_grad():
                recons.append(out.recon.mean(-1))
                kls.append(out.kl.sum(-1).mean(-1))
                if self.is_poisson:  # exp(max u) = max exp(u): exp is monotone
                    u = out.state.components[0]
                    max_rates.append(torch.exp(u.max() if self.n_members is None else u.flatten(1).amax(1)))
            state = out.state
        step_losses = torch.stack(losses)
        last_x = inputs[-1] if self.is_sequence(inputs) else inputs
        return CycleOutput(
            loss=step_losses.mean(0),
            state=state,
            step_losses=step_losses.detach(),
            recon=torch.stack(recons),
            kl=torch.stack(kls),
            max_rate=torch.stack(max_rates) if max_rates else None,
            last_z=out.z.detach(),
            last_x_hat=out.x_hat.detach(),
            last_x=last_x,
        )


def plain_update(model: IterativeVAE, x: Tensor, components: tuple[Tensor, ...], z: Tensor,
                 eps: float | Tensor, temp: float | Tensor,
                 prior: tuple[Tensor, ...] | None) -> tuple[Tensor, ...]:
    """The update as the plain composition of SPEC 3.3-3.4, left to autograd: the
    reference the fused `clamps.state_step` is tested against, the `fast_path = False`
    update and what torch.compile fuses. Components C x [B, K] -> C x [B, K]."""
    state = State(components)
    prior_state = None if prior is None else State(prior)
    grads = model.free_energy_grad(x, state, z, temp, prior_state)
    return tuple(
        model.clamp_state_step(value + model.clamp_state_step(
            -torch.exp(model._log_lr(i)) * grad, i, "du", eps), i, "u", eps)
        for i, (value, grad) in enumerate(zip(components, grads, strict=True))
    )


def plain_outputs(model: IterativeVAE, x: Tensor, components: tuple[Tensor, ...],
                  prior: tuple[Tensor, ...], z: Tensor, beta, temp):
    """A step's outputs from its fresh sample z: x_hat [B, M], recon [B], kl [B, K], loss."""
    x_hat = model.decode(z)
    recon = gaussian.gaussian_nll(x, x_hat, model._row(model.dec_log_sigma_effective()))
    kl = model.kl(State(components), State(prior), temp)
    return x_hat, recon, kl, model.step_loss(recon, kl, beta)

