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

    def bench(self, reference_dir: str | None = None, presets: str = "ipvae,igvae,igrelu",
              batch_size: int = 200, n_latents: int = 512, t_train: int = 16,
              eval_steps: int = 1000, repeats: int = 3, n_exp: int = 10, threads: int = 0,
              quick: bool = False, scaling: bool = True, processes: str = "1,2",
              memory: bool = True, n_train: int = 0, epochs: int = 300,
              out: str | None = None) -> None:
        """Time training cycles and T-step evaluation (vH16 sizes) against the machine's
        matrix-product limit and, with --reference_dir, the reference implementation.

        Args:
            reference_dir: a local checkout of hadivafaii/IterativeVAE to time in the same run.
            presets: comma-separated presets to time.
            batch_size: inputs per cycle (vH16: 200).
            n_latents: K (vH16: 512).
            t_train: steps per TBPTT cycle (vH16: 16).
            eval_steps: inference steps of the evaluation figure (SPEC 7: 1000).
            repeats: interleaved rounds per figure (medians are reported).
            n_exp: relaxed Poisson sampler length used by both implementations.
            threads: torch threads (0: torch's default).
            quick: a short run: 2 rounds, 200 eval steps, no scaling or process figures.
            scaling: also time ipvae with other K, batch and t_train.
            processes: data-parallel process counts to compare ("" to skip).
            memory: also measure each cycle's peak memory (fresh processes).
            n_train: training samples per epoch for the projected run time (0: assumed 1e6).
            epochs: epochs of the projected run (vH16: 300).
            out: write every figure as JSON here.
        """
        from fondtrain import bench

        def as_tuple(value) -> tuple:  # fire turns "a,b" into a tuple, "a" into a str
            items = value if isinstance(value, list | tuple) else str(value).split(",")
            return tuple(str(v).strip() for v in items if str(v).strip())

        s = bench.BenchSettings(
            presets=as_tuple(presets), batch_size=batch_size,
            n_latents=n_latents, t_train=t_train, eval_steps=eval_steps, repeats=repeats,
            n_exp=n_exp, reference_dir=reference_dir, threads=threads, scaling=scaling,
            processes=tuple(int(p) for p in as_tuple(processes)), memory=memory,
            n_train=n_train or bench.ASSUMED_N_TRAIN, epochs=epochs)
        if quick:
            s.repeats, s.eval_steps = min(repeats, 2), min(eval_steps, 200)
            s.scaling, s.processes = False, ()
        bench.run(s, out)



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
