"""One TBPTT cycle (SPEC 6): t_train consecutive inference steps of every member on one
batch, with the loss each member trains on. `IterativeVAE.forward` runs it; the
trainer's backward, clipping and optimiser step follow (`fondtrain.train.batch`).

One loop (`steps_loop`) computes the cycle, run one of three ways, the same numbers given
the same draws (tested):
- eager, as written;
- eager on a CPU with more members than fit a core's cache, a few members at a time
  (`_in_member_chunks`): at vH16 sizes (B 200, K 512) a P = 64 igvae cycle over whole
  [64, 200, 512] tensors (26 MB each) cost 1.15-1.19x per member the CPU time of one
  member's cycle, in chunks of 8 members 1.08x (benchmarks/RESULTS.md): each op's
  operands come closer to one member's 400 KB, while a chunk keeps what batching gains.
  Member i's numbers are its own either way: every op acts on member i's slice alone
  and member i draws from its own generator (chunks need every member to have one);
- compiled (`enable_compile`): the same loop as one torch.compile graph, forward and
  backward (AOTAutograd), fullgraph, fixed shapes. Inside it the samplers draw from
  counter-based hashes keyed by two numbers per member from its generator (on CPUs,
  where the compiled torch.rand_like is scalar code; elsewhere torch.rand_like), the
  Poisson sampler runs a fixed number of arrivals (the bucket of the longest n_exp,
  `n_exp.N_EXP_BUCKETS`) and masks those beyond each member's n_exp, and the state step
  is the plain composition, which the compiler fuses. A new bucket (or another window of
  n_iters_outer) compiles a new graph once (`RECOMPILE_LIMIT` graphs at most).
"""

from __future__ import annotations

import copy
import time
import warnings

import torch
from torch import Tensor

from fondtrain.model.n_exp import n_exp_bucket
from fondtrain.model.random_streams import draw_keys, member_generators
from fondtrain.model.states import CycleOutput, State

# Graphs dynamo may build for the cycle (its default, 8, is reached by a run whose n_exp
# crosses a few buckets with n_iters_outer 2: beyond it dynamo would run the loop eagerly).
RECOMPILE_LIMIT = 64
# Largest [c, B, K] float32 state tensor of a CPU member chunk: 8 vH16 members' (3.2 MB),
# the fastest of the chunk sizes 1, 4, 8 and 64 measured on the development machine.
CHUNK_BYTES = 8 * 200 * 512 * 4


def run(model, inputs: Tensor, state: State, t_start: int, n_steps: int, temp, beta, eps,
        noise, generators) -> CycleOutput:
    """The cycle of `model` (an IterativeVAE) from `state`, compiled where enabled."""
    if model.compiled_cycle is not None:
        out = _compiled(model, inputs, state, t_start, n_steps, temp, beta, eps, noise, generators)
        if out is not None:
            return out
    if _use_chunks(model, state, generators):
        return _in_member_chunks(model, inputs, state, t_start, n_steps, temp, beta, eps, noise, generators)
    return CycleOutput(*steps_loop(model, inputs, state.components, t_start, n_steps, temp, beta, eps,
                                   noise, generators), last_x=_last_input(model, inputs))


