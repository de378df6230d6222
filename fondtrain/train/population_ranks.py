"""A population split across ranks (`--population_parallel split`, SPEC 9.6): rank r
trains only its own block of members, and ranks exchange no gradients.

Placement: contiguous balanced blocks (`member_blocks`: 5 members on 2 ranks are
[0, 1, 2] and [3, 4]). Each rank builds the population of its members on its device,
not wrapped in DDP (the ranks hold different models: an all-reduce would mix them), and
reads the whole training and validation streams as a one-process run does. Everything
random is keyed by the member (its seed) and rank 0, never by the rank that holds it, so
member i computes the same numbers wherever it runs: a split run equals a one-process
population of the same members.

What the ranks still share (`RankShare`):
- checkpoints: the main process gathers every rank's parameters, PopulationAdamax state
  and n_exp sums and writes a one-process population checkpoint (model.safetensors,
  optimizer.bin, random_states_0.pkl; trainer_state.json with world_size 1), through
  `checkpoint.save_checkpoint`'s atomic write. Eval and export read it unchanged, and it
  resumes on any number of processes, split or data-parallel. Loading, every rank reads
  the whole checkpoint (of either placement) and keeps its members' slices;
- logs: per-member training scalars, validations and dictionaries are gathered to the
  main process, which writes every member's TensorBoard run and members.tsv;
- the loop's stop / checkpoint agreement (an all-reduce every few batches).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fondtrain.errors import UserError
from fondtrain.run_files import MODEL_FILE
from fondtrain.sweep import members_from_sweep

OPTIMIZER_FILE = "optimizer.bin"  # Accelerate's name for the first optimiser's state


def member_blocks(n_members: int, world: int) -> list[range]:
    """The members of each rank: contiguous blocks in member order whose sizes differ by
    at most one (the first n_members % world ranks take one more)."""
    base, extra = divmod(n_members, world)
    starts = [r * base + min(r, extra) for r in range(world + 1)]
    return [range(starts[r], starts[r + 1]) for r in range(world)]


def rank_share(config, accelerator) -> RankShare | None:
    """This rank's share of a population split over several processes; None for one
    model, one process or --population_parallel data. Raises UserError (before anything
    is written) when there are fewer members than processes."""
    tc, world = config.train, accelerator.num_processes
    if not tc.sweep or tc.population_parallel != "split" or world == 1:
        return None
    n_members = len(members_from_sweep(config, tc.sweep))
    if n_members < world:
        raise UserError(f"the population has {n_members} member(s) but {world} processes were started, and "
                        "--population_parallel split gives every process at least one member: start at most "
                        f"{n_members} process(es), or pass --population_parallel data to train every member on "
                        "every process.")
    return RankShare(accelerator, member_blocks(n_members, world))


class RankLocal:
    """The collectives of one rank alone, under an Accelerator's names (device, rank 0 of
    1, gather and reduce as identities): what validation and the n_exp refresh use where
    a rank's members have no replica on another rank."""

    process_index, num_processes = 0, 1

    def __init__(self, device: torch.device):
        self.device = device

    def gather(self, tensor: Tensor) -> Tensor:
        return tensor.reshape(1) if tensor.dim() == 0 else tensor

    def reduce(self, tensor: Tensor, reduction: str = "sum") -> Tensor:
        return tensor


