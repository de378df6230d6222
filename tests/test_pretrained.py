"""Pretrained models: `pretrained:NAME` wherever a run is taken, an unknown name in one
sentence, `fondtrain export RUN OUT --format pretrained` (bit-exact, whole or not at all,
the run's evaluation copied only when it is of the exported checkpoint), outputs of
commands on a pretrained model outside the package, and the shipped model itself: its
recorded numbers recomputed from its weights.

The commands run through `fondtrain.cli.main`, the console entry point, in this process."""

from __future__ import annotations

import fnmatch
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fondtrain.cli import main
from fondtrain.runs import files as run_files
from fondtrain.runs import pretrained
from fondtrain.runs import pretrained_export as PE
from fondtrain.train.trainer import train
from tests.train_helpers import REPO, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

SHIPPED = "natural16-ipvae"
EVAL_FAST = ["--n_steps=20", "--n_val=64", "--probe=false", "--tuning=false", "--gabor=false"]
HW_FAST = ["--n_blank=2", "--n_sweep=6", "--orientations=0,90", "--lead=1", "--movie=false", "--unit=0"]
# the recorded check on another machine or thread count: float rounding flips a Poisson count
# now and then and the rest of the trajectory draws other noise, which moves R^2 as another
# sampling seed would (one standard deviation ~0.001 at 512 patches,
# fondtrain.runs.pretrained_export.N_CHECK); weights read wrongly move it by ~0.7
# (test_the_check_tells_wrong_weights_apart); a changed weights file fails its checksum first
TOLERANCE = 0.01


def _cli(capsys, *argv) -> tuple[int, str, str]:
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def tiny_run(digits_shards, tmp_path_factory):
    """A tiny digits run with a checkpoint at step 6 and its (fast) evaluation."""
    runs = tmp_path_factory.mktemp("pretrained-runs")
    train(tiny_config(digits_shards, runs, "r", max_steps=6, ckpt_every=6))
    run = runs / "r"
    main(["eval", str(run), *EVAL_FAST, "--tensorboard=false"])
    return run


@pytest.fixture
def own_root(tmp_path, monkeypatch):
    """An empty folder of pretrained models in place of the package's, for models made by
    the tests (the package itself is never written)."""
    root = tmp_path / "package-pretrained"
    root.mkdir()
    monkeypatch.setattr(pretrained, "ROOT", root)
    return root


# ----------------------------------------------------------------------------- names
def test_a_name_resolves_to_its_folder_in_the_package():
    assert SHIPPED in pretrained.names()
    target = run_files.resolve_checkpoint(f"pretrained:{SHIPPED}")
    assert target == REPO / "fondtrain" / "pretrained" / SHIPPED
    assert pretrained.name_of(target) == SHIPPED and pretrained.name_of(target / run_files.MODEL_FILE) == SHIPPED
    assert pretrained.name_of(REPO) is None
    # bench --checkpoint takes it as any checkpoint: the sizes of its model
    from fondtrain.bench.settings import BenchSettings, use_checkpoint

    model, _ = run_files.load_model(f"pretrained:{SHIPPED}")
    s = use_checkpoint(BenchSettings(checkpoint=f"pretrained:{SHIPPED}"))
    assert (s.presets, s.n_latents, s.input_dim) == (("ipvae",), model.config.n_latents, 256)


@pytest.mark.parametrize("command", ["eval", "hubel-wiesel", "export", "compare"])
def test_an_unknown_name_is_one_sentence_listing_the_names(command, capsys, tmp_path):
    extra = ["--out", tmp_path / "o"]
    code, _, err = _cli(capsys, command, "pretrained:natural16-nope", *extra)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "'natural16-nope'" in err and SHIPPED in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- export