def steps_loop(model, inputs: Tensor, components: tuple[Tensor, ...], t_start: int, n_steps: int,
               temp, beta, eps, noise, generators=None, keys: Tensor | None = None):
    """n_steps model steps from state `components` on `inputs`. Returns (loss [P] with
    graph, state components, and detached statistics: step_losses [n_steps, P], recon
    [n_steps, P], kl [n_steps, P], max_rate [n_steps, P] (Poisson; None for Gaussians),
    last_z [P, B, K], last_x_hat [P, B, M])."""
    state = State(components)
    samples = model.config.n_iters_inner + 1  # per step: the update samples and the output sample
    losses, recons, kls, max_rates = [], [], [], []
    out = None
    for i in range(n_steps):
        x = inputs[i] if model.is_sequence(inputs) else inputs
        out = model.step(x, state, temp, beta, eps, t_start + i, None if noise is None else noise[i],
                         generators, keys=keys, draw=i * samples)
        losses.append(out.loss)
        with torch.no_grad():
            recons.append(out.recon.mean(-1))
            kls.append(out.kl.sum(-1).mean(-1))
            if model.is_poisson:  # exp(max u) = max exp(u): exp is monotone
                max_rates.append(torch.exp(out.state.components[0].flatten(1).amax(1)))
        state = out.state
    step_losses = torch.stack(losses)
    return (step_losses.mean(0), state, step_losses.detach(), torch.stack(recons), torch.stack(kls),
            torch.stack(max_rates) if max_rates else None, out.z.detach(), out.x_hat.detach())


def _last_input(model, inputs: Tensor) -> Tensor:
    return inputs[-1] if model.is_sequence(inputs) else inputs


