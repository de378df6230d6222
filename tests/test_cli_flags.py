"""The command line's flag table and parser: help, types, booleans, refusals before any work."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fondtrain import __version__
from fondtrain.cli import commands, main
from fondtrain.cli.flags import (
    SECTIONS,
    command_options,
    described,
    parse_args,
    resolve_config,
    train_options,
    typed_arguments,
)
from fondtrain.errors import UserError
from tests.train_helpers import REPO, subprocess_env

LAUNCH = [sys.executable, str(REPO / "launch" / "train.py")]
FONDTRAIN = [sys.executable, "-m", "fondtrain.cli"]


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=subprocess_env(), capture_output=True, text=True,
                          timeout=120)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.stdout[-2000:], proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    return lines[0]


# ------------------------------------------------------------------ help and version

@pytest.mark.parametrize("argv,expected", [
    (["train", "--help"], ["--n_latents  int", "--preset, --model  {ipvae|igvae|igrelu}",
                           "--betas  float,float  (default: 0.9,0.999)", "\nmodel:", "\ntrain:"]),
    (["train", "-h"], ["--feeder  {stationary|jitter|rotate}", "--clamp_u  float,... | none"]),
    (["eval", "--help"], ["usage: fondtrain eval [RUN]", "--probe  bool  (default: True)"]),
    (["shard", "-h"], ["--n_train  int | none", "--overwrite  bool"]),
    (["--help"], [f"  {name.replace('_', '-')} " for name in commands()]),
])
def test_help_goes_to_stdout_and_exits_0(tmp_path, argv, expected):
    proc = run(FONDTRAIN + argv, tmp_path)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-2000:]
    for text in expected:
        assert text in proc.stdout, text
    assert not list(tmp_path.iterdir())


def test_version(tmp_path):
    proc = run(FONDTRAIN + ["--version"], tmp_path)
    assert proc.returncode == 0 and proc.stdout == f"fondtrain {__version__}\n"


@pytest.mark.parametrize("name", sorted(commands()))
def test_every_command_has_help_describing_every_flag(name, capsys):
    main([name.replace("_", "-"), "--help"])
    options = command_options(commands()[name])
    out, err = capsys.readouterr()
    assert err == "" and out.startswith(f"usage: fondtrain {name.replace('_', '-')}")
    for o in options:
        assert o.help, f"fondtrain {name} --{o.name} has no description (docstring Args)"
        assert f"--{o.name}" in out and " ".join(o.help.split()) in " ".join(out.split())  # wrapped


# ------------------------------------------------------------------ the table

def test_every_config_field_has_a_description():
    for kind in SECTIONS.values():
        fields, descriptions = {f.name for f in dataclasses.fields(kind)}, described(kind)[1]
        missing = sorted(fields - set(descriptions))
        assert not missing, f"describe {missing} in the Attributes of {kind.__name__}'s docstring"
        assert not sorted(set(descriptions) - fields), f"{kind.__name__}'s Attributes name fields that do not exist"
    assert all(o.help for o in train_options())


def test_flag_types_are_the_real_annotations():
    kinds = {o.name: o.kind for o in train_options()}
    assert kinds["betas"] == tuple[float, float]
    assert kinds["clamp_u"] == tuple[float, ...] | None
    assert kinds["compile"] is bool and kinds["in_memory"] is bool
    assert kinds["n_latents"] is int and kinds["lr"] is float and kinds["name"] is str
    assert kinds["path"] == str | None and kinds["beta_outer"] == float | None
    seed = next(o for o in train_options() if o.name == "seed")
    assert {s for s, _ in seed.fields} == set(SECTIONS)


def test_values_convert_to_their_types():
    config = parse_args(["--betas", "0.8,0.99", "--clamp_du", "5", "--compile", "YES",
                         "--in_memory=0", "--max_steps", "1e3", "--path", "none", "--seed", "4",
                         "--u_init_low", "-7", "--u_init_high=-5", "--name", "123", "--lr", "2e-3"])
    t, m, d = config.train, config.model, config.data
    assert t.betas == (0.8, 0.99) and m.clamp_du == (5.0,) and t.compile is True
    assert d.in_memory is False and t.max_steps == 1000 and d.path is None
    assert m.seed == d.seed == t.seed == 4 and m.u_init_low == -7.0 and m.u_init_high == -5.0
    assert t.name == "123" and t.lr == 2e-3
    assert parse_args(["--nocompile", "--noin_memory"]).data.in_memory is False
    assert parse_args(["--n-latents", "8"]).model.n_latents == 8


def test_large_whole_numbers_stay_exact():
    seed = 2**62 + 1  # a float would round it
    assert parse_args(["--seed", str(seed)]).train.seed == seed
    assert resolve_config(None, {"seed": seed}).model.seed == seed  # typed values pass through again


@pytest.mark.parametrize("argv,message", [
    (["--n_latent", "32"], "unknown option --n_latent (did you mean --n_latents?)"),
    (["--n_lat", "32"], "unknown option --n_lat"),
    (["--betas", "0.9"], "--betas needs 2 numbers separated by a comma"),
    (["--betas", "0.9,a"], "--betas got '0.9,a'"),
    (["--betas", "1.5,0.999"], "betas are Adamax's decay rates: give two numbers from 0 to below 1"),
    (["--feeder", "jiter"], "--feeder 'jiter' is not one of stationary, jitter, rotate (did you mean jitter?)"),
    (["--backend", "horovod"], "--backend 'horovod' is not one of accelerate, deepspeed"),
    (["--mixed_precision", "fp8"], "is not one of no, bf16, fp16"),
    (["--poisson_kl", "exakt"], "is not one of reference, exact"),
    (["--dataset", "cifar"], "--dataset 'cifar' is not one of natural16, deadleaves16, digits"),
    (["--model", "vae"], "--model 'vae' is not one of ipvae, igvae, igrelu"),
    (["--compile", "maybe"], "--compile got 'maybe', which is not a valid bool"),
    (["--in_memory=maybe"], "--in_memory got 'maybe', which is not a valid bool"),
    (["--n_latents", "2.5"], "--n_latents got '2.5', which is not a valid int"),
    (["--n_latents", "none"], "--n_latents got 'none', which is not a valid int"),
    (["--lr"], "--lr needs a value"),
    (["--lr", "--epochs", "3"], "--lr needs a value"),
])
def test_bad_flags_are_refused(argv, message):
    with pytest.raises(UserError) as info:
        parse_args(argv)
    assert message in str(info.value), str(info.value)


def test_yaml_values_are_typed_and_checked(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  clamp_u: [7, 2]\n  preset: igvae\ntrain:\n  betas: [0.8, 0.9]\n")
    config = resolve_config(str(path))
    assert config.model.clamp_u == (7.0, 2.0) and config.train.betas == (0.8, 0.9)
    for text, message in [("train:\n  betas: [0.9]\n", "--betas needs 2 numbers"),
                          ("data:\n  feeder: jiter\n", "is not one of stationary"),
                          ("model:\n  n_latent: 3\n", "unknown model option 'n_latent' (did you mean n_latents?)"),
                          ("train:\n  epochs: 2.5\n", "--epochs got 2.5"),
                          ("train:\n  epochs: null\n", "--epochs needs a value of type int, not none")]:
        path.write_text(text)
        with pytest.raises(UserError, match=re.escape(message)):
            resolve_config(str(path))


# ------------------------------------------------------------------ other commands

def _eval_kwargs(argv: list[str]) -> dict:
    return typed_arguments(commands()["eval"], argv, "fondtrain eval")[1]


@pytest.mark.parametrize("argv,probe", [(["--probe", "false"], False), (["--probe", "False"], False),
                                        (["--probe=no"], False), (["--noprobe"], False), (["--no-probe"], False),
                                        (["--probe", "0"], False), (["--probe", "YES"], True),
                                        (["--probe"], True), ([], True)])
def test_eval_booleans(argv, probe):
    kwargs = _eval_kwargs(["runs/x", *argv, "--n_steps", "5"])
    assert kwargs.get("probe", True) is probe
    assert kwargs["run"] == "runs/x" and kwargs["n_steps"] == 5


def test_eval_flag_types():
    kwargs = _eval_kwargs(["--run", "r", "--temp", "none", "--n_val", "100", "--notensorboard",
                           "--device", "cpu", "--nofigures", "--seed", "3"])
    assert kwargs == {"run": "r", "temp": None, "n_val": 100, "tensorboard": False,
                      "device": "cpu", "figures": False, "seed": 3}
    with pytest.raises(UserError, match="--n_steps got 'many'"):
        _eval_kwargs(["r", "--n_steps", "many"])
    with pytest.raises(UserError, match=r"unknown option --prob \(did you mean --probe\?\)"):
        _eval_kwargs(["r", "--prob", "false"])


def test_positional_words_and_varargs():
    fn = commands()["compare"]
    assert typed_arguments(fn, ["a", "b", "--out", "c.csv", "d"], "fondtrain compare") == (["a", "b", "d"],
                                                                                            {"out": "c.csv"})
    fn = commands()["export"]
    with pytest.raises(UserError, match="fondtrain export needs OUT"):
        typed_arguments(fn, ["run"], "fondtrain export")
    with pytest.raises(UserError, match="extra argument 'x'"):
        typed_arguments(fn, ["run", "out", "safetensors", "x"], "fondtrain export")
    assert typed_arguments(fn, ["run", "--out", "o"], "fondtrain export") == ([], {"run": "run", "out": "o"})


@pytest.mark.parametrize("argv,message", [
    (["runs/x", "--probe", "maybe"], "--probe got 'maybe', which is not a valid bool"),
    (["--run", "runs/x", "--gabor", "maybe"], "--gabor got 'maybe', which is not a valid bool"),
])
def test_a_word_after_a_boolean_is_its_value_where_no_positional_word_fits(argv, message):
    with pytest.raises(UserError, match=re.escape(message)):
        _eval_kwargs(argv)


@pytest.mark.parametrize("argv,probe", [(["--probe", "runs/x"], True), (["--noprobe", "runs/x"], False),
                                        (["runs/x", "--noprobe"], False), (["runs/x", "--probe"], True)])
def test_the_run_may_follow_a_boolean_flag(argv, probe):
    assert _eval_kwargs(argv) == {"run": "runs/x", "probe": probe}


@pytest.mark.parametrize("columns", [60, 100])
def test_help_wraps_to_the_terminal_width(columns, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", str(columns))  # what shutil.get_terminal_size reads first
    for command in ("train", "eval", "bench", "--help"):
        main([command, "--help"] if command != "--help" else [command])
        out = capsys.readouterr().out
        too_long = [line for line in out.splitlines() if len(line) >= columns and " " in line.strip()]
        assert not too_long, (command, too_long)  # only a single word longer than the width may stick out
    main(["train", "--help"])
    lines = capsys.readouterr().out.splitlines()
    compile_help = lines[lines.index("  --compile  bool  (default: False)") + 1:]
    described = [line for line in compile_help[:compile_help.index("  --log_every  int  (default: 20)")]]
    assert len(described) > 1 and all(line.startswith("      ") for line in described)  # continuation indented


def test_optimiser_flags_name_adamax(capsys):
    main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "AdamW" not in out
    for text in ("--lr float (default: 0.005) peak learning rate (Adamax)", "Adamax weight decay",
                 "Adamax beta1,beta2"):
        assert text in out, text


def test_unknown_command_names_the_closest(capsys):
    with pytest.raises(SystemExit) as info:
        main(["trian", "--epochs", "1"])
    assert info.value.code == 2
    assert "unknown command 'trian' (did you mean train?)" in capsys.readouterr().err
    main(["import-upstream", "--help"])  # the hyphenated spelling works too
    assert capsys.readouterr().out.startswith("usage: fondtrain import-upstream PATH OUT")


def _npy(folder: Path) -> None:
    np.save(folder / "arr.npy", np.random.default_rng(0).standard_normal((300, 8, 8)).astype(np.float32))


def test_misspelt_shard_flag_writes_nothing(tmp_path):
    _npy(tmp_path)
    line = one_error_line(run(FONDTRAIN + ["shard", "--dataset", "npy", "--path", "arr.npy",
                                           "--out", "sh", "--n_trian", "100"], tmp_path))
    assert "unknown option --n_trian (did you mean --n_train?)" in line
    assert not (tmp_path / "sh").exists()


def test_shard_boolean_reaches_the_command(tmp_path):
    _npy(tmp_path)
    base = FONDTRAIN + ["shard", "--dataset", "npy", "--path", "arr.npy", "--out", "sh"]
    first = run(base, tmp_path)  # an array file gets its own folder, npy-<stem>-<hash>
    assert first.returncode == 0
    assert "--overwrite" in one_error_line(run(base + ["--overwrite", "false"], tmp_path))
    proc = run(base + ["--overwrite", "Yes"], tmp_path)
    folder = proc.stdout.strip()
    assert proc.returncode == 0 and folder == first.stdout.strip(), proc.stderr
    assert Path(folder).parent == Path("sh") and Path(folder).name.startswith("npy-arr-")


# ------------------------------------------------------------------ one command line

@pytest.mark.parametrize("flags", [["--n_latent", "32"], ["--feeder", "jiter"], ["--betas", "0.9"],
                                   ["--betas", "1.5,0.999"]])
def test_launch_script_and_fondtrain_train_share_one_entry(tmp_path, flags):
    common = ["--runs_root", str(tmp_path / "runs"), "--shards_root", str(tmp_path / "shards")]
    by_launch = one_error_line(run(LAUNCH + ["--local_rank=0", *flags, *common], tmp_path))
    by_cli = one_error_line(run(FONDTRAIN + ["train", *flags, *common], tmp_path))
    assert by_launch.replace("launch/train.py", "fondtrain train") == by_cli
    assert not (tmp_path / "runs").exists() and not (tmp_path / "shards").exists()


def test_launch_script_help_is_the_same_table(tmp_path):
    by_launch = run(LAUNCH + ["--help"], tmp_path)
    by_cli = run(FONDTRAIN + ["train", "--help"], tmp_path)
    assert by_launch.returncode == by_cli.returncode == 0
    assert by_launch.stdout.startswith("usage: launch/train.py")
    assert by_launch.stdout.splitlines()[1:] == by_cli.stdout.splitlines()[1:]
    assert "--n_latents" in by_cli.stdout
