"""A population's TBPTT cycle run a few members at a time on a CPU: the same numbers,
smaller tensors.

Why a CPU-only path: at vH16 sizes (B 200, K 512) a P = 64 igvae cycle over whole
[64, 200, 512] tensors (26 MB each) cost 1.15-1.19x per member the CPU time of a single
model's cycle, in chunks of 8 members 1.08x, of 4 1.11x (interleaved rounds in one
process, benchmarks/RESULTS.md, issue 15): each op's operands come closer to a single
model's 400 KB, which stay in a core's cache, while chunks keep what batching gains (one
Python dispatch for c members). Accelerators want the opposite (whole tensors, fewest
kernel launches): there `IterativeVAE.forward` runs all members at once, as it does on a
CPU where one chunk holds them all.

Member i's numbers are its own either way: every op acts on member i's slice alone and
member i draws from its own generator, so the order in which members run does not
change what they draw. That holds only where every member has its own generator (a
shared default generator would hand out its numbers in another order): otherwise the
cycle runs whole. Backward follows the chunks too: autograd runs the most recently
built nodes first, which are one chunk's graph at a time, and each parameter's chunks
meet in one `split` node whose backward concatenates their gradients.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from fondtrain.model.members import member_generators
from fondtrain.model.states import CycleOutput, State

# Largest [c, B, K] float32 state tensor of a chunk: 8 vH16 members' (3.2 MB), the
# fastest of the chunk sizes 1, 4, 8 and 64 measured on the development machine.
CHUNK_BYTES = 8 * 200 * 512 * 4


def members_per_chunk(state: State) -> int:
    """How many members a chunk holds: as many as keep one [c, B, K] component within
    CHUNK_BYTES, at least one."""
    ref = state.components[0]
    per_member = ref[0].numel() * ref.element_size()
    return max(1, CHUNK_BYTES // per_member)


def use_chunks(model, state: State, generator) -> bool:
    """Whether `model.forward` runs this cycle in member chunks: an eager population on a
    CPU, more members than one chunk holds, each member with its own generator."""
    if model.n_members is None or model.compiled is not None:
        return False
    if state.components[0].device.type != "cpu" or model.n_members <= members_per_chunk(state):
        return False
    gens = member_generators(generator, model.n_members, model.generators)
    return all(g is not None for g in gens)


def _chunked(value, size: int, n_chunks: int) -> list:
    """A per-member [P] value split into chunks of `size`; anything else (floats, 0-dim
    tensors) repeated for every chunk."""
    if isinstance(value, Tensor) and value.dim() > 0:
        return list(value.split(size))
    return [value] * n_chunks


def member_range(model, start: int, stop: int, params: dict[str, Tensor]):
    """Members start..stop-1 of `model` as a population of their own: a shallow copy that
    reads `params` (their slices of the parameters, in the autograd graph) and the
    members' slices of every buffer, configs and generators. Used for one cycle only."""
    part = copy.copy(model)
    part._parameters = dict(params)
    part._buffers = {name: buf[start:stop] for name, buf in model._buffers.items()}
    part.n_members = stop - start
    part.members = model.members[start:stop]
    part.generators = None if model.generators is None else model.generators[start:stop]
    part._n_exp_host = None  # re-read from the sliced n_exp rows
    return part


def chunked_forward(model, inputs: Tensor, state: State, t_start: int, n_steps: int, temp,
                    beta, eps, noise, generator) -> CycleOutput:
    """`IterativeVAE.forward` of a population, chunk by chunk (`members_per_chunk`), its
    outputs concatenated on the member axis: the same CycleOutput as the whole cycle's."""
    size = members_per_chunk(state)
    p = model.n_members
    n_chunks = -(-p // size)
    params = {name: param.split(size) for name, param in model.named_parameters()}
    comps = [c.split(size) for c in state.components]
    # inputs: shared [B, M], per member [P, B, M], a sequence [n_steps, P, B, M]
    member_dim = {2: None, 3: 0, 4: 1}[inputs.dim()]
    xs = [inputs] * n_chunks if member_dim is None else list(inputs.split(size, member_dim))
    temps, betas, epss = (_chunked(v, size, n_chunks) for v in (temp, beta, eps))
    gens = member_generators(generator, p, model.generators)
    outs = []
    for k in range(n_chunks):
        start, stop = k * size, min(p, (k + 1) * size)
        part = member_range(model, start, stop, {n: v[k] for n, v in params.items()})
        step_noise = None if noise is None else [
            tuple(None if n is None else n.narrow(n.dim() - 3, start, stop - start) for n in step)
            for step in noise]
        outs.append(part.forward(xs[k], State(tuple(c[k] for c in comps)), t_start, n_steps,
                                 temps[k], betas[k], epss[k], step_noise, gens[start:stop]))
    last_x = inputs[-1] if model.is_sequence(inputs) else inputs
    return CycleOutput(
        loss=torch.cat([o.loss for o in outs]),
        state=State(tuple(torch.cat(c) for c in zip(*(o.state.components for o in outs),
                                                     strict=True))),
        step_losses=torch.cat([o.step_losses for o in outs], 1),
        recon=torch.cat([o.recon for o in outs], 1),
        kl=torch.cat([o.kl for o in outs], 1),
        max_rate=None if outs[0].max_rate is None else torch.cat([o.max_rate for o in outs], 1),
        last_z=torch.cat([o.last_z for o in outs]),
        last_x_hat=torch.cat([o.last_x_hat for o in outs]),
        last_x=last_x,
    )
