"""`fondtrain export RUN OUT --format pretrained`: one model of a run as a pretrained folder
(the layout in `fondtrain.runs.pretrained`), and the recorded check that proves its weights.

What inference needs of the checkpoint is kept: the weights (with the member axis, as a
checkpoint stores them), the config of the single run the model equals (machine paths
reset to the defaults), and of trainer_state.json only the step and the soft clamps'
opening eps (evaluation uses it). The optimiser and RNG states, the data position and the
n_exp statistics (the sampler lengths are in the weights file) are left out. The run's
`fondtrain eval` results (metrics.json, the dictionary figure) are copied when they are
of this very checkpoint, the machine's runs and shards folders in metrics.json named as
the defaults (runs/, shards/). The folder is written whole or not at all (a hidden partial
folder, renamed).

The recorded check (recorded_check.json): the R^2 of a fixed set of validation patches of
the model's built-in data set after a few inference steps with a fixed seed, computed at
export and recomputed from the weights by tests/test_pretrained.py: cheap (seconds on
one thread), reproducible to about 0.01 anywhere (the sampling noise; see N_CHECK), and
far off for weights read wrongly (R^2 0.2 instead of 0.9 for pixels out of order). That a
file changed at all is the checksums' to say.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from fondtrain import stats
from fondtrain.config import DataConfig, RunConfig, TrainConfig, save_yaml
from fondtrain.config.sweep import member_dir
from fondtrain.data.sources import SOURCES, load_source
from fondtrain.errors import UserError
from fondtrain.model import inference
from fondtrain.model.vae import IterativeVAE
from fondtrain.runs import files as run_files
from fondtrain.runs import pretrained
from fondtrain.runs.permissions import staged_folder

CHECK_FILE = "recorded_check.json"
CARD = "README.md"
# the run's eval results (relative to its eval folder) -> their names in the pretrained folder
EVAL_FILES = {"metrics.json": "metrics.json", "figures/dictionary.png": "dictionary.png"}
# 512 patches x 100 steps: about 2 s for K 512 on one CPU thread. The numbers are not
# bit-stable across machines or thread counts: float rounding flips a Poisson count now and
# then, and the trajectory then draws other noise, so R^2 moves as with another sampling
# seed (pooled: one standard deviation about 0.001 here, 0.003 with 128 patches).
N_CHECK, CHECK_STEPS, CHECK_SEED = 512, 100, 0


def _stderr(message: str) -> None:
    print(f"fondtrain: {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- the check
def check_spec(config: RunConfig, eps: float, temp: float) -> dict[str, Any]:
    """What the recorded check runs: which validation rows of which data set, how many
    steps, at what temperature, clamp opening and sampling seed. Only built-in data sets
    (made from files in the installed packages), so that it can be recomputed anywhere."""
    dataset = config.data.dataset
    if "path" in inspect.signature(SOURCES[dataset]).parameters:
        built_in = [name for name, fn in SOURCES.items() if "path" not in inspect.signature(fn).parameters]
        raise UserError(f"a pretrained model's recorded check needs a built-in data set ({', '.join(built_in)}), "
                        f"and this model was trained on {dataset}: export it with --format safetensors instead.")
    return {"dataset": dataset, "data_seed": config.data.seed, "n_patches": N_CHECK, "n_steps": CHECK_STEPS,
            "temp": temp, "eps": eps, "seed": CHECK_SEED}


def check_patches(spec: dict[str, Any]) -> torch.Tensor:
    """The check's inputs [N_CHECK, M]: validation rows spread evenly over the split (it
    is cut image by image, so the first rows would all come from one photograph)."""
    x_val = load_source(spec["dataset"], seed=spec["data_seed"]).x_val
    rows = np.linspace(0, len(x_val) - 1, spec["n_patches"]).round().astype(np.int64)
    return torch.from_numpy(np.ascontiguousarray(x_val[rows], dtype=np.float32))


def compute_check(model: IterativeVAE, spec: dict[str, Any]) -> dict[str, Any]:
    """The check's numbers for a model of one member on the CPU: R^2 three ways
    (stats.R2_LABELS) and MSE of the last step's reconstructions, and the SHA-256 of the
    inputs (so that a change of the data is told apart from a change of the weights)."""
    x = check_patches(spec)
    generators = [torch.Generator().manual_seed(spec["seed"])]
    out = inference.last_step(model, x, spec["n_steps"], spec["temp"], eps=spec["eps"], generators=generators)
    x_hat = out.x_hat[0].double()
    return {**stats.r2_three_ways(x.double(), x_hat), "mse": float((x.double() - x_hat).pow(2).mean()),
            "patches_sha256": hashlib.sha256(x.numpy().tobytes()).hexdigest()}


def read_check(folder: str | Path) -> dict[str, Any]:
    """recorded_check.json of a pretrained folder (or `pretrained:NAME`)."""
    root = pretrained.folder(folder) if pretrained.is_name(folder) else Path(folder)
    return json.loads((root / CHECK_FILE).read_text())


# ----------------------------------------------------------------------------- export
def export_pretrained(source: str, out: str, member: str | None = None,
                      say: Callable[[str], None] = _stderr) -> Path:
    """Write one model of `source` (a run, a checkpoint, or `pretrained:NAME`; a sweep's
    member `member`) as a pretrained folder `out` (see the module docstring)."""
    out_dir = Path(out)  # `export_model` has refused a non-empty one
    target = run_files.resolve_checkpoint(source)
    if target.is_file():
        raise UserError(f"{source} is a single file: give the run folder or a checkpoint folder, which hold "
                        "the trainer state (step, clamp eps) a pretrained model records.")
    whole, _, members = run_files.load_run(target)
    index = run_files.member_index(members, member, source)
    model = run_files.one_member(whole, index)
    single = run_files.single_run_config(members[index])
    # machine paths mean nothing elsewhere: a reader would look for shards that are not there
    machine_paths = {prefix.rstrip("/"): default
                     for folder, default in ((single.data.shards_root, DataConfig.shards_root),
                                             (single.train.runs_root, TrainConfig.runs_root))
                     for prefix in (str(folder), str(Path(folder).resolve()))}
    single = dataclasses.replace(
        single, data=dataclasses.replace(single.data, shards_root=DataConfig.shards_root),
        train=dataclasses.replace(single.train, runs_root=TrainConfig.runs_root,
                                  deepspeed_config=TrainConfig.deepspeed_config))
    eps = run_files.checkpoint_eps(target, index)
    step = run_files.training_step(target)
    state = run_files.read_trainer_state(target) if (target / run_files.TRAINER_STATE).is_file() else {}
    trainer_state = {"global_step": step, "total_steps": state.get("total_steps"), "eps": [eps]}
    spec = check_spec(single, eps, inference.eval_temperature(model))
    say(f"recorded check: {N_CHECK} {spec['dataset']} validation patches x {CHECK_STEPS} inference steps")
    check = {"what": f"R^2 of {N_CHECK} validation patches of {spec['dataset']} (rows spread evenly over the split) "
                     f"after {CHECK_STEPS} inference steps from u_init at temperature {spec['temp']:g}, sampling "
                     f"seed {CHECK_SEED}",
             "spec": spec, "numbers": compute_check(model, spec), "r2_definitions": stats.R2_LABELS}
    evaluated = _eval_files(source, target, members[index].name, step, say)

    with staged_folder(out_dir, "pretrained") as staging:
        weights = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(weights, str(staging / run_files.MODEL_FILE))
        save_yaml(single, staging / "config.yaml")
        (staging / run_files.TRAINER_STATE).write_text(json.dumps(trainer_state, indent=1))
        (staging / CHECK_FILE).write_text(json.dumps(check, indent=1))
        for src, name in evaluated.items():
            if name == "metrics.json":  # it names the run, checkpoint and shards where they were evaluated
                metrics = portable_paths(json.loads(src.read_text()), machine_paths)
                (staging / name).write_text(json.dumps(metrics, indent=1))
            else:
                shutil.copyfile(src, staging / name)
        # the card is prose that may be edited after the export (wall time, machine); the
        # numbers it quotes are in the checksummed files
        sums = {k: v for k, v in run_files.checksums(staging).items() if k != CARD}
        source_name = portable_name(target)
        made = (f"fondtrain export {source_name} fondtrain/pretrained/{out_dir.name} --format pretrained"
                + (f" --member {member}" if member else ""))
        (staging / CARD).write_text(model_card(out_dir.name, made, source_name, single, trainer_state,
                                               check, _metrics(staging)))
        (staging / run_files.CHECKSUMS).write_text(json.dumps(sums, indent=1))
        (staging / run_files.COMPLETE).write_text(f"{step}\n")
    return out_dir


def _eval_files(source: str, target: Path, member: str, step: int, say) -> dict[Path, str]:
    """{file of the source's evaluation: its name in the pretrained folder}: what `fondtrain
    eval RUN` (or `--checkpoint RUN/ckpt/step-N`) wrote to RUN/eval, if it evaluated this
    checkpoint (its metrics.json says the step)."""
    if pretrained.name_of(target) is not None:  # re-exporting a shipped model: its own copies
        folder, files = target, {name: name for name in EVAL_FILES.values()}
    else:
        run_dir = run_files.output_run_dir(None, target)  # a checkpoint given as the source: its run's
        if run_dir is None:
            return {}
        folder, files = member_dir(run_dir / "eval", member), EVAL_FILES
    metrics = folder / "metrics.json"
    if not metrics.is_file():
        say(f"no evaluation in {folder} (run `fondtrain eval {source}` first to ship its metrics and dictionary)")
        return {}
    try:
        evaluated_step = json.loads(metrics.read_text()).get("training_step")
    except json.JSONDecodeError:
        evaluated_step = None
    if evaluated_step != step:
        say(f"{metrics} is of training step {evaluated_step}, not {step}: left out (run `fondtrain eval "
            f"{source}` again to ship the evaluation of this checkpoint)")
        return {}
    return {folder / rel: name for rel, name in files.items() if (folder / rel).is_file()}


