"""The iterative VAEs: iP-VAE (`ipvae`), iG-VAE (`igvae`) and iGrelu-VAE (`igrelu`).

There is no encoder. The posterior of each input is a *state* refined by gradient steps on
the free energy (SPEC 3); the decoder is a linear dictionary W. The step function is pure
given (parameters, x, state, noise): state lives in a small `State` dataclass passed in
and out, never in module attributes.

Every model is a population (SPEC 9): P members that share every shape, each exactly the
single model of its own config. A plain run is P = 1. Every parameter, state and output
has the member axis first; per-member numbers (temperature, beta, eps, beta_inner) are
floats or [P] tensors viewed [P, 1, 1], so each product, clamp and KL is the single
model's expression broadcast over the member axis. (A leading axis rather than
torch.func.stack_module_state + vmap: the fused autograd Functions and the host-side
samplers would each need a vmap rule, while an explicit axis is plain broadcasting.)

Notation: P members, B batch, M input dimension, K latents, C state components (1 Poisson
log-rate u; 2 Gaussian mean mu and log-std xi). Inputs are shared [B, M] or per member
[P, B, M]; a sequence of inputs (a feeder's) is [n_steps, P or 1, B, M].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fondtrain.config import ModelConfig
from fondtrain.model import clamps, cycle, gaussian, poisson
from fondtrain.model.n_exp import NExpTable
from fondtrain.model.parameters import check_members, initial_parameters
from fondtrain.model.random_streams import (
    hashed_normal,
    member_exponential_noise,
    member_generators,
    member_normal_noise,
)
from fondtrain.model.relaxed_poisson import relaxed_poisson
from fondtrain.model.states import CycleOutput, State, StepOutput


class IterativeVAE(NExpTable, nn.Module):
    """Parameters (SPEC 2) and the inference dynamics (SPEC 3-5) of P members of one preset.

    Parameters: W [P, M, K], dec_log_sigma [P, M], log_bias [P, K], log_lr [P, C],
    u_init [P, C, K], log_gain [P, K] (igrelu only). Buffer: n_exp [P, t_total], the
    relaxed Poisson sampler's length of each member at each step (`NExpTable`).

    `members`: the members' ModelConfigs, differing from `config` only in MEMBER_FIELDS
    (none: the one member `config`). Member i starts from the initial parameters of its
    own seed and init_scale. `generators` (one per member, or None) is where a call that
    passes none draws its noise (training sets them per step).

    `fast_path` (default True) runs the state step as one autograd node
    (`clamps.state_step`); False (and inside torch.compile, which fuses the plain form
    itself) runs the plain composition `plain_update`; the two are tested equal.
    `enable_compile` runs each TBPTT cycle as one compiled graph (`fondtrain.model.cycle`).
    """

    fast_path: bool = True
    # one member multiplies 2-D matrices (`dictionary_product`); a member chunk of a
    # population (`cycle`) keeps the population's batched products, and so its numbers
    two_d_products: bool = True

    def __init__(self, config: ModelConfig, members: Sequence[ModelConfig] = ()):
        super().__init__()
        members = list(members) or [config]
        check_members(config, members)
        self.config, self.members, self.n_members = config, members, len(members)
        singles = [initial_parameters(m) for m in members]
        for name in singles[0]:
            setattr(self, name, nn.Parameter(torch.stack([s[name] for s in singles])))
        # per-member constants of the dynamics: one value when the members agree (the cheaper
        # expression), else a [P] buffer (not saved: the configs hold them)
        for name, values in (("beta_inner", [m.beta_inner for m in members]),
                             ("kl_reference", [m.poisson_kl == "reference" for m in members])):
            if len(set(values)) == 1:
                setattr(self, name, values[0])
            else:
                self.register_buffer(name, torch.tensor(values), persistent=False)
        self.generators: list[torch.Generator | None] | None = None
        self.register_n_exp(config.t_total, config.n_exp_p, self.n_members)
        self.compiled_cycle = None  # see enable_compile
        self.graph_n_max = 0  # the compiled sampler's loop length (set per cycle)

    # ------------------------------------------------------------------ basic pieces
    @property
    def is_poisson(self) -> bool:
        return self.config.posterior == "poisson"

    def member(self, value, rank: int = 3):
        """A per-member number as it broadcasts over [P, B, K] (rank 3) or [P, B] (rank 2):
        floats and 0-dim tensors as they are; [P] tensors viewed [P, 1, 1] (or [P, 1]) in
        float32 on the model's device (schedules give float64 on the host, which would
        otherwise promote the state)."""
        if not isinstance(value, Tensor) or value.dim() == 0:
            return value
        value = value.to(device=self.W.device, dtype=torch.float32, non_blocking=True)
        return value.view((-1,) + (1,) * (rank - 1))

    def is_sequence(self, inputs: Tensor) -> bool:
        """Whether inputs hold one input per step ([n_steps, P or 1, B, M]) rather than one
        for every step ([B, M] or [P, B, M])."""
        return inputs.dim() == 4

    def activation(self, z: Tensor) -> Tensor:
        """a(z): identity, or relu(z) exp(log_gain) for igrelu. [P, B, K] -> [P, B, K]."""
        if self.config.preset == "igrelu":
            return torch.relu(z) * torch.exp(self.log_gain.unsqueeze(-2))
        return z

    def activation_derivative(self, z: Tensor) -> Tensor | None:
        """a'(z) [P, B, K]; None where a is the identity (saves a multiply)."""
        if self.config.preset == "igrelu":
            return (z > 0).to(z.dtype) * torch.exp(self.log_gain.unsqueeze(-2))
        return None

    def decode(self, z: Tensor) -> Tensor:
        """Reconstruction mean x_hat = W a(z): [P, B, K] -> [P, B, M]."""
        return self._times_dictionary(self.activation(z), transpose=True)

    def _times_dictionary(self, a: Tensor, transpose: bool = False) -> Tensor:
        """a @ W (a @ W^T), as 2-D products for one member (`dictionary_product`)."""
        return dictionary_product(a, self.W, transpose, two_d=self.two_d_products and self.n_members == 1)

    def dec_log_sigma_effective(self) -> Tensor:
        """Effective decoder log-std [P, M]."""
        return clamps.effective_dec_log_sigma(self.dec_log_sigma)

    def init_state(self, batch_size: int) -> State:
        """The learnable initial state u_init broadcast over the batch: C x [P, B, K]."""
        k = self.config.n_latents
        return State(tuple(u.unsqueeze(1).expand(-1, batch_size, k) for u in self.u_init.unbind(1)))

    def reattach_to_init(self, state: State) -> State:
        """u <- u_init + stopgrad(u - u_init): cut the graph between TBPTT cycles but let
        the gradient still reach u_init (SPEC 6)."""
        inits = self.init_state(state.batch_size).components
        return State(tuple(u0 + (u - u0).detach() for u0, u in zip(inits, state.components, strict=True)))

    # ------------------------------------------------------------------ sampling
    def draw_noise(self, state: State, temp, t: int = 0, generators=None) -> Tensor | None:
        """The standard noise behind one sample, each member's from its own generator
        (for exact replay): Exp(1) [n_max, P, B, K] (Poisson, tau > 0; member i's first
        n_exp[i, t] rows), N(0, 1) [P, B, K] (Gaussian), None at tau = 0 (exact Poisson)."""
        ref = state.components[0]
        gens = generators if generators is not None else self.generators
        if not self.is_poisson:
            return member_normal_noise(ref.shape, ref.device, gens)
        if _all_zero(temp):
            return None
        return member_exponential_noise(self.n_exp_at(t, state), ref.shape[1:], ref.device, gens)

    def sample(self, state: State, temp, noise: Tensor | None = None, generators=None, t: int = 0,
               keys: Tensor | None = None, draw: int = 0) -> Tensor:
        """z ~ q(z | state) at temperature temp (SPEC 4), [P, B, K]; reparameterised except
        for the exact Poisson sample at temp 0.

        noise: `draw_noise`'s layout (exact replay); else drawn from `generators` (one per
        member; None: the model's own, else torch's default generator). Inside
        torch.compile the draws come from the hashed streams of `keys` [P, 2], `draw`
        numbering the window's samples (`fondtrain.model.cycle`).
        """
        gens = generators if generators is not None else self.generators
        if self.is_poisson:
            u = state.components[0]
            if torch.compiler.is_compiling():
                return relaxed_poisson(u, temp, self.n_exp[:, t], noise, keys=keys,
                                       first_draw=draw * self.graph_n_max, n_max=self.graph_n_max)
            if _all_zero(temp):
                return torch.stack([poisson.exact_poisson(u[i], g) for i, g in
                                    enumerate(member_generators(gens, self.n_members))])
            return relaxed_poisson(u, temp, self.n_exp_at(t, state), noise, gens)
        mu, xi = state.components
        if noise is None:
            if torch.compiler.is_compiling():
                noise = torch.randn_like(mu) if keys is None else hashed_normal(mu, keys, draw)
            else:
                noise = self.draw_noise(state, temp, t, gens)
        return gaussian.gaussian_sample(mu, xi, self.member(temp), noise)

    # ------------------------------------------------------------------ one update
    def recon_grad(self, x: Tensor, z: Tensor) -> Tensor:
        """g_rec = -a'(z) * (W^T ((x - W a(z)) / sigma_dec^2)), the gradient of the
        reconstruction loss w.r.t. z (SPEC 3.2). x [B, M] or [P, B, M], z [P, B, K] ->
        [P, B, K]."""
        inv_var = torch.exp(-2.0 * self.dec_log_sigma_effective()).unsqueeze(-2)
        # (W a(z) - x) carries the minus sign: bit for bit -(x - W a(z)), one pass less
        error = (self.decode(z) - x) * inv_var
        grad = self._times_dictionary(error)
        deriv = self.activation_derivative(z)
        return grad if deriv is None else grad * deriv

    def free_energy_grad(self, x: Tensor, state: State, z: Tensor, temp=1.0,
                         prior: State | None = None) -> tuple[Tensor, ...]:
        """The (scaled) free-energy gradient the update follows, one [P, B, K] per component.

        Poisson: g = g_rec [+ beta_inner (u - u0)] + exp(log_bias).
        Gaussian: noise e = (z - mu) / (tau sigma); g_mu = g_rec, g_xi = g_rec e sigma
        [+ beta_inner ((mu - mu0) / sigma0^2, exp(2 (xi - xi0)) - 1)]; natural-gradient
        scaling g_mu *= sigma^2, g_xi *= 1/2; then g_mu += exp(log_bias).
        The inner-KL terms enter only when n_iters_inner > 1 (then `prior` is needed).
        """
        g_rec = self.recon_grad(x, z)
        with_kl = self.config.n_iters_inner > 1
        if with_kl and prior is None:
            raise ValueError("n_iters_inner > 1 needs the step's prior state")
        beta_inner = self.member(self.beta_inner)
        bias = torch.exp(self.log_bias.unsqueeze(-2))
        if self.is_poisson:
            (u,) = state.components
            g = g_rec
            if with_kl:
                g = g + beta_inner * (u - prior.components[0])
            return (g + bias,)
        mu, xi = state.components
        sigma = torch.exp(xi)
        with torch.no_grad():
            noise = (z - mu) / (self.member(temp) * sigma)
        g_mu = g_rec
        g_xi = g_rec * noise * sigma
        if with_kl:
            mu0, xi0 = prior.components
            g_mu = g_mu + beta_inner * (mu - mu0) / torch.exp(2.0 * xi0)
            g_xi = g_xi + beta_inner * (torch.exp(2.0 * (xi - xi0)) - 1.0)
        return (g_mu * sigma**2 + bias, 0.5 * g_xi)

    def clamp_ceilings(self, index: int, eps) -> tuple:
        """(c_du, c_u) of state component `index` at clamp opening eps (SPEC 3.3-3.4)."""
        cfg = self.config
        eps = self.member(eps)
        return tuple(clamps.clamp_ceiling(eps, c_final[index], cfg.posterior)
                     for c_final in (cfg.clamp_du, cfg.clamp_u))

    def log_lr_of(self, index: int) -> Tensor:
        """log_lr of state component `index`, [P, 1, 1]."""
        return self.log_lr[:, index].view(-1, 1, 1)

    def update(self, x: Tensor, state: State, z: Tensor, eps=1.0, temp=1.0,
               prior: State | None = None) -> State:
        """One gradient update of the state, deterministic given the sample z (SPEC 3.3-3.4).

        d_c = clamp(-exp(log_lr_c) g_c, c_du); new_c = clamp(state_c + d_c, c_u).
        `temp` is needed to recover the Gaussian noise from z; `prior` (the state at the
        start of the step) only when n_iters_inner > 1.
        """
        prior_c = None if prior is None else prior.components
        if not self.fast_path or torch.compiler.is_compiling():
            return State(plain_update(self, x, state.components, z, eps, temp, prior_c))
        grads = self.free_energy_grad(x, state, z, temp, prior)
        new = []
        for i, (value, grad) in enumerate(zip(state.components, grads, strict=True)):
            c_du, c_u = self.clamp_ceilings(i, eps)
            new.append(clamps.state_step(value, grad, self.log_lr_of(i), c_du, c_u, self.config.posterior))
        return State(tuple(new))

    # ------------------------------------------------------------------ one step
    def kl(self, state: State, prior: State, temp=1.0) -> Tensor:
        """KL(q(state) || q(prior)) per latent, [P, B, K] (SPEC 5), each member its own
        Poisson KL form."""
        if self.is_poisson:
            return poisson.poisson_kl(state.components[0], prior.components[0], self.kl_reference)
        (mu, xi), (mu0, xi0) = state.components, prior.components
        return gaussian.gaussian_kl(mu, xi, mu0, xi0, self.member(temp))

    def kl_both_forms(self, state: State, prior: State) -> dict[str, Tensor]:
        """Poisson only: both KL forms {'reference', 'exact'}, each [P, B, K]."""
        u, u0 = state.components[0], prior.components[0]
        return {form: poisson.poisson_kl(u, u0, form == "reference") for form in ("reference", "exact")}

    def step(self, x: Tensor, state: State, temp, beta, eps=1.0, t: int = 0,
             noise: tuple[Tensor | None, ...] | None = None, generators=None, outputs: bool = True,
             keys: Tensor | None = None, draw: int = 0) -> StepOutput:
        """One inference step at time t (SPEC 3): n_iters_inner updates against the prior
        u0 = `state`, then a fresh sample from the new state, its reconstruction and losses.

        noise: optional standard noise for the n_iters_inner update samples followed by
        the output sample (for exact replay); drawn from `generators` when None (`keys`,
        `draw`: inside torch.compile, see `sample`).
        outputs=False stops after the updates: no output sample, decode, NLL or KL (z,
        x_hat, recon, kl and loss are None). The state's dynamics do not depend on them.
        """
        prior = state
        n_inner = self.config.n_iters_inner
        if noise is None:
            noise = (None,) * (n_inner + 1)
        grad_samples = []
        for n in range(n_inner):
            z = self.sample(state, temp, noise[n], generators, t, keys, draw + n)
            grad_samples.append(z)
            state = self.update(x, state, z, eps, temp, prior)
        if not outputs:
            return StepOutput(state, None, None, None, None, None, tuple(grad_samples), prior)
        z = self.sample(state, temp, noise[n_inner], generators, t, keys, draw + n_inner)
        x_hat = self.decode(z)
        recon = gaussian.gaussian_nll(x, x_hat, self.dec_log_sigma_effective().unsqueeze(-2))
        kl = self.kl(state, prior, temp)
        return StepOutput(state, z, x_hat, recon, kl, self.step_loss(recon, kl, beta),
                          tuple(grad_samples), prior)

    def step_loss(self, recon: Tensor, kl: Tensor, beta) -> Tensor:
        """Each member's mean_b(recon + beta sum_k kl) * 256 / M (SPEC 6): recon [P, B],
        kl [P, B, K] -> [P]."""
        beta = self.member(beta, rank=2)
        return (recon + beta * kl.sum(-1)).mean(-1) * (256.0 / self.config.input_dim)

    # ------------------------------------------------------------------ one TBPTT cycle
    def forward(self, inputs: Tensor, state: State, t_start: int, n_steps: int, temp, beta, eps=1.0,
                noise: list[tuple[Tensor | None, ...]] | None = None, generators=None) -> CycleOutput:
        """One TBPTT cycle: n_steps consecutive steps from time t_start on the same batch
        (`fondtrain.model.cycle.run`), eager or compiled (`enable_compile`).

        inputs: [B, M] or [P, B, M] (the same input each step), or [n_steps, P or 1, B, M]
        (a feeder's sequence). The loss is each member's mean step loss [P] (train on their
        sum: member i's gradient is then its own loss's). This is `forward` so that DDP sees
        exactly one forward per backward. Statistics are detached device tensors: read them
        only every few steps (no host sync in the cycle).
        """
        return cycle.run(self, inputs, state, t_start, n_steps, temp, beta, eps, noise,
                         generators if generators is not None else self.generators)

    def enable_compile(self, mode: str | None = None, **options) -> bool:
        """Run every TBPTT cycle as one torch.compile graph (forward and backward, fullgraph;
        `fondtrain.model.cycle`). Returns False (and stays eager) where torch.compile is
        unavailable; a graph that fails warns once and the model goes back to eager."""
        self.compiled_cycle = cycle.compile_cycle(mode, **options)
        return self.compiled_cycle is not None

    # ------------------------------------------------------------------ state dicts
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Also read a single model's layout (no member axis, what fondtrain wrote before
        every model had one, what `export` writes and the reference importer builds) into
        a population of one."""
        for name, value in list(self._parameters.items()) + list(self._buffers.items()):
            key = prefix + name
            saved = state_dict.get(key)
            if value is not None and saved is not None and saved.dim() == value.dim() - 1 \
                    and value.shape[0] == 1 and saved.shape == value.shape[1:]:
                state_dict[key] = saved.unsqueeze(0)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def member_state_dict(self, index: int) -> dict[str, Tensor]:
        """Member `index` as a single model's state dict (no member axis), detached copies."""
        return {name: value[index].detach().clone() for name, value in self.state_dict().items()}