def test_export_to_pretrained_round_trip_is_bit_exact(tiny_run, own_root, digits_shards, capsys):
    code, out, err = _cli(capsys, "export", tiny_run, own_root / "tiny", "--format", "pretrained")
    assert code == 0, err
    folder = Path(out.strip())
    assert folder == own_root / "tiny"
    # only what inference needs, plus the evaluation and the card; no partial folder left
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["model.safetensors", "config.yaml", "trainer_state.json", "checksums.json", "COMPLETE",
         PE.CHECK_FILE, "metrics.json", "dictionary.png", PE.CARD])
    assert sorted(p.name for p in own_root.iterdir()) == ["tiny"]
    checkpoint = tiny_run / "ckpt" / "step-00000006"
    source = load_file(str(checkpoint / run_files.MODEL_FILE))
    shipped = load_file(str(folder / run_files.MODEL_FILE))
    assert source.keys() == shipped.keys() and all(torch.equal(source[k], shipped[k]) for k in source)
    model, config = run_files.load_model("pretrained:tiny")
    assert all(torch.equal(v, source[k]) for k, v in model.state_dict().items())
    assert config.model == run_files.load_model(tiny_run)[1].model
    assert json.loads((folder / "trainer_state.json").read_text()) == {
        "global_step": 6, "total_steps": run_files.read_trainer_state(checkpoint)["total_steps"],
        "eps": [run_files.checkpoint_eps(checkpoint)]}
    assert run_files.checkpoint_eps(folder) == run_files.checkpoint_eps(checkpoint)
    assert (folder / "COMPLETE").read_text() == "6\n" and run_files.checkpoint_problem(folder) is None
    sums = json.loads((folder / "checksums.json").read_text())
    assert PE.CARD not in sums and {"model.safetensors", "metrics.json", PE.CHECK_FILE} <= set(sums)
    # the run's evaluation, with this machine's runs and shards folders named as the defaults
    evaluated = json.loads((tiny_run / "eval" / "metrics.json").read_text())
    shipped_text = (folder / "metrics.json").read_text()
    shipped_metrics = json.loads(shipped_text)
    assert shipped_metrics.keys() == evaluated.keys() and shipped_metrics["final"] == evaluated["final"]
    assert shipped_metrics["convergence"] == evaluated["convergence"] and shipped_metrics["run"] == "runs/r"
    assert str(tiny_run.parent) in json.dumps(evaluated) and str(digits_shards) in json.dumps(evaluated)
    assert str(tiny_run.parent) not in shipped_text and str(digits_shards) not in shipped_text
    card = (folder / PE.CARD).read_text()
    assert "--max_steps 6" in card and "R^2 pooled" in card and "R^2 paper" in card and "(to fill in)" in card
    # the card ships: it names the run and checkpoint, not where this machine keeps them
    assert f"runs/{tiny_run.name}/ckpt/step-00000006" in card and str(tiny_run.parent) not in card
    assert str(own_root) not in card
    # the weights' numbers can be recomputed
    check = PE.read_check("pretrained:tiny")
    again = PE.compute_check(model, check["spec"])
    assert again == check["numbers"]  # same machine, same threads: the same draws


def test_export_of_a_checkpoint_takes_its_runs_evaluation(tiny_run, own_root, capsys):
    """The lead's way: `fondtrain eval --checkpoint RUN/ckpt/step-N`, then export that checkpoint."""
    code, _, err = _cli(capsys, "export", tiny_run / "ckpt" / "step-00000006", own_root / "t", "--format", "pretrained")
    assert code == 0, err
    assert (own_root / "t" / "metrics.json").is_file() and (own_root / "t" / "dictionary.png").is_file()


def test_export_to_pretrained_is_whole_or_not_at_all(tiny_run, own_root, tmp_path, capsys):
    """A corrupt source stops before anything is written; an existing folder is not overwritten."""
    run = tmp_path / "r"
    shutil.copytree(tiny_run, run)
    weights = run / "ckpt" / "step-00000006" / run_files.MODEL_FILE
    weights.write_bytes(weights.read_bytes()[:100])
    code, _, err = _cli(capsys, "export", run / "ckpt" / "step-00000006", own_root / "bad", "--format", "pretrained")
    assert code == 2 and err.count("\n") == 1 and "corrupt" in err, err
    assert list(own_root.iterdir()) == []
    (own_root / "taken").mkdir()
    (own_root / "taken" / "keep.txt").write_text("x")
    code, _, err = _cli(capsys, "export", tiny_run, own_root / "taken", "--format", "pretrained")
    assert code == 2 and "not empty" in err and err.count("\n") == 1, err
    assert [p.name for p in (own_root / "taken").iterdir()] == ["keep.txt"]


def test_an_evaluation_of_another_step_is_left_out(tiny_run, own_root, tmp_path, capsys):
    run = tmp_path / "r"
    shutil.copytree(tiny_run, run)
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    (run / "eval" / "metrics.json").write_text(json.dumps({**metrics, "training_step": 3}))
    code, _, err = _cli(capsys, "export", run, own_root / "t", "--format", "pretrained")
    assert code == 0 and "of training step 3, not 6: left out" in err, err
    assert not (own_root / "t" / "metrics.json").exists() and not (own_root / "t" / "dictionary.png").exists()
    assert "No evaluation was shipped" in (own_root / "t" / PE.CARD).read_text()


def test_compare_takes_a_name(tiny_run, own_root, tmp_path, capsys):
    assert _cli(capsys, "export", tiny_run, own_root / "tiny", "--format", "pretrained")[0] == 0
    code, out, err = _cli(capsys, "compare", "pretrained:tiny", tiny_run, "--out", tmp_path / "c.md")
    assert code == 0, err
    assert "| pretrained:tiny |" in out and "| r |" in out


