"""Train an iterative VAE with Accelerate (one CPU, many GPUs, many nodes) or DeepSpeed.

    accelerate launch launch/train.py --dataset vh16 --data_path processed.npy \
        --model ipvae --t_train 16 --n_latents 512 --beta_outer 24
    python launch/train.py --dataset natural16 --model ipvae --epochs 2     # one process
    torchrun --nproc_per_node 8 launch/train.py --backend deepspeed \
        --deepspeed_config launch/deepspeed/zero1.json --dataset vh16 ...     # DeepSpeed ZeRO

The flags are those of `fondtrain train` (see --help): this script calls the same entry,
fondtrain.cli.train_command. Cluster use (SLURM, multi-node, pre-emption, mixed
precision): docs/cluster.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fondtrain.cli import run_or_exit, train_command  # noqa: E402
from fondtrain.runtime import exit_process_group_member  # noqa: E402


def _drop_local_rank(argv: list[str]) -> list[str]:
    """The `deepspeed` launcher appends --local_rank=N; the rank comes from LOCAL_RANK."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--local_rank":
            skip = True
        elif not arg.startswith("--local_rank="):
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    """Train with the given flags; a bad flag prints `error: ...` and exits 2."""
    run_or_exit(train_command, _drop_local_rank(sys.argv[1:] if argv is None else argv),
                prog="launch/train.py")
    exit_process_group_member(0)  # under a launcher: the run has closed its process group
    return 0


if __name__ == "__main__":
    sys.exit(main())
