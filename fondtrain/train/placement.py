"""Where a run's members train on N processes (SPEC 9.6): two placements of the same engine,
chosen by one option, --population_parallel.

- data: every member on every rank, data-parallel (DDP through Accelerate, or a DeepSpeed
  engine); each rank reads its own part of the data and a member's gradient is averaged
  over the ranks.
- split: rank r trains its own contiguous block of members (`member_blocks`), not wrapped
  in DDP (the ranks hold different models: an all-reduce would mix them), and reads the
  whole data stream as one process does. Everything random is keyed by the member and
  data rank 0, so member i computes the same numbers wherever it runs.
- auto (the default): split when every process gets a member, else data. One process
  trains the same run whatever the option.

Checkpoints have one layout whatever the placement and world size: the main process
writes the whole population (model.safetensors, optimizer.bin, in Accelerate's format),
gathered from the ranks that hold its members, and every rank reads the whole and keeps
its own members. A DeepSpeed engine writes its own checkpoint (the back end's save_state).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fondtrain.errors import UserError
from fondtrain.runs.files import MODEL_FILE

OPTIMIZER_FILE = "optimizer.bin"  # Accelerate's name for the first optimiser's state
SCALER_FILE = "scaler.pt"  # and for the fp16 gradient scaler's


def member_blocks(n_members: int, world: int) -> list[range]:
    """The members of each rank: contiguous blocks in member order whose sizes differ by
    at most one (the first n_members % world ranks take one more)."""
    base, extra = divmod(n_members, world)
    starts = [r * base + min(r, extra) for r in range(world + 1)]
    return [range(starts[r], starts[r + 1]) for r in range(world)]


class RankLocal:
    """The collectives of one rank alone, under an Accelerator's names (rank 0 of 1,
    gather and reduce as identities): what validation and the n_exp refresh use where a
    rank's members have no replica on another rank."""

    process_index, num_processes, is_main_process = 0, 1, True

    def __init__(self, device: torch.device):
        self.device = device

    def gather(self, tensor: Tensor) -> Tensor:
        return tensor.reshape(1) if tensor.dim() == 0 else tensor

    def reduce(self, tensor: Tensor, reduction: str = "sum") -> Tensor:
        return tensor


