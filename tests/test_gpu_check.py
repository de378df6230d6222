"""benchmarks/gpu_check.py cannot rot: its --tiny mode runs every part on the CPU (the same
code paths as on a GPU, at tiny sizes) and writes the JSON and the Markdown table; a part
that breaks makes it exit non-zero with the reason; a tight budget skips parts and says so."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from tests.train_helpers import REPO, subprocess_env

SCRIPT = REPO / "benchmarks" / "gpu_check.py"
KEYS = {"mode", "device", "torch", "cuda", "python", "date", "budget_s", "settings", "threads", "bf16_native",
        "cycles", "precision_check", "eval", "population", "projection", "training", "compile_backend", "goals",
        "skipped", "failures", "elapsed_s"}


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_tiny_gpu_check_runs_every_part(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--out", str(out)], cwd=tmp_path,
                          env=subprocess_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads((out / "gpu_check.json").read_text())
    assert set(r) == KEYS and r["mode"] == "tiny" and r["failures"] == []
    for preset in ("ipvae", "igvae", "igrelu"):
        cycles = r["cycles"][preset]
        for key in ("limit_fp32_s", "limit_bf16_s", "eager_s", "bf16_s", "compiled_s", "compiled_first_s"):
            assert cycles[key] > 0, (preset, key)
        assert r["precision_check"][preset]["passes"]
        assert r["eval"][preset]["every_step_s"] > 0 and r["eval"][preset]["log_grid_s"] > 0
        assert set(r["population"][preset]) == {"1", "16", "64"}
        assert all(v["per_member"] > 0 for v in r["population"][preset].values())
    assert set(r["projection"]["presets"]["ipvae"]["precisions"]) == {"fp32", "bf16"}
    # the training: killed by SIGKILL after its first checkpoint, resumed from it, finished
    t = r["training"]
    assert t["killed"] and t["first_rc"] == -9 and t["first_checkpoint"] == "step-00000025"
    assert t["resumed_from"] == t["first_checkpoint"] and t["resumed_step"] == 25
    assert t["final_checkpoint"] and t["second_rc"] == 0 and t["device_line_ok"]
    if not torch.cuda.is_available():  # what a CPU cannot do is skipped with the reason
        skipped = {s["what"]: s["reason"] for s in r["skipped"]}
        assert skipped["ipvae cudagraphs"] == "CUDA graphs need a CUDA device"
        assert "igrelu bf16_cudagraphs" in skipped
    text = (out / "gpu_check.md").read_text()
    assert "| preset | limit fp32 | limit bf16 | eager | bf16 | compiled | CUDA graphs |" in text
    assert text.count("| ipvae |") >= 2 and "| ipvae | 64 |" in text
    assert "Compiled over eager, timed in the same rounds: ipvae compiled " in text
    assert "first run killed (SIGKILL) after step-00000025" in text and "resumed from step-00000025" in text


def test_a_tight_budget_skips_every_part_and_says_so(tmp_path):
    gpu_check = _load()
    assert gpu_check.main(["--tiny", "--budget_s", "0.5", "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [s["what"] for s in r["skipped"]] == ["cycles", "precision_check", "eval", "population", "projection",
                                                 "compiled", "training"]
    assert all(s["reason"].startswith("time budget: ") for s in r["skipped"])
    assert "Skipped: cycles (time budget" in (tmp_path / "gpu_check.md").read_text()
    # the compiled cycles keep the time the training after them needs (tiny: 6 s + 25 s)
    assert gpu_check.main(["--tiny", "--budget_s", "20", "--parts", "compiled,training", "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [s["what"] for s in r["skipped"]] == [f"compiled cycles of {p}" for p in ("ipvae", "igvae", "igrelu")] \
        + ["training"]
    assert "kept for the parts after it" in r["skipped"][0]["reason"]


def test_a_part_that_breaks_fails_loudly(tmp_path, monkeypatch, capsys):
    gpu_check = _load()

    def broken(check):
        raise RuntimeError("the compiled cycle fell back to eager")

    monkeypatch.setattr(gpu_check, "cycles", broken)
    assert gpu_check.main(["--tiny", "--parts", "cycles", "--out", str(tmp_path)]) == 1
    r = json.loads((tmp_path / "gpu_check.json").read_text())
    assert r["failures"][0]["what"] == "cycles" and "fell back to eager" in r["failures"][0]["reason"]
    assert "gpu_check FAILED: cycles: RuntimeError: the compiled cycle fell back to eager" in capsys.readouterr().out
    assert "**Failed**: cycles" in (tmp_path / "gpu_check.md").read_text()
    with pytest.raises(SystemExit) as info:
        gpu_check.main(["--tiny", "--parts", "cycles,warp", "--out", str(tmp_path)])
    assert info.value.code == 2
