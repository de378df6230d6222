"""`fondtrain bench --quick` style runs write their tables (tiny sizes, a real memory
worker process), and the reference loader answers a wrong `--reference_dir` with one
sentence before any work starts (so does benchmarks/reference_train.py)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from fondtrain import bench
from fondtrain.bench.reference import load_reference
from fondtrain.cli import main
from fondtrain.errors import UserError


def _one_sentence(message: str) -> bool:
    return ("\n" not in message and message.endswith(".")
            and re.search(r"[.!?]\s+[A-Z]", message) is None and len(message) > 15)


def _table(text: str, header: str) -> list[str]:
    """The rows of the Markdown table whose header starts with `header`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


def test_bench_quick_writes_every_table(tmp_path):
    out = tmp_path / "speed.md"
    main(["bench", "--quick", "--presets", "ipvae,igrelu", "--batch_size", "4", "--n_latents", "6",
          "--t_train", "2", "--eval_steps", "3", "--repeats", "1", "--n_exp", "3",
          "--precision", "fp32,bf16", "--shards_root", str(tmp_path / "no-shards"), "--out", str(out)])
    text = out.read_text()
    tables = {"| preset | cycle ms |": 2, "| preset | every step |": 1,
              "| preset | peak MB | saved for backward MB |": 1, "| preset | precision | loss rel.": 1,
              "| preset | precision | cycle ms at temperature": 2}
    for header, per_preset in tables.items():
        rows = _table(text, header)
        for preset in ("ipvae", "igrelu"):
            assert len([r for r in rows if r.startswith((f"| {preset} |", f"| {preset}, bf16 |"))]) == per_preset, \
                (header, preset)
    assert "K=6" in text and "t_train=2" in text and "medians of 1 interleaved" in text
    assert "100,000 natural16 patches (natural16's documented default" in text
    # --quick: no scaling or process figures
    assert "| ipvae, vary |" not in text and "| processes x threads |" not in text


def test_bench_precision_and_projection_flags(tmp_path):
    """--precision fp32: no bf16 figures; --projection_steps: the run's first steps only;
    an unknown precision: one sentence before any work."""
    out = tmp_path / "speed.json"
    main(["bench", "--quick", "--presets", "igvae", "--batch_size", "4", "--n_latents", "6",
          "--t_train", "2", "--eval_steps", "3", "--repeats", "1", "--memory", "false", "--precision", "fp32",
          "--projection_steps", "40", "--n_train", "400", "--epochs", "3", "--out", str(out)])
    import json

    results = json.loads(out.read_text())
    assert results["precisions"] == ["fp32"] and "precision_check" not in results
    assert "fondtrain_cycle_bf16" not in results["speed"]["igvae"]
    run = results["projection"]["run"]
    assert (run["steps"], run["total_steps"], run["steps_per_epoch"]) == (40, 300, 100)
    with pytest.raises(SystemExit) as info:
        main(["bench", "--quick", "--precision", "fp64", "--out", str(tmp_path / "never.json")])
    assert info.value.code == 2 and not (tmp_path / "never.json").exists()
    with pytest.raises(UserError, match="unknown precision 'fp64'"):
        bench.run(bench.BenchSettings(precisions=("fp64",)), log=lambda _: None)


def test_bench_scaling_times_every_variant():
    """The scaling case at tiny sizes (batch 4, M 9, K 6, t_train 2 besides the varied one):
    every variant timed, one table row each."""
    from fondtrain.bench import cases, report

    s = bench.BenchSettings(presets=("igvae",), batch_size=4, input_dim=9, n_latents=6,
                            t_train=2, eval_steps=2, repeats=1, processes=(), memory=False)
    rows = cases.scaling(s, log=lambda _: None)
    assert [(r["vary"], r["value"]) for r in rows] == [
        ("n_latents", 256), ("n_latents", 512), ("n_latents", 1024),
        ("batch_size", 100), ("batch_size", 400), ("t_train", 8), ("t_train", 32)]
    assert all(r["cycle_s"] > 0 and r["over_limit"] > 0 for r in rows)
    assert report._scaling_table(rows).count("\n") == len(rows) + 1


@pytest.mark.parametrize("make", ["missing", "empty", "file", "incomplete", "not_python"])
def test_reference_loader_refuses_a_path_that_is_not_a_checkout(tmp_path, make):
    root = tmp_path / "ref"
    if make == "empty":
        root.mkdir()
    elif make == "file":
        root.write_text("not a folder\n")
    elif make in ("incomplete", "not_python"):
        from fondtrain.bench.reference import _SOURCES

        for rel, _ in _SOURCES:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text("x = 1\n" if make == "incomplete" else "def (:\n")
    with pytest.raises(UserError) as info:
        load_reference(str(root))
    message = str(info.value)
    assert _one_sentence(message), message
    assert "hadivafaii/IterativeVAE" in message


def test_bench_refuses_a_wrong_reference_dir_before_timing(tmp_path):
    lines: list[str] = []
    s = bench.BenchSettings(reference_dir=str(tmp_path / "nowhere"), batch_size=4, n_latents=6,
                            t_train=2, eval_steps=2, repeats=1, processes=(), memory=False,
                            scaling=False)
    with pytest.raises(UserError):
        bench.run(s, str(tmp_path / "out.md"), log=lines.append)
    assert lines == [] and not (tmp_path / "out.md").exists()


def test_population_cycles_are_timed_against_single_cycles(tmp_path):
    """--population times a cycle of P members against P single cycles, each preset,
    and reports the ratio in its own table."""
    lines: list[str] = []
    s = bench.BenchSettings(population=(1, 3), batch_size=4, n_latents=6, t_train=2,
                            eval_steps=2, repeats=1, processes=(), memory=False, scaling=False)
    bench.run(s, str(tmp_path / "out.md"), log=lines.append)
    text = (tmp_path / "out.md").read_text()
    assert "cycle / (P x single)" in text
    table = text[text.index("cycle / (P x single)"):]
    for preset in s.presets:
        assert any(line.strip().startswith(f"{preset} P=3:") for line in lines)
        rows = [row for row in table.splitlines() if row.startswith(f"| {preset} | 3 |")]
        assert len(rows) == 1 and float(rows[0].split("|")[5]) > 0


@pytest.mark.parametrize("case", ["no checkout", "out exists"])
def test_reference_train_script_refuses_bad_input_in_one_sentence(tmp_path, case):
    """benchmarks/reference_train.py (the reference trained on fondtrain's shards) says what
    is wrong in one sentence, writes nothing and trains nothing."""
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "reference_train.py"
    out = tmp_path / "model.pt"
    if case == "out exists":
        out.write_bytes(b"kept")
    reference = tmp_path / ("nowhere" if case == "no checkout" else "")
    proc = subprocess.run([sys.executable, str(script), "--reference_dir", str(reference),
                           "--out", str(out), "--steps", "10", "--shards_root", str(tmp_path / "shards")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    message = proc.stderr.strip().removeprefix("error: ")
    assert _one_sentence(message), message
    assert ("exists" in message) == (case == "out exists")
    assert not (tmp_path / "shards").exists()
    assert (out.read_bytes() == b"kept") if case == "out exists" else not out.exists()
