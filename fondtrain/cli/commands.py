"""The `fondtrain` commands: each public method of FondtrainCLI is one, run by fire.

Adding a command is adding a method: annotate its parameters (the annotations are the
flags' types) and give it a docstring whose first paragraph is the summary and whose
`Args:` section describes every parameter; `fondtrain --help` and `fondtrain COMMAND
--help` are made from them, and fondtrain/cli/flags.py checks every flag before fire runs
the command. A command only calls the module that does the work and returns what to print.
"""

from __future__ import annotations

import errno
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fondtrain.cli.flags import resolve_config
from fondtrain.errors import UserError


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
        f0_fraction: float | None = None,
        overwrite: bool = False,
    ) -> str:
        """Convert a data set to WebDataset shards in OUT/DATASET and print that folder.

        Args:
            dataset: natural16 | deadleaves16 | digits (built in) | vh16 | mnist | npy | npz | images.
            path: the file or folder to read (vh16: processed.npy, mnist: IDX folder, ...).
            out: the shards root; the shards go to OUT/DATASET.
            seed: seeds patch positions and splits; the same seed gives the same shards.
            n_train: training samples to cut (natural16, deadleaves16, images).
            n_val: validation samples to cut (natural16, deadleaves16, images).
            f0_fraction: the whitening filter's cut-off as a fraction of Nyquist (natural16,
                deadleaves16, images; default 0.4; classic sparse coding of 512-px photos used
                200 cycles/picture, about 0.78).
            overwrite: replace an existing OUT/DATASET.
        """
        from fondtrain.data.shards import build_shards

        options = {k: v for k, v in (("n_train", n_train), ("n_val", n_val), ("f0_fraction", f0_fraction))
                   if v is not None}
        folder = build_shards(dataset, out, path=path, seed=seed, overwrite=overwrite,
                              say=lambda line: print(line, file=sys.stderr), **options)
        return str(folder)  # stdout: the folder alone, for scripts

    def verify(self, path: str) -> str:
        """Check a shard folder: manifest, files, sizes, sha256 checksums and sample counts.

        Args:
            path: the shard folder (e.g. shards/natural16).
        """
        from fondtrain.data.shard_reader import verify_shards

        manifest = verify_shards(path)
        counts = ", ".join(f"{k} {v['n_samples']}" for k, v in manifest["splits"].items())
        n_files = sum(len(v["shards"]) for v in manifest["splits"].values())
        return f"ok: {path} ({manifest['dataset']}, M={manifest['input_dim']}, {counts}, " \
               f"{n_files} shards)"

    def bench(self, reference_dir: str | None = None, presets: tuple[str, ...] = ("ipvae", "igvae", "igrelu"),
              batch_size: int = 200, n_latents: int = 512, t_train: int = 16,
              eval_steps: int = 1000, repeats: int = 3, n_exp: int = 10, threads: int = 0,
              quick: bool = False, scaling: bool = True, processes: tuple[int, ...] = (1, 2),
              memory: bool = True, n_train: int = 0, epochs: int = 300,
              compile: bool = False, train_temp: float = 0.5, checkpoint: str | None = None,
              population: tuple[int, ...] = (), precision: tuple[str, ...] = (),
              projection: bool = True, projection_steps: int = 0, shards_root: str = "shards",
              out: str | None = None) -> None:
        """Time training cycles and T-step evaluation (vH16 sizes) against the machine's
        matrix-product limit and, with --reference_dir, the reference implementation, in
        float32 and bf16; project the paper's 300-epoch natural16 run on this machine.

        Args:
            reference_dir: a local checkout of hadivafaii/IterativeVAE to time in the same run.
            presets: comma-separated presets to time.
            batch_size: inputs per cycle (vH16: 200).
            n_latents: K (vH16: 512).
            t_train: steps per TBPTT cycle (vH16: 16).
            eval_steps: inference steps of the evaluation figure (SPEC 7: 1000).
            repeats: interleaved rounds per figure (medians are reported).
            n_exp: relaxed Poisson sampler length used by both implementations.
            threads: torch threads (0: torch's default); the projection is for this many.
            quick: a short run: 2 rounds, 200 eval steps, no scaling or process figures.
            scaling: also time ipvae with other K, batch and t_train.
            processes: data-parallel process counts to compare ("" to skip).
            memory: also measure each cycle's peak memory (fresh processes).
            n_train: training samples per epoch of the projected run (0: natural16's, from
                SHARDS_ROOT/natural16/manifest.json if built, else 100,000).
            epochs: epochs of the projected run (the paper's: 300).
            compile: also time cycles with the state update under torch.compile.
            train_temp: Poisson training temperature of the cycles (the schedule anneals it
                from 1 to 0.01); fondtrain's CPU sampler is cheaper where entries finish early.
            checkpoint: a fondtrain run, checkpoint or pretrained:NAME: time its trained parameters and n_exp
                (both implementations) at its sizes instead of a fresh initialisation
                (skips the scaling, process and memory figures); the projection is then a
                trained model's.
            population: member counts P of population cycles to time against P single
                cycles, e.g. "1,4,16,64" ("" to skip).
            precision: precisions of the cycles, e.g. "fp32,bf16" (bf16: the forward under
                torch.autocast, as --mixed_precision bf16 trains, beside the bf16 matmul
                limit, with a check that its loss and gradient match float32's); default:
                both where the device multiplies bf16 in hardware, else fp32.
            projection: project the wall time of the paper's run (300 epochs of natural16 at
                these sizes) per preset and precision, from the cycle at the schedule's
                temperatures; without --checkpoint a fresh model's (a lower bound).
            projection_steps: project only the run's first N steps (e.g. 5000, to compare with
                a --max_steps 5000 run); 0: the whole run.
            shards_root: where natural16's shards (their manifest) are looked for.
            out: write every figure as JSON here (or Markdown tables: a path ending in .md).
        """
        from fondtrain import bench

        s = bench.BenchSettings(
            presets=presets, batch_size=batch_size, n_latents=n_latents, t_train=t_train,
            eval_steps=eval_steps, repeats=repeats, n_exp=n_exp, reference_dir=reference_dir,
            threads=threads, scaling=scaling, processes=processes, memory=memory,
            n_train=n_train, epochs=epochs, compile=compile, train_temp=train_temp,
            checkpoint=checkpoint, population=population, precisions=tuple(precision),
            projection=projection, projection_steps=projection_steps, shards_root=shards_root)
        if quick:
            s.repeats, s.eval_steps = min(repeats, 2), min(eval_steps, 200)
            s.scaling, s.processes = False, ()
        bench.run(s, out)

    def train(self, **settings: Any) -> str:
        """Train (or resume) a run in one process; `accelerate launch launch/train.py` for many.

        Every config field is a flag with the reference's names, e.g. `fondtrain train
        --dataset natural16 --model ipvae --t_train 16 --n_latents 512 --beta_outer 24
        --epochs 10`; --config reads a YAML file with model/data/train sections first.
        Re-running the same command resumes its run (RUNS_ROOT/NAME) from its newest
        complete checkpoint.
        """
        from fondtrain.runtime import close_process_group
        from fondtrain.train.trainer import train

        config = resolve_config(settings.pop("config", None), settings)
        try:
            run_dir = train(config).run_dir
        except OSError as err:  # a write outside the checkpoints and TensorBoard (which say it themselves)
            if err.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                raise
            where = Path(err.filename) if err.filename else Path(config.train.runs_root)
            place = next((p for p in [where, *where.parents] if p.is_dir()), Path("/"))
            raise UserError(f"cannot write {where}: {err.strerror} ({shutil.disk_usage(place).free / 2**20:.1f} MB "
                            "free there): free space or make the folder writable, and run the same command to "
                            "continue from the newest checkpoint.") from None
        # under a launcher: every rank has finished its collectives; all leave together (a rank that
        # tore gloo down while rank 0 was still requeueing a SLURM job aborted at exit: SIGABRT, seen once)
        close_process_group(barrier=True)
        return str(run_dir)

    def export(self, run: str, out: str, format: str = "safetensors", *, member: str | None = None) -> str:
        """Export a run's (or checkpoint's) model: safetensors + config.yaml, upstream .pt, or a
        pretrained folder (`fondtrain export RUN fondtrain/pretrained/NAME --format pretrained`
        makes the model `pretrained:NAME`).

        Args:
            run: a run folder, one of its checkpoints, or pretrained:NAME.
            out: the folder to write.
            format: safetensors (model.safetensors + config.yaml), upstream (the reference's .pt) or
                pretrained (the inference-only checkpoint, checksums, a recorded check, the run's eval
                metrics.json and dictionary figure when it has them, and a model card README.md).
            member: a population run's member to export (default: every member, to OUT/MEMBER;
                pretrained: required for a population).
        """
        from fondtrain.runs.export import export_model

        return str(export_model(run, out, format, member))

    def import_upstream(self, path: str, out: str, dataset: str | None = None) -> str:
        """Turn a reference IterativeVAE checkpoint (.pt) into a fondtrain run directory.

        Args:
            path: the reference checkpoint (.pt).
            out: the run folder to create.
            dataset: the data set it was trained on (default vh16 for 16x16 inputs, mnist for 28x28).
        """
        from fondtrain.runs.export import import_upstream

        return str(import_upstream(path, out, dataset))

    def eval(self, run: str | None = None, checkpoint: str | None = None,
             dataset: str | None = None, path: str | None = None, n_steps: int = 1000,
             temp: float | None = None, n_val: int | None = None, batch_size: int = 2048,
             window: int = 100, probe: bool = True, mnist: str | None = None,
             probe_steps: int | None = None, probe_max_samples: int = 10_000,
             tuning: bool = True, tuning_steps: int | None = None, n_orientations: int = 16,
             gabor: bool = True, shards_root: str | None = None, out: str | None = None,
             figures: bool = True, tensorboard: bool = True, device: str | None = None,
             seed: int = 0, member: str | None = None, frontier: bool = True,
             frontier_samples: int = 10_000,
             frontier_alphas: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)) -> None:
        """Evaluate a run: convergence over N_STEPS inference steps, figures, probes, tuning.
        A population run (--sweep): every member in one batched inference (each to
        RUN/eval/members/MEMBER), then RUN/eval/sweep_summary.tsv and rate_distortion.png
        with the sparse-coding frontier of the same data (RUN/eval/sparse_coding_frontier.tsv).

        Writes RUN/eval/metrics.json, RUN/eval/figures/*.png and TensorBoard RUN/tb/eval
        (RUN/eval-DATASET with --dataset another data set); RUN may be pretrained:NAME, a
        model shipped with fondtrain, whose outputs go to runs/pretrained-NAME. Data-parallel under
        `accelerate launch -m fondtrain.cli eval RUN`.

        Args:
            run: run directory (its newest complete checkpoint is evaluated), or pretrained:NAME.
            checkpoint: a checkpoint directory, model.safetensors or reference .pt instead.
            dataset: evaluate on this data set (default: the run's own), e.g. digits.
            path: file or folder of a data set read from disk (vh16, mnist, npy, images).
            n_steps: inference steps from u_init (SPEC 7: 1000).
            temp: sampling temperature (default: Poisson 0, Gaussian 1).
            n_val: evaluate on the first N_VAL validation samples only.
            batch_size: inputs per inference batch.
            window: last steps averaged into a unit's response (probes, tuning).
            probe: linear probes on digits (and MNIST, and the data set if labelled).
            mnist: folder with the MNIST IDX files, for an extra probe.
            probe_steps: inference steps for the probes (default N_STEPS).
            probe_max_samples: cap on each probe split.
            tuning: the bar-of-light orientation-tuning experiment.
            tuning_steps: inference steps per stimulus (default N_STEPS).
            n_orientations: orientations of bars and gratings in [0, 180).
            gabor: fit a 2-D Gabor to every used dictionary element (--nogabor: skip).
            shards_root: where built shards are looked for (default: the run's).
            out: output folder (default RUN/eval or RUN/eval-DATASET; for pretrained:NAME
                runs/pretrained-NAME/eval under the current directory, never the package).
            figures: draw the PNG figures.
            tensorboard: also log scalars and figures to TensorBoard.
            device: e.g. cpu or cuda:1 (default: Accelerate's choice).
            seed: seed of the sampling noise (and of the sparse-coding frontier).
            member: evaluate only this member of a population run, on its own.
            frontier: a sweep's rate-distortion figure also draws the sparse-coding frontier of
                the same data (Poisson and relu presets; at K 128 on one core about 35 s for 500
                validation samples, 65 s for 10,000; --nofrontier skips it).
            frontier_samples: training patches each of the frontier's dictionaries learns from.
            frontier_alphas: the frontier's sparsity weights, one dictionary and point each (larger: sparser).
        """
        from fondtrain.eval.evaluate import EvalOptions, evaluate
        from fondtrain.eval.progress import shown

        opts = EvalOptions(
            n_steps=n_steps, temp=temp, dataset=dataset, path=path, shards_root=shards_root,
            n_val=n_val, batch_size=batch_size, window=window, probe=probe,
            probe_steps=probe_steps, probe_max_samples=probe_max_samples, mnist=mnist,
            tuning=tuning, tuning_steps=tuning_steps, n_orientations=n_orientations, gabor=gabor,
            out=out, figures=figures, tensorboard=tensorboard, device=device, seed=seed, frontier=frontier,
            frontier_samples=frontier_samples, frontier_alphas=frontier_alphas)
        with shown():  # the inference stages' progress
            evaluate(run, checkpoint, opts, member=member)  # prints a summary and where it wrote the results
        from fondtrain.runtime import close_process_group

        close_process_group(barrier=True)  # under accelerate launch: every rank has finished; all leave together

    def hubel_wiesel(self, run: str | None = None, checkpoint: str | None = None, unit: int | None = None,
                     orientations: tuple[float, ...] | None = None, orientation_step: float = 1.0, n_blank: int = 300,
                     n_sweep: int = 400, thickness: float = 0.2, contrast: float = 1.0,
                     min_spikes: int = 10, temp: float | None = None, frame_ms: float = 10.0,
                     slow_down: float = 4.0, lead: int = 50, movie: bool = True,
                     out: str | None = None, device: str | None = None, seed: int = 0,
                     member: str | None = None) -> None:
        """The Hubel & Wiesel bar of light: a bar sweeps across one unit's receptive field at
        many orientations; writes its RF, tuning curve, raster, clicks (WAV) and a movie
        (MP4 with sound, or GIF) to RUN/hubel-wiesel and prints a summary naming them.

        Args:
            run: run directory (its newest complete checkpoint is used), or pretrained:NAME.
            checkpoint: a checkpoint directory, model.safetensors or reference .pt instead.
            unit: the model neuron (default: the most orientation-selective responsive unit).
            orientations: bar orientations in degrees, e.g. 0,45,90 (default: 0 to 359 in
                steps of ORIENTATION_STEP), counter-clockwise from horizontal.
            orientation_step: spacing of the default orientations in degrees.
            n_blank: blank frames before the sweep (one frame = one inference step).
            n_sweep: frames the bar takes from outside the patch to outside the other side.
            thickness: bar width as a fraction of the patch side.
            contrast: pixel value of the bar (the background is 0).
            min_spikes: evoked spikes per sweep that make a unit responsive.
            temp: sampling temperature (default: Poisson 0, Gaussian 1).
            frame_ms: nominal milliseconds of one frame, for the audio and movie clock.
            slow_down: the audio and movie play this many times slower than FRAME_MS per frame.
            lead: blank frames before each sweep in the audio and movie.
            movie: write the movie (MP4 through imageio-ffmpeg, else GIF).
            out: output folder (default RUN/hubel-wiesel; a member's RUN/members/MEMBER/hubel-wiesel;
                for pretrained:NAME runs/pretrained-NAME/hubel-wiesel under the current directory).
            device: e.g. cpu or cuda (default: cuda if available).
            seed: seed of the sampling noise.
            member: the member of a population run to record.
        """
        from fondtrain.eval.hubel_wiesel import HubelWieselOptions, hubel_wiesel

        opts = HubelWieselOptions(
            unit=unit, orientations=orientations, orientation_step=orientation_step, n_blank=n_blank,
            n_sweep=n_sweep, thickness=thickness, contrast=contrast, min_spikes=min_spikes, temp=temp,
            frame_ms=frame_ms, slow_down=slow_down, lead=lead, movie=movie, out=out, device=device,
            seed=seed)
        hubel_wiesel(run, checkpoint, opts, member=member)  # prints a summary naming the files

    def compare(self, *runs: str, out: str = "compare.md") -> None:
        """Put several runs' eval metrics side by side: a table and their convergence curves.

        Args:
            runs: run folders, metrics.json files, or pretrained:NAME (the evaluation it ships with).
            out: the table (.md, .csv or .json; printed too); the curves go to OUT with .png.
        """
        from fondtrain.eval.compare import compare

        compare(list(runs), out)


def commands() -> dict[str, Callable[..., Any]]:
    """Command name (with `_`) -> its method, in the order of the class."""
    cli = FondtrainCLI()
    return {name: getattr(cli, name) for name in vars(FondtrainCLI) if not name.startswith("_")}
