"""Run by `accelerate launch` in the multi-process tests: train, then dump this rank's model.

usage: accelerate launch ... tests/ddp_worker.py OUT_DIR [launch/train.py flags]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from safetensors.torch import save_file  # noqa: E402

from fondtrain.cli.flags import parse_args  # noqa: E402
from fondtrain.runtime import close_process_group, exit_process_group_member  # noqa: E402
from fondtrain.train.trainer import train  # noqa: E402


def main() -> None:
    out_dir = Path(sys.argv[1])
    result = train(parse_args(sys.argv[2:]))
    from accelerate import PartialState

    rank = PartialState().process_index
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in result.model.state_dict().items()},
              str(out_dir / f"rank{rank}.safetensors"))
    (out_dir / f"rank{rank}.json").write_text(json.dumps(
        {"step": result.step, "world_size": PartialState().num_processes,
         "validation": result.validation}))
    close_process_group()
    exit_process_group_member(0)


if __name__ == "__main__":
    main()
