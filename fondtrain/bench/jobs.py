"""The benchmark's worker processes (`python -m fondtrain.bench.jobs`), started by
`harness.run_job`: each prints one JSON line.

- `memory SETTINGS IMPL PRESET`: the peak memory of one training cycle in a fresh process
  and the bytes autograd saves for its backward (exact: the storages it keeps);
- `ddp SETTINGS`: the ipvae cycle with the global batch split over the `accelerate launch`
  ranks (the slowest rank's median).

SETTINGS is the BenchSettings as JSON.
"""

from __future__ import annotations

import json
import sys

import torch

from fondtrain.bench import candidates as C
from fondtrain.bench import harness
from fondtrain.bench.settings import BenchSettings
from fondtrain.errors import UserError
from fondtrain.train.optim import MemberAdamax


def memory_job(impl: str, preset: str, s: BenchSettings) -> dict:
    """{'peak_mb', 'saved_mb'} of one cycle of `impl` ('fondtrain' or 'reference')."""
    device = harness.device()
    x = C.inputs(s, device)
    if impl == "reference":
        model, ref = C.reference_setup(s, preset, device)
        run = C.reference_cycle(model, ref, x, s)
    else:
        run = C.fondtrain_cycle(C.fondtrain_model(preset, s, None, device), x, s)
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:  # tensors autograd keeps for backward
        storage = t.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return t

    def counted() -> None:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            run()

    peak = harness.peak_memory_mb(counted, warmup=run)
    return {"peak_mb": peak, "saved_mb": sum(saved.values()) / 2**20}


def ddp_job(s: BenchSettings) -> dict:
    """Median ipvae cycle with s.batch_size split over this launch's ranks."""
    from accelerate import Accelerator

    from fondtrain.runtime import configure_cpu_process

    configure_cpu_process()
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    world = accelerator.num_processes
    if s.batch_size % world:
        raise UserError(f"batch {s.batch_size} does not split over {world} processes: "
                        "choose a batch size that does.")
    torch.manual_seed(s.seed + accelerator.process_index)
    local = s.varied(batch_size=s.batch_size // world)
    model = C.fondtrain_model("ipvae", local, None, accelerator.device)
    opt = MemberAdamax(model.parameters(), lr=[C.OPTIM.lr], betas=tuple(C.OPTIM.betas),
                       eps=C.ADAMAX_EPS, weight_decay=C.OPTIM.weight_decay)
    model, opt = accelerator.prepare(model, opt)
    run = C.fondtrain_cycle(model, C.inputs(local, accelerator.device), s, accelerator, opt)

    times = harness.interleaved({"cycle": run}, s.repeats)
    t = torch.tensor([times["cycle"]], device=accelerator.device)
    t = accelerator.reduce(t, "max")  # the slowest rank sets the pace
    return {"cycle_s": float(t), "samples_per_s": s.batch_size / float(t), "world": world,
            "threads": torch.get_num_threads(), "rank": accelerator.process_index}


def main(argv: list[str] | None = None) -> None:
    """Run the job `argv` names, in the fixed form harness.run_job writes (no user flags)."""
    job, settings, *args = sys.argv[1:] if argv is None else argv
    s = BenchSettings.from_json(settings)
    if job == "memory":
        harness.set_threads(s.threads)  # ddp ranks get OMP_NUM_THREADS from the launcher
        print(json.dumps(memory_job(*args, s)))
    elif job == "ddp":
        r = ddp_job(s)
        if r["rank"] == 0:
            print(json.dumps(r), flush=True)
    else:
        raise ValueError(f"unknown benchmark job {job!r}")


if __name__ == "__main__":
    main()
