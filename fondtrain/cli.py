"""`fondtrain` command line (python-fire): each method of FondtrainCLI is a command.

Keep this file a thin dispatcher: a command parses nothing itself and calls the module
that does the work. A `UserError` from any command prints `error: <sentence>` on stderr
and exits with status 2, without a traceback; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from fondtrain.errors import UserError


def run_or_exit(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call fn(*args, **kwargs); on UserError print `error: ...` to stderr and exit 2."""
    try:
        return fn(*args, **kwargs)
    except UserError as exc:
        message = " ".join(str(exc).split())  # always one line
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2) from None


class FondtrainCLI:
    """Train brain-like iterative VAEs (iP-VAE, iG-VAE, iGrelu-VAE) at scale."""

    def shard(
        self,
        dataset: str = "natural16",
        path: str | None = None,
        out: str = "shards",
        seed: int = 0,
        n_train: int | None = None,
        n_val: int | None = None,
        overwrite: bool = False,
    ) -> str:
        """Convert a data set to WebDataset shards in OUT/DATASET and print that folder.

        Args:
            dataset: natural16 | digits (built in) | vh16 | mnist | npy | npz | images.
            path: the file or folder to read (vh16: processed.npy, mnist: IDX folder, ...).
            out: the shards root; the shards go to OUT/DATASET.
            seed: seeds patch positions and splits; the same seed gives the same shards.
            n_train: training samples to cut (natural16, images).
            n_val: validation samples to cut (natural16, images).
            overwrite: replace an existing OUT/DATASET.
        """
        from fondtrain.data.shards import build_shards

        sizes = {k: v for k, v in (("n_train", n_train), ("n_val", n_val)) if v is not None}
        folder = build_shards(dataset, out, path=path, seed=seed, overwrite=overwrite, **sizes)
        return str(folder)

    def verify(self, path: str) -> str:
        """Check a shard folder: manifest, files, sizes, sha256 checksums and sample counts."""
        from fondtrain.data.shards import verify_shards

        manifest = verify_shards(path)
        counts = ", ".join(f"{k} {v['n_samples']}" for k, v in manifest["splits"].items())
        n_files = sum(len(v["shards"]) for v in manifest["splits"].values())
        return f"ok: {path} ({manifest['dataset']}, M={manifest['input_dim']}, {counts}, " \
               f"{n_files} shards)"


    def train(self, config: str | None = None, **flags: Any) -> str:
        """Train (or resume) a run in one process; `accelerate launch launch/train.py` for many.

        Every option is a flag with the reference's names, e.g. `fondtrain train --dataset
        natural16 --model ipvae --t_train 16 --n_latents 512 --beta_outer 24 --epochs 10`;
        --config reads a YAML file with model/data/train sections first. Re-running the
        same command resumes its run (runs/<name>) from the newest complete checkpoint.
        """
        from fondtrain.train.flags import resolve_config
        from fondtrain.train.loop import train

        return str(train(resolve_config(config, flags)).run_dir)

    def export(self, run: str, out: str, format: str = "safetensors") -> str:
        """Export a run's (or checkpoint's) model: safetensors + config.yaml, or upstream .pt."""
        from fondtrain.export import export_model

        return str(export_model(run, out, format))

    def import_upstream(self, path: str, out: str) -> str:
        """Turn a reference IterativeVAE checkpoint (.pt) into a fondtrain run directory."""
        from fondtrain.export import import_upstream

        return str(import_upstream(path, out))


def main(argv: list[str] | None = None) -> None:
    """Console entry point (`fondtrain = "fondtrain.cli:main"`)."""
    import fire

    run_or_exit(fire.Fire, FondtrainCLI(), command=argv, name="fondtrain")


if __name__ == "__main__":
    main()