class Placement:
    """This rank's members (`own`: indices into the run's member list) and the collectives
    that make the run's outputs those of one process whatever the placement. Every method
    that gathers is a collective: all ranks call it."""

    def __init__(self, accelerator, n_members: int, option: str):
        self.accelerator = accelerator
        world, rank = accelerator.num_processes, accelerator.process_index
        if option == "split" and world > n_members:
            raise UserError(f"the population has {n_members} member(s) but {world} processes were started, and "
                            "--population_parallel split gives every process at least one member: start at "
                            f"most {n_members} process(es), or pass --population_parallel data to train every "
                            "member on every process.")
        self.split = world > 1 and (option == "split" or (option == "auto" and n_members >= world))
        self.blocks = member_blocks(n_members, world) if self.split else [range(n_members)] * world
        self.own = self.blocks[rank]
        # the data a rank reads, and the collectives of its members' replicas
        self.data_rank, self.data_world = (0, 1) if self.split else (rank, world)
        self.collectives = RankLocal(accelerator.device) if self.split else accelerator
        self.model = self.optimizer = None

    def members(self, members: list) -> list:
        """This rank's part of a per-member list."""
        return members[self.own.start:self.own.stop]

    def prepare(self, model, optimizer):
        """The model and optimiser on the back end: data-parallel, or (split) on the device
        with mixed precision but not wrapped in DDP."""
        if self.split:
            model = self.accelerator.prepare_model(model, evaluation_mode=True)  # Accelerate's "no DDP"
            optimizer = self.accelerator.prepare_optimizer(optimizer)
        else:
            model, optimizer = self.accelerator.prepare(model, optimizer)
        self.model, self.optimizer = model, optimizer
        return model, optimizer

    def note(self, names: list[str]) -> str | None:
        """Which process trains which members (split placements only)."""
        if not self.split:
            return None
        blocks = "; ".join(f"rank {r}: {', '.join(names[b.start:b.stop])}" for r, b in enumerate(self.blocks))
        return f"{len(names)} members split over {len(self.blocks)} processes ({blocks})"

    # ------------------------------------------------------------------ gathers
    def _gather_to_main(self, obj: Any) -> list | None:
        """Every rank's `obj` (tensors moved to the host), in rank order, on the main
        process; None elsewhere."""
        import torch.distributed as dist

        out = [None] * len(self.blocks) if self.accelerator.is_main_process else None
        dist.gather_object(_to_cpu(obj), out, dst=0)
        return out

    def gather_all(self, rows: list) -> list:
        """One entry per member, every member's on every rank, from this rank's own rows."""
        if not self.split:
            return rows
        import torch.distributed as dist

        out = [None] * len(self.blocks)
        dist.all_gather_object(out, _to_cpu(rows))
        return [row for part in out for row in part]

    def gather_rows(self, tensor: Tensor) -> Tensor | None:
        """A per-member tensor of this rank's members [P_own, ...] as every member's
        [P, ...] on the main process (None elsewhere)."""
        if not self.split:
            return tensor.detach() if self.accelerator.is_main_process else None
        parts = self._gather_to_main(tensor.detach())
        return None if parts is None else torch.cat(parts)

    def member_metrics(self, values: dict[str, Tensor]) -> dict[str, Tensor] | None:
        """{tag: [P_own] of this rank's batches} as {tag: [P]} on the main process (None
        elsewhere): averaged over the ranks (data), or gathered from them (split)."""
        table = torch.stack([v.detach().float().reshape(-1) for v in values.values()]).T  # [P_own, tags]
        if not self.split:
            table = self.accelerator.reduce(table, "mean")
        table = self.gather_rows(table)
        return None if table is None else dict(zip(values, table.T, strict=True))

    # ------------------------------------------------------------------ checkpoints
    def trainer_state(self, eps: list[float], n_exp) -> dict[str, Any]:
        """The per-member entries of trainer_state.json for every member (on the main
        process, which writes the file): eps [P] and the n_exp tracker's sums."""
        if not self.split:
            return {"eps": eps, **n_exp.state_dict(self.accelerator)}
        eps_parts = self._gather_to_main(eps)
        rows = self.gather_rows(n_exp.rate_sum)
        if rows is None:
            return {}
        return {"eps": [e for part in eps_parts for e in part], "rate_sum": [rows.tolist()],
                "rate_count": n_exp.count}

    def writer(self) -> Callable[[str], None]:
        """What writes the model, optimiser and scaler files of a checkpoint folder."""
        return self._write_state if _is_accelerate(self.accelerator) else self.accelerator.save_state

    def reader(self) -> Callable[[str], None]:
        """What loads them back into this rank's members."""
        return self._load_state if _is_accelerate(self.accelerator) else self.accelerator.load_state

    def _write_state(self, folder: str) -> None:
        """The whole population's weights and optimiser state, in the files
        `accelerator.save_state` writes for one process (gathers on every rank, the
        writing on the main process)."""
        from accelerate.checkpointing import save_accelerator_state

        core = self.accelerator.unwrap_model(self.model)
        optimizer = getattr(self.optimizer, "optimizer", self.optimizer)
        if self.split:
            weights = self._gather_to_main(core.state_dict())
            states = self._gather_to_main(optimizer.state_dict())
            if weights is None:
                return
            weights, state = join_members(weights), join_members(states)
        elif self.accelerator.is_main_process:
            weights, state = core.state_dict(), optimizer.state_dict()
        else:
            return
        save_accelerator_state(folder, [weights], [_SavedState(state)], [], [], process_index=0,
                               step=self.accelerator.step, scaler=self.accelerator.scaler,
                               safe_serialization=True)

    def _load_state(self, folder: str) -> None:
        """This rank's members' weights and optimiser state (and the fp16 scaler's) from a
        checkpoint of any world size and placement."""
        from safetensors.torch import load_file

        folder = Path(folder)
        weights = load_file(str(folder / MODEL_FILE))
        state = torch.load(folder / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
        if self.split:
            weights, state = take_members(weights, self.own), take_members(state, self.own)
        self.accelerator.unwrap_model(self.model).load_state_dict(weights)
        getattr(self.optimizer, "optimizer", self.optimizer).load_state_dict(state)
        if self.accelerator.scaler is not None and (folder / SCALER_FILE).is_file():
            self.accelerator.scaler.load_state_dict(torch.load(folder / SCALER_FILE, weights_only=True))


def _is_accelerate(backend) -> bool:
    return hasattr(backend, "prepare_model")  # an accelerate.Accelerator, not the DeepSpeed back end


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
    """State dicts of consecutive member blocks (model or MemberAdamax: every tensor of one
    or more dimensions has the member axis first) joined into the whole population's;
    everything else (0-d step counts, eps, parameter indices) is the same in every part
    and taken from the first."""
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