# ----------------------------------------------------------------------------- outputs
def test_eval_of_a_name_writes_under_runs_not_the_package(tmp_path, monkeypatch, capsys):
    package = run_files.resolve_checkpoint(f"pretrained:{SHIPPED}")
    before = _snapshot(package)
    monkeypatch.chdir(tmp_path)
    code, _, err = _cli(capsys, "eval", f"pretrained:{SHIPPED}", *EVAL_FAST, "--figures=false")
    assert code == 0, err
    out = tmp_path / "runs" / f"pretrained-{SHIPPED}"
    assert (out / "eval" / "metrics.json").is_file() and any((out / "tb" / "eval").iterdir())
    assert json.loads((out / "eval" / "metrics.json").read_text())["training_step"] == \
        run_files.training_step(package)
    assert _snapshot(package) == before


def test_hubel_wiesel_of_a_pretrained_folder_writes_under_runs_not_the_package(tmp_path, monkeypatch, capsys):
    """Given by name or by its folder's path: the same output folder, outside the package."""
    package = run_files.resolve_checkpoint(f"pretrained:{SHIPPED}")
    before = _snapshot(package)
    monkeypatch.chdir(tmp_path)
    for given in (f"pretrained:{SHIPPED}", package):
        code, _, err = _cli(capsys, "hubel-wiesel", given, *HW_FAST)
        assert code == 0, err
        assert (tmp_path / "runs" / f"pretrained-{SHIPPED}" / "hubel-wiesel" / "spikes.wav").is_file()
        shutil.rmtree(tmp_path / "runs")
    assert _snapshot(package) == before


def test_help_texts_name_pretrained(capsys):
    for argv in (["--help"], ["eval", "--help"], ["hubel-wiesel", "--help"], ["export", "--help"]):
        code, out, _ = _cli(capsys, *argv)
        assert code in (0, None) and "pretrained:NAME" in out, argv
    assert "runs/pretrained-NAME" in _cli(capsys, "eval", "--help")[1]


# ----------------------------------------------------------------------------- the shipped model
def test_the_shipped_model_is_installed_and_small():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    folder = pretrained.ROOT / SHIPPED
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 5 * 2**20
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["fondtrain"]
    for path in files:  # pip installs exactly what package-data names
        relative = path.relative_to(REPO / "fondtrain").as_posix()
        assert any(fnmatch.fnmatch(relative, g) and relative.count("/") == g.count("/") for g in globs), relative


def test_the_shipped_model_recomputes_its_recorded_numbers():
    """Config, step and dictionary shape as its files record them, and the recorded check
    recomputed from the weights (the data first, so that a change of the data is named)."""
    folder = pretrained.ROOT / SHIPPED
    model, config = run_files.load_model(f"pretrained:{SHIPPED}")
    mc = model.config
    state = json.loads((folder / run_files.TRAINER_STATE).read_text())
    assert (folder / run_files.COMPLETE).read_text().strip() == str(state["global_step"])
    assert run_files.training_step(folder) == state["global_step"] > 0
    assert (mc.preset, mc.input_dim, config.data.dataset) == ("ipvae", 256, "natural16")
    assert tuple(model.W.shape) == (1, mc.input_dim, mc.n_latents)
    metrics_file = folder / "metrics.json"
    if metrics_file.is_file():  # the shipped evaluation is of these weights
        metrics = json.loads(metrics_file.read_text())
        assert metrics["training_step"] == state["global_step"]
        assert metrics["model"]["n_latents"] == mc.n_latents and metrics["model"]["preset"] == mc.preset
    check = PE.read_check(f"pretrained:{SHIPPED}")
    assert check["spec"]["eps"] == run_files.checkpoint_eps(folder)
    again = PE.compute_check(model, check["spec"])
    assert again["patches_sha256"] == check["numbers"]["patches_sha256"], \
        "the built-in data set's patches differ from the export's (a library version changed them)"
    for key in ("r2_mean", "r2_pooled", "r2_median"):
        assert again[key] == pytest.approx(check["numbers"][key], abs=TOLERANCE), key


def test_the_check_tells_wrong_weights_apart():
    """The recorded check is far off for the same numbers read in the wrong pixel order (what
    a loader that mixes up a layout would do)."""
    model, _ = run_files.load_model(f"pretrained:{SHIPPED}")
    check = PE.read_check(f"pretrained:{SHIPPED}")
    spec = {**check["spec"], "n_patches": 32, "n_steps": 50}  # the gap, cheaper
    with torch.no_grad():
        good = PE.compute_check(model, spec)["r2_pooled"]
        order = torch.randperm(model.W.shape[1], generator=torch.Generator().manual_seed(0))
        model.W.copy_(model.W[:, order])
        wrong = PE.compute_check(model, spec)["r2_pooled"]
    assert good - wrong > 30 * TOLERANCE, (good, wrong)