def dictionary_product(a: Tensor, W: Tensor, transpose: bool = False, two_d: bool = False) -> Tensor:
    """a @ W (a @ W^T with `transpose`) per member: a [P, B, K or M], W [P, M, K].

    `two_d` (one member) multiplies 2-D matrices: their backward gives W's gradient in
    W's own layout, while a batched product's gives the transposed use's gradient
    transposed, slow to add to the others' (a plain run is P = 1; a test holds both forms
    equal to float rounding)."""
    if two_d:
        w = W.squeeze(0)
        return (a.squeeze(0) @ (w.T if transpose else w)).unsqueeze(0)
    return a @ (W.transpose(-1, -2) if transpose else W)


def plain_update(model: IterativeVAE, x: Tensor, components: tuple[Tensor, ...], z: Tensor,
                 eps, temp, prior: tuple[Tensor, ...] | None) -> tuple[Tensor, ...]:
    """The update as the plain composition of SPEC 3.3-3.4, left to autograd: the
    reference the fused `clamps.state_step` is tested against, and what torch.compile
    fuses. Components C x [P, B, K] -> C x [P, B, K]."""
    grads = model.free_energy_grad(x, State(components), z, temp, None if prior is None else State(prior))
    clamp = clamps.poisson_clamp if model.is_poisson else clamps.softclamp_sym
    new = []
    for i, (value, grad) in enumerate(zip(components, grads, strict=True)):
        c_du, c_u = model.clamp_ceilings(i, eps)
        new.append(clamp(value + clamp(-torch.exp(model.log_lr_of(i)) * grad, c_du), c_u))
    return tuple(new)


def _all_zero(temp) -> bool:
    """Whether every member samples at temperature 0 (the exact Poisson sampler)."""
    if isinstance(temp, Tensor):
        return bool((temp == 0).all())
    return float(temp) == 0.0