class RankShare:
    """This rank's members (`own`, indices into the sweep's member list) of a population
    split into `blocks`, and the gathers that make the split run's outputs those of one
    process. `build` makes the rank's model and optimiser; every method that gathers is a
    collective (all ranks call it)."""

    def __init__(self, accelerator, blocks: list[range]):
        self.accelerator, self.blocks = accelerator, blocks
        self.own = blocks[accelerator.process_index]
        self.local = RankLocal(accelerator.device)
        self.model = self.optimizer = None

    def members(self, members: list) -> list:
        return members[self.own.start:self.own.stop]

    def build(self, config, members: list):
        """The population of this rank's `members` and its PopulationAdamax, kept for the
        checkpoints."""
        from fondtrain.train.population import build_population

        self.model, self.optimizer = build_population(config, members, self.accelerator, split=True)
        return self.model, self.optimizer

    def placement_note(self, members: list) -> str:
        blocks = "; ".join(f"rank {r}: {', '.join(m.name for m in members[b.start:b.stop])}"
                           for r, b in enumerate(self.blocks))
        return f"{len(members)} members split over {len(self.blocks)} processes ({blocks})"

    # ------------------------------------------------------------------ gathers
    def gather_to_main(self, obj: Any) -> list | None:
        """Every rank's `obj` (tensors moved to the host), in rank order, on the main
        process; None elsewhere."""
        import torch.distributed as dist

        out = [None] * len(self.blocks) if self.accelerator.is_main_process else None
        dist.gather_object(_to_cpu(obj), out, dst=0)
        return out

    def gather_all(self, rows: list) -> list:
        """The concatenation of every rank's list (one entry per own member), on every rank."""
        import torch.distributed as dist

        out = [None] * len(self.blocks)
        dist.all_gather_object(out, _to_cpu(rows))
        return [row for part in out for row in part]

    def gather_rows(self, tensor: Tensor) -> Tensor | None:
        """A per-member tensor [P_own, ...] of every rank as [P, ...] on the main process."""
        parts = self.gather_to_main(tensor.detach())
        return None if parts is None else torch.cat(parts)

    def gather_columns(self, values: dict[str, Tensor]) -> dict[str, Tensor] | None:
        """{tag: [P_own]} of every rank as {tag: [P]} on the main process (None elsewhere)."""
        table = self.gather_rows(torch.stack([v.detach().float().reshape(-1) for v in values.values()]).T)
        return None if table is None else dict(zip(values, table.T, strict=True))

    # ------------------------------------------------------------------ checkpoints
    def trainer_state(self, state, n_exp) -> dict[str, Any]:
        """The per-member entries of trainer_state.json for every member, as a one-process
        run writes them (on the main process, which writes the file): eps [P] and the
        n_exp tracker's sums rate_sum [1][P][t_total]."""
        eps = self.gather_to_main(state.eps)
        rows = self.gather_rows(n_exp.rate_sum)
        if rows is None:
            return {}
        return {"eps": [e for part in eps for e in part], "rate_sum": [rows.tolist()], "rate_count": n_exp.count}

    def write_state(self, folder: str) -> None:
        """The whole population's weights, optimiser state and the main process's RNG
        state into `folder`, in the files `accelerator.save_state` writes for one process
        (the gathers on every rank, the writing on the main process)."""
        from accelerate.checkpointing import save_accelerator_state

        weights = self.gather_to_main(self.model.state_dict())
        optimizer = self.gather_to_main(self.optimizer.state_dict())
        if weights is None:
            return
        whole = _SavedState(join_members(optimizer))
        save_accelerator_state(folder, [join_members(weights)], [whole], [], [], process_index=0,
                               step=self.accelerator.step, scaler=self.accelerator.scaler,
                               safe_serialization=True)

    def load_state(self, folder: str) -> None:
        """This rank's members' weights and optimiser state from a population checkpoint
        of any world size and placement."""
        from safetensors.torch import load_file

        weights = load_file(str(Path(folder) / MODEL_FILE))
        self.model.load_state_dict(take_members(weights, self.own))
        optimizer = torch.load(Path(folder) / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(take_members(optimizer, self.own))


class _SavedState:
    """A state dict under the optimiser interface `save_accelerator_state` reads."""

    def __init__(self, state: dict):
        self._state = state

    def state_dict(self) -> dict:
        return self._state


def _map_tensors(obj: Any, fn: Callable[[Tensor], Any]) -> Any:
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return type(obj)((k, _map_tensors(v, fn)) for k, v in obj.items())
    if isinstance(obj, tuple | list):
        return type(obj)(_map_tensors(v, fn) for v in obj)
    return obj


def _to_cpu(obj: Any) -> Any:
    return _map_tensors(obj, lambda t: t.detach().cpu())


def join_members(parts: list[Any]) -> Any:
    """State dicts of consecutive member blocks (model or PopulationAdamax: every tensor
    of one or more dimensions has the member axis first) joined into the whole
    population's; everything else (0-d step counts, eps, parameter indices) is the same
    in every part and taken from the first."""
    first = parts[0]
    if isinstance(first, Tensor):
        return torch.cat(parts) if first.dim() else first
    if isinstance(first, dict):
        return type(first)((k, join_members([p[k] for p in parts])) for k in first)
    if isinstance(first, tuple | list):  # param_groups, betas: item by item
        return type(first)(join_members(list(items)) for items in zip(*parts, strict=True))
    return first


def take_members(state: Any, own: range) -> Any:
    """A whole population's state dict (`join_members`' layout) cut to members `own`."""
    return _map_tensors(state, lambda t: t[own.start:own.stop].clone() if t.dim() else t)