# ----------------------------------------------------------------------------- member chunks
def _members_per_chunk(state: State) -> int:
    """How many members a chunk holds: as many as keep one [c, B, K] component within
    CHUNK_BYTES, at least one."""
    ref = state.components[0]
    return max(1, CHUNK_BYTES // (ref[0].numel() * ref.element_size()))


def _use_chunks(model, state: State, generators) -> bool:
    """An eager cycle on a CPU, more members than one chunk holds, each with its own
    generator (a shared default generator would hand out its numbers in another order)."""
    if state.components[0].device.type != "cpu" or model.n_members <= _members_per_chunk(state):
        return False
    return all(g is not None for g in member_generators(generators, model.n_members))


def _member_range(model, start: int, stop: int, params: dict[str, Tensor]):
    """Members start..stop-1 of `model` as a model of their own for one cycle: a shallow
    copy that reads `params` (their slices of the parameters, in the autograd graph) and
    the members' slices of every buffer, configs and generators."""
    part = copy.copy(model)
    part._parameters = dict(params)
    part._buffers = {name: buf[start:stop] for name, buf in model._buffers.items()}
    part.n_members = stop - start
    part.two_d_products = False  # the whole population's batched products, the same numbers
    part.members = model.members[start:stop]
    part.generators = None
    part._n_exp_host = None  # re-read from the sliced n_exp rows
    return part


def _in_member_chunks(model, inputs: Tensor, state: State, t_start: int, n_steps: int, temp, beta,
                      eps, noise, generators) -> CycleOutput:
    """The cycle chunk by chunk, its outputs concatenated on the member axis."""
    size = _members_per_chunk(state)
    p = model.n_members
    params = {name: param.split(size) for name, param in model.named_parameters()}
    comps = [c.split(size) for c in state.components]
    # inputs: shared [B, M], per member [P, B, M], a sequence [n_steps, P or 1, B, M]
    member_dim = 1 if inputs.dim() == 4 else 0 if inputs.dim() == 3 else None
    gens = member_generators(generators, p)

    def cut(value, start, stop):  # a per-member value's slice; shared values as they are
        if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == p:
            return value[start:stop]
        return value

    parts = []
    for k, start in enumerate(range(0, p, size)):
        stop = min(p, start + size)
        part = _member_range(model, start, stop, {n: v[k] for n, v in params.items()})
        x = inputs if member_dim is None or inputs.shape[member_dim] == 1 else \
            inputs.narrow(member_dim, start, stop - start)
        chunk_noise = None if noise is None else [
            tuple(None if n is None else n.narrow(n.dim() - 3, start, stop - start) for n in step)
            for step in noise]
        parts.append(steps_loop(part, x, tuple(c[k] for c in comps), t_start, n_steps,
                                cut(temp, start, stop), cut(beta, start, stop), cut(eps, start, stop),
                                chunk_noise, gens[start:stop]))
    loss, states, step_losses, recon, kl, max_rate, last_z, last_x_hat = zip(*parts, strict=True)
    return CycleOutput(
        loss=torch.cat(loss),
        state=State(tuple(torch.cat(c) for c in zip(*(s.components for s in states), strict=True))),
        step_losses=torch.cat(step_losses, 1), recon=torch.cat(recon, 1), kl=torch.cat(kl, 1),
        max_rate=None if max_rate[0] is None else torch.cat(max_rate, 1),
        last_z=torch.cat(last_z), last_x_hat=torch.cat(last_x_hat), last_x=_last_input(model, inputs))


# ----------------------------------------------------------------------------- compiled
def compile_cycle(mode: str | None = None, **options):
    """`steps_loop` under torch.compile (fullgraph, static shapes), or None (with a
    warning) where torch.compile is missing or refuses. mode: torch.compile's (e.g.
    "reduce-overhead" for CUDA graphs; None = default)."""
    if not hasattr(torch, "compile"):
        return None
    config = torch._dynamo.config
    for limit in ("recompile_limit", "accumulated_recompile_limit"):
        if hasattr(config, limit):
            setattr(config, limit, max(getattr(config, limit), RECOMPILE_LIMIT))
    try:
        return torch.compile(_graph_loop, fullgraph=True, dynamic=False, mode=mode, options=options or None)
    except Exception as exc:  # noqa: BLE001 - any failure means: stay eager
        warnings.warn(f"torch.compile unavailable ({exc}); the cycle stays eager", stacklevel=3)
        return None


def _graph_loop(model, inputs, components, t_start: int, n_steps: int, temp, beta, eps, noise, keys):
    """What compiles: `steps_loop` without generators (draws from `keys` or rand_like)."""
    loss, state, *stats = steps_loop(model, inputs, components, t_start, n_steps, temp, beta, eps,
                                     noise, keys=keys)
    return (loss, state.components, *stats)


def _compiled(model, inputs, state: State, t_start: int, n_steps: int, temp, beta, eps, noise,
              generators) -> CycleOutput | None:
    """The cycle through the compiled graph; None (after a one-line warning, and eager from
    then on) if compiling or running it fails. Schedule values enter as [P] tensors on the
    model's device (their changes never recompile); `compile_s` on the output says how long
    a first call of a new graph took (compile time, to keep out of samples/s)."""
    device, p = model.W.device, model.n_members
    model.graph_n_max = n_exp_bucket(model.longest_n_exp()) if model.is_poisson else 0
    per_sample = model.graph_n_max if model.is_poisson else 2  # arrivals, or Box-Muller's pair
    draws = n_steps * (model.config.n_iters_inner + 1) * per_sample
    hashed = device.type == "cpu" and draws * state.batch_size * model.config.n_latents < 2**32
    keys = draw_keys(generators, p, device) if hashed else None
    # [P] tensors whether a value came as one float or one per member (the same strides:
    # no recompile when the members' values come to agree)
    values = [torch.as_tensor(v, dtype=torch.float32).reshape(-1).expand(p).contiguous().to(device)
              for v in (temp, beta, eps)]
    graphs = _cache_size()
    start = time.perf_counter()
    try:
        loss, components, *stats = model.compiled_cycle(model, inputs, state.components, t_start, n_steps,
                                                        *values, noise, keys)
    except Exception as exc:  # noqa: BLE001 - any compiler failure: back to eager
        model.compiled_cycle = None
        first_line = (str(exc).strip().splitlines() or [""])[0][:200]
        warnings.warn(f"compiling the TBPTT cycle failed ({type(exc).__name__}: {first_line}); "
                      "training continues with the eager cycle", RuntimeWarning, stacklevel=4)
        return None
    out = CycleOutput(loss, State(tuple(components)), *stats, last_x=_last_input(model, inputs))
    out.compile_s = time.perf_counter() - start if _cache_size() > graphs else 0.0
    return out


def _cache_size() -> int:
    """Graphs dynamo has compiled so far (to tell a first call of a new graph)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
