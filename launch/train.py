"""Train an iterative VAE with Accelerate (one CPU, many GPUs, many nodes).

    accelerate launch launch/train.py --dataset vh16 --data_path processed.npy \
        --model ipvae --t_train 16 --n_latents 512 --beta_outer 24
    python launch/train.py --dataset natural16 --model ipvae --epochs 2     # one process

Every config field is a flag (see --help); --config file.yaml is read first.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fondtrain.errors import UserError  # noqa: E402
from fondtrain.train.flags import parse_args  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    try:
        config = parse_args(argv)
        from fondtrain.train.loop import train

        train(config)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
