"""Worker for the multi-process scale-out tests (run under torchrun / accelerate launch).

    python tests/scale_worker.py PLAN.json

PLAN.json: {"out": folder, "phases": [{"label": name, "argv": [launch/train.py flags]}]}.
Every process runs the phases in order (each is a full `train(parse_args(argv))`: a later
phase with the same --name resumes the earlier one's checkpoint from disk, with a new
engine) and writes its own copy of the trained parameters to OUT/<label>-rank<R>.pt, so
that the test can compare ranks and runs. Running several phases in one launch saves the
start-up of a launch (seconds of imports per process on a 2-core machine).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(plan_path: str) -> int:
    import torch

    from fondtrain.cli.flags import parse_args
    from fondtrain.train.trainer import train

    plan = json.loads(Path(plan_path).read_text())
    out = Path(plan["out"])
    for phase in plan["phases"]:
        result = train(parse_args(phase["argv"]))
        rank = int(os.environ.get("RANK", "0"))
        params = {k: v.detach().to("cpu").clone() for k, v in result.model.state_dict().items()}
        torch.save({"params": params, "step": result.step}, out / f"{phase['label']}-rank{rank}.pt")
    from fondtrain.runtime import close_process_group, exit_process_group_member

    close_process_group()
    exit_process_group_member(0)  # several ranks: leave without finalization
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
