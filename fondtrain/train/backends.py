"""Training back ends: Accelerate (DDP), or a DeepSpeed ZeRO engine driven directly.

The trainer (trainer.py, step.py) is written against the handful of `accelerate.Accelerator` methods it
needs: `prepare`, `unwrap_model`, `backward`, `no_sync`, `gather`, `reduce`,
`wait_for_everyone`, `save_state` / `load_state` and the rank properties. `make_backend`
returns a real `Accelerator` for `--backend accelerate` and a `DeepSpeedBackend` — the same
methods implemented on `deepspeed.initialize(...)`'s engine — for `--backend deepspeed`, so
the TBPTT loop body is one piece of code for both. The one step that differs in shape
(clip, optimiser step, zero grad) is `clip_and_step`. DeepSpeed trains one member (P = 1):
ZeRO flattens every parameter into shared partitions, where a member axis, and with it
each member's own clipping, no longer exists.

Why DeepSpeed is driven directly and not through Accelerate's DeepSpeed plugin: the
plugin needs `transformers`, and on CPU it did not give real data parallelism (see
docs/cluster.md). Under `torchrun` (or the `deepspeed` launcher) the engine below does.

DeepSpeed specifics, and how each is handled:

* Gradient accumulation. The loop runs `grad_accum` micro-batches per optimiser step and
  divides each loss by `grad_accum` itself. DeepSpeed is therefore configured with
  `gradient_accumulation_steps = 1`, and `no_sync` marks the non-final micro-batches as
  "not a gradient-accumulation boundary" (`engine.set_gradient_accumulation_boundary`), so
  gradients are reduced once, after the last micro-batch, and `engine.step()` is called once.
* Gradient clipping. DeepSpeed's `gradient_clipping` is a static config value, but the
  clip norm is 3x larger during warm-up (SPEC 6). With ZeRO 1/2 the clipping happens
  inside the ZeRO optimiser's `step` (after the gradients are reduced and partitioned),
  using its attribute `clip_grad`; `clip_and_step` sets that attribute to the schedule's
  value before every step. Without ZeRO (stage 0) the gradients are whole and reduced
  after the boundary backward, so `torch.nn.utils.clip_grad_norm_` clips them directly.
  The JSON's `gradient_clipping` is ignored (overwritten with 0), as are its batch sizes
  (taken from --batch_size and the world size).
* Checkpoints. `save_state` has every rank call `engine.save_checkpoint` (the model states
  once, the ZeRO optimiser partition of every rank) into `<checkpoint>/deepspeed/`, plus
  each rank's RNG state; rank 0 also writes the full weights as `model.safetensors` so that
  `fondtrain eval` / `export` read DeepSpeed runs like any other. `load_state` calls
  `engine.load_checkpoint` and refuses, with one sentence, a ZeRO checkpoint written by a
  different number of processes (see docs/cluster.md for the conversion).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import pickle
import random
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fondtrain.config import RunConfig
from fondtrain.errors import UserError
from fondtrain.runtime import configure_cpu_process
from fondtrain.train.optim import clip_grad_norm_per_member_

DEEPSPEED_DIR = "deepspeed"  # the engine's checkpoint tag inside a fondtrain checkpoint
RNG_FILE = "random_states_{rank}.pkl"  # the file name Accelerate uses, one per rank
DEFAULT_DEEPSPEED_CONFIG: dict[str, Any] = {
    "zero_optimization": {"stage": 1},
    "zero_allow_untested_optimizer": True,
    "steps_per_print": 2**31 - 1,
}


def make_backend(config: RunConfig):
    """An `accelerate.Accelerator` or a `DeepSpeedBackend`, by `config.train.backend`."""
    tc = config.train
    configure_cpu_process()
    if tc.backend == "deepspeed":
        return DeepSpeedBackend(config)
    from accelerate import Accelerator

    accelerator = Accelerator(mixed_precision=tc.mixed_precision)
    check_world_size(accelerator.num_processes)
    _check_mixed_precision(tc.mixed_precision, accelerator.device)
    return accelerator


def check_world_size(seen: int, environ: Mapping[str, str] = os.environ) -> None:
    """Stop when the launcher started more processes (WORLD_SIZE) than the back end joined.

    torchrun on a machine without GPUs starts N processes, but Accelerate forms a process
    group on the CPU only when told to (ACCELERATE_USE_CPU=1): otherwise each process
    trains alone, N copies racing on one run folder.
    """
    launched = environ.get("WORLD_SIZE")
    if launched is None or not launched.isdigit() or int(launched) == seen:
        return
    raise UserError(
        f"the launcher started {launched} processes (WORLD_SIZE={launched}) but the back end joined "
        f"{seen}, so each would train alone on the same run folder: on a machine without GPUs set "
        f"ACCELERATE_USE_CPU=1 (ACCELERATE_USE_CPU=1 torchrun --nproc_per_node {launched} ..., or "
        f"ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes {launched} ...)."
    )


def clip_and_step(accelerator, model, optimizer, max_norm: torch.Tensor) -> torch.Tensor:
    """Clip each member's gradient norm to its max_norm ([P], on the device), take the
    optimiser step and clear the gradients. Returns the norms before clipping [P]."""
    if isinstance(accelerator, DeepSpeedBackend):
        return accelerator.clip_and_step(max_norm)
    accelerator.unscale_gradients()
    grad_norm = clip_grad_norm_per_member_(model.parameters(), max_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def rng_file(checkpoint: Path, rank: int) -> Path:
    """Where a checkpoint keeps the RNG state of `rank` (either back end)."""
    return Path(checkpoint) / RNG_FILE.format(rank=rank)


def _check_mixed_precision(mixed_precision: str, device: torch.device) -> None:
    if mixed_precision == "fp16" and device.type == "cpu":
        raise UserError("fp16 mixed precision needs a GPU (on the CPU it would silently run in "
                        "float32): use --mixed_precision bf16 or no.")


def deepspeed_config(config: RunConfig, world_size: int) -> dict[str, Any]:
    """The DeepSpeed JSON (or the ZeRO-1 default) with fondtrain's values filled in."""
    tc = config.train
    if tc.deepspeed_config:
        path = Path(tc.deepspeed_config)
        if not path.is_file():
            raise UserError(f"DeepSpeed config {path} does not exist: give a JSON file such as "
                            "launch/deepspeed/zero1.json.")
        try:
            ds = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise UserError(f"DeepSpeed config {path} is not valid JSON ({err.msg}, line {err.lineno}).") from err
    else:
        ds = json.loads(json.dumps(DEFAULT_DEEPSPEED_CONFIG))
    for key, value in DEFAULT_DEEPSPEED_CONFIG.items():
        ds.setdefault(key, value)
    # Batch sizes and accumulation belong to fondtrain's loop (see the module docstring).
    ds["train_micro_batch_size_per_gpu"] = tc.batch_size
    ds["gradient_accumulation_steps"] = 1
    ds["train_batch_size"] = tc.batch_size * world_size
    ds["gradient_clipping"] = 0.0
    # DeepSpeed's own bf16 / fp16 modes cast the whole model to low precision; the state
    # update (log-rates, sampler sums, KL) must stay float32, so fondtrain uses DeepSpeed's
    # torch-autocast mode instead: float32 weights, low-precision matmuls.
    for kind in ("bf16", "fp16"):
        if ds.get(kind, {}).get("enabled"):
            raise UserError(f"the DeepSpeed config enables {kind!r}, which casts the whole model to low "
                            f"precision: remove that section and pass --mixed_precision {kind} "
                            "(torch autocast, float32 weights) instead.")
    if tc.mixed_precision == "fp16":
        # With ZeRO and torch autocast DeepSpeed applies no loss scaling: fp16 gradients underflow.
        raise UserError("--backend deepspeed supports --mixed_precision bf16 (or no); for fp16, which "
                        "needs loss scaling, use the accelerate back end.")
    if tc.mixed_precision == "bf16":
        ds["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    return ds


def _single_process_env() -> None:
    """Let `python launch/train.py --backend deepspeed` run as one process, no launcher."""
    if "RANK" in os.environ:
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})


