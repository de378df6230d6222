"""Train an iterative VAE with Accelerate (one CPU, many GPUs, many nodes) or DeepSpeed.

    accelerate launch launch/train.py --dataset vh16 --data_path processed.npy \
        --model ipvae --t_train 16 --n_latents 512 --beta_outer 24
    python launch/train.py --dataset natural16 --model ipvae --epochs 2     # one process
    torchrun --nproc_per_node 8 launch/train.py --backend deepspeed \
        --deepspeed_config launch/deepspeed/zero1.json --dataset vh16 ...     # DeepSpeed ZeRO

Every config field is a flag (see --help); --config file.yaml is read first. Cluster use
(SLURM, multi-node, pre-emption, mixed precision): docs/cluster.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fondtrain.errors import UserError  # noqa: E402
from fondtrain.train.flags import parse_args  # noqa: E402


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
    try:
        config = parse_args(_drop_local_rank(sys.argv[1:] if argv is None else argv))
        from fondtrain.train.trainer import train

        train(config)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