def portable_paths(value: Any, folders: dict[str, str]) -> Any:
    """`value` (JSON data) with each string that is, or lies under, one of the keys of `folders`
    (this machine's shards and runs folders, as configured and resolved, without a trailing
    slash) rewritten under its value (the default folder name)."""
    if isinstance(value, dict):
        return {k: portable_paths(v, folders) for k, v in value.items()}
    if isinstance(value, list):
        return [portable_paths(v, folders) for v in value]
    if isinstance(value, str):
        for folder, default in folders.items():
            if value == folder or value.startswith(folder + "/"):
                return default + value[len(folder):]
    return value


def _metrics(folder: Path) -> dict[str, Any] | None:
    path = folder / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None


# ----------------------------------------------------------------------------- card
PRECISIONS = {"no": "float32", "fp16": "float16 autocast", "bf16": "bfloat16 autocast (states, reductions and "
              "the optimiser in float32)"}


def portable_name(checkpoint: Path) -> str:
    """How the card names the checkpoint it was made from: runs/RUN/ckpt/step-N (the run's
    name, not where this machine keeps its runs: the card ships to other machines), or the
    folder's or file's own name for a checkpoint outside a run."""
    folder = checkpoint if checkpoint.is_dir() else checkpoint.parent
    if folder.parent.name == "ckpt":
        return f"runs/{folder.parent.parent.name}/ckpt/{folder.name}"
    return checkpoint.name