class DeepSpeedBackend:
    """The subset of `accelerate.Accelerator` the trainer uses, on a DeepSpeed engine.

    Create it in every process of a `torchrun` / `deepspeed` launch; `prepare(model,
    optimizer)` builds the engine. The process group is gloo on the CPU, the accelerator's
    own backend (nccl) on GPUs.
    """

    def __init__(self, config: RunConfig):
        try:
            import deepspeed
            from deepspeed.accelerator import get_accelerator
        except ImportError as err:
            raise UserError("--backend deepspeed needs DeepSpeed: pip install -e .[deepspeed] "
                            f"({err.__class__.__name__}: {err}).") from err
        import torch.distributed as dist

        _single_process_env()
        acc = get_accelerator()
        self.local_process_index = int(os.environ.get("LOCAL_RANK", "0"))
        on_cpu = acc.device_name() == "cpu"
        if on_cpu:
            self.device = torch.device("cpu")
        else:
            acc.set_device(self.local_process_index)
            self.device = torch.device(acc.device_name(self.local_process_index))
        if on_cpu:
            # DeepSpeed's CPU communicator JIT-compiles a shared-memory all-reduce op (a C++
            # compiler and ~30 s+ per fresh machine; its kernel needs AVX2/AVX-512). The
            # gradients of these models are small: plain gloo collectives are enough.
            # (`import deepspeed.comm.torch as m` would bind torch itself: the package
            # re-exports a name `torch`; go through importlib.)
            importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
        if not dist.is_initialized():
            deepspeed.init_distributed(dist_backend="gloo" if on_cpu else acc.communication_backend_name())
        self._dist = dist
        self.process_index = dist.get_rank()
        self.num_processes = dist.get_world_size()
        self.config = config
        _check_mixed_precision(config.train.mixed_precision, self.device)
        self.ds_config = deepspeed_config(config, self.num_processes)
        self.zero_stage = int(self.ds_config.get("zero_optimization", {}).get("stage", 0))
        self.engine = None

    # ------------------------------------------------------------------ ranks
    @property
    def is_main_process(self) -> bool:
        return self.process_index == 0

    @property
    def is_local_main_process(self) -> bool:
        return self.local_process_index == 0

    def wait_for_everyone(self) -> None:
        self._dist.barrier()

    # ------------------------------------------------------------------ model
    def prepare(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):
        """(engine, engine.optimizer): the engine is called like the model (its forward is
        one TBPTT cycle); the optimiser's param_groups take the scheduled lr."""
        import deepspeed

        engine, ds_optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                                          config=self.ds_config)
        self.engine = engine
        return engine, ds_optimizer

    def unwrap_model(self, model):
        return model.module

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    @contextlib.contextmanager
    def no_sync(self, model=None):
        """Accumulate this micro-batch's gradients without reducing them yet."""
        self.engine.set_gradient_accumulation_boundary(False)
        try:
            yield
        finally:
            self.engine.set_gradient_accumulation_boundary(True)

    def clip_and_step(self, max_norm: torch.Tensor) -> torch.Tensor:
        """The one member's clip (max_norm [1]) and step; its norm before clipping [1]."""
        engine = self.engine
        optimizer = engine.optimizer
        if hasattr(optimizer, "clip_grad"):  # ZeRO 1/2: clipped inside its step, after the reduction
            optimizer.clip_grad = float(max_norm)
            engine.step()
            norm = engine.get_global_grad_norm()
        else:  # no ZeRO: gradients are already all-reduced after the boundary backward
            norm = torch.nn.utils.clip_grad_norm_(engine.module.parameters(), float(max_norm))
            engine.step()
        return torch.as_tensor(float("nan") if norm is None else norm, dtype=torch.float32).reshape(1)

    # ------------------------------------------------------------------ collectives
    def reduce(self, tensor: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        out = tensor.clone()
        if self.num_processes > 1:
            self._dist.all_reduce(out, op=self._dist.ReduceOp.SUM)
        return out / self.num_processes if reduction == "mean" else out

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's tensor along dim 0 (0-d tensors become [world])."""
        tensor = tensor.reshape(1) if tensor.dim() == 0 else tensor.contiguous()
        if self.num_processes == 1:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.num_processes)]
        self._dist.all_gather(parts, tensor)
        return torch.cat(parts)

    # ------------------------------------------------------------------ checkpoints
    def save_state(self, output_dir: str, safe_serialization: bool = True) -> None:
        """Every rank: engine checkpoint (model + this rank's ZeRO partition) and RNG state;
        rank 0 also the full weights as model.safetensors."""
        from safetensors.torch import save_file

        from fondtrain.runs.files import MODEL_FILE

        out = Path(output_dir)
        self.engine.save_checkpoint(str(out), tag=DEEPSPEED_DIR, save_latest=False)
        with open(rng_file(out, self.process_index), "wb") as f:
            pickle.dump(_rng_state(), f)
        if self.is_main_process:
            # ZeRO keeps the parameters as views of one flat buffer: copy before saving.
            weights = {k: v.detach().to("cpu").clone().contiguous()
                       for k, v in self.engine.module.state_dict().items()}
            save_file(weights, str(out / MODEL_FILE))

    def load_state(self, input_dir: str) -> None:
        src = Path(input_dir)
        shards = list((src / DEEPSPEED_DIR).glob("zero_pp_rank_*_optim_states.pt"))
        if shards and len(shards) != self.num_processes:
            raise UserError(
                f"{src} holds ZeRO optimiser shards of {len(shards)} processes, which DeepSpeed cannot "
                f"re-partition for {self.num_processes}: resume with {len(shards)} processes (the "
                "weights alone are in model.safetensors; see docs/cluster.md).")
        path, _ = self.engine.load_checkpoint(str(src), tag=DEEPSPEED_DIR, load_optimizer_states=True,
                                              load_lr_scheduler_states=False)
        if path is None:
            raise UserError(f"DeepSpeed could not load {src / DEEPSPEED_DIR}: the checkpoint is "
                            "incomplete; delete it to resume from the one before.")
        own = rng_file(src, self.process_index)
        if own.is_file():
            with open(own, "rb") as f:
                _set_rng_state(pickle.load(f))


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