def model_card(name: str, made: str, checkpoint: str, config: RunConfig, trainer_state: dict,
               check: dict, metrics: dict | None) -> str:
    """README.md of a pretrained folder: what the model is, how it was trained and made,
    its numbers (each R^2 named), and the two lines no file records (wall time, machine)."""
    mc, tc, dc = config.model, config.train, config.data
    step, total = trainer_state["global_step"], trainer_state["total_steps"]
    lines = [
        f"# {name}: {mc.preset}, K {mc.n_latents}, M {mc.input_dim}, trained on {dc.dataset}", "",
        f"A fondtrain {mc.preset} model (a linear dictionary W [{mc.input_dim}, {mc.n_latents}] and iterative "
        f"inference, no encoder) trained on the built-in `{dc.dataset}` data set. Use it by name wherever a "
        "run folder is accepted:", "",
        "```bash",
        f"fondtrain eval pretrained:{name}            # writes runs/pretrained-{name}/eval/",
        f"fondtrain hubel-wiesel pretrained:{name}    # writes runs/pretrained-{name}/hubel-wiesel/",
        "```", "",
        f"or in Python: `fondtrain.runs.files.load_model(\"pretrained:{name}\")`.", "",
        "## Training", "",
        f"- recipe: preset {mc.preset}, K {mc.n_latents}, t_train {mc.t_train}, beta_outer {mc.beta_outer:g}, "
        f"poisson_kl {mc.poisson_kl}, batch {tc.batch_size}, lr {tc.lr:g} (min {tc.lr_min:g}), "
        f"{tc.epochs} epochs, seed {tc.seed} (every setting: config.yaml)",
        f"- step: {step}" + (f" of the schedule's {total}" if total else "")
        + f", soft-clamp opening eps {trainer_state['eps'][0]:.4g}",
        f"- precision: {PRECISIONS.get(tc.mixed_precision, tc.mixed_precision)} training; weights stored in float32",
        "- wall time: (to fill in)",
        "- machine: (to fill in)",
        f"- command: `fondtrain train --config config.yaml --max_steps {step}` (this folder's config.yaml, "
        "with its data and runs paths reset to the defaults; --max_steps stops the same schedule at this step)"
        if step else "- command: unknown (step 0: not trained by fondtrain, e.g. imported)",
        f"- made from the checkpoint {checkpoint} with `{made}`", "",
    ]
    lines += ["## Numbers", ""]
    if metrics is not None:
        final = metrics.get("final", {})
        lines.append(f"From `fondtrain eval` (metrics.json): {metrics.get('n_samples')} validation samples of "
                     f"{metrics.get('dataset')} x {metrics.get('n_steps')} inference steps at temperature "
                     f"{metrics.get('temp')}, at its last step:")
        lines.append("")
        lines += [f"- {stats.R2_LABELS[k]}: {final[k]:.4f}" for k in stats.R2_LABELS if final.get(k) is not None]
        if final.get("frac_zeros") is not None:
            lines.append(f"- zero latents: {100 * final['frac_zeros']:.1f}%")
        gabor = metrics.get("gabor") or {}
        if gabor.get("n_good") is not None:
            lines.append(f"- Gabor-like dictionary elements: {gabor['n_good']} of {gabor.get('n_units')} "
                         f"({gabor.get('n_used')} used; a 2-D Gabor explains >= {gabor.get('good_r2')} of "
                         "an element's variance)")
        lines += ["", "![dictionary](dictionary.png)", ""]
    else:
        lines += ["No evaluation was shipped (the run had none of this checkpoint).", ""]
    numbers = check["numbers"]
    lines += [f"Recorded check (recorded_check.json, recomputed from the weights by tests/test_pretrained.py): "
              f"{check['what']}: "
              + ", ".join(f"{stats.R2_SHORT[k]} {numbers[k]:.4f}" for k in stats.R2_SHORT)
              + " (elsewhere they agree to about 0.01: float rounding changes the sampling noise).", ""]
    lines += ["checksums.json covers every file but this card."]
    return "\n".join(lines) + "\n"
