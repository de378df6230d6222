"""One-way layers: every import of every fondtrain module, function-local ones included.

    base: config/ (the dataclasses, a sweep's members, the schedules), errors, seeding,
          stats, images, runtime, atomic_write
    data/          model/            (unaware of each other)
    runs/          (a run folder: reading runs and checkpoints, export; above data/ and model/,
                   below train/ and eval/)
    train/         eval/             (unaware of each other)
    cli/, bench/   (on top)
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.train_helpers import REPO

PACKAGE = REPO / "fondtrain"
BASE = {"config", "errors", "seeding", "stats", "images", "runtime", "atomic_write"}
TOP = ("cli", "bench")  # fondtrain.cli.* and fondtrain.bench.*


def layer(module: str) -> str:
    """'data', 'model', 'train', 'eval', 'base', 'runs' or 'top' for fondtrain.X..."""
    part = module.split(".")[1] if module.count(".") else ""
    if part in ("data", "model", "train", "eval", "runs"):
        return part
    if part in BASE or part in ("", "__init__"):
        return "base"
    if part.startswith(TOP):
        return "top"
    raise AssertionError(f"{module}: no layer assigned; add it to tests/test_layers.py")


FORBIDDEN = {
    "base": {"data", "model", "train", "eval", "runs", "top"},
    "model": {"data", "train", "eval", "runs", "top"},
    "data": {"model", "train", "eval", "runs", "top"},
    "runs": {"train", "eval", "top"},
    "train": {"eval", "top"},
    "eval": {"train", "top"},
    "top": set(),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import statement anywhere in the file."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            found.append((node.lineno, base))
            # `from fondtrain import data` imports the package fondtrain.data
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names
                      if (PACKAGE / alias.name).with_suffix(".py").is_file() or (PACKAGE / alias.name).is_dir()
                      if base == "fondtrain"]
    return found


def violations() -> list[str]:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = module_name(path)
        for line, target in imports(path):
            if not target.startswith("fondtrain.") or target.split(".")[1] == here.split(".")[1]:
                continue
            if layer(target) in FORBIDDEN[layer(here)]:
                bad.append(f"{path.relative_to(REPO)}:{line}: {here} ({layer(here)}) imports {target}")
    return bad


def test_imports_go_one_way():
    assert violations() == []


def test_the_checker_sees_function_local_and_relative_imports(tmp_path, monkeypatch):
    eval_dir = tmp_path / "fondtrain" / "eval"
    eval_dir.mkdir(parents=True)
    (tmp_path / "fondtrain" / "train").mkdir()
    (tmp_path / "fondtrain" / "train" / "loop.py").write_text("")
    (eval_dir / "bad.py").write_text("def f():\n    from fondtrain.train.loop import x\n"
                                     "def g():\n    from ..train import loop\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "fondtrain")
    found = [t for _, t in imports(eval_dir / "bad.py")]
    assert found == ["fondtrain.train.loop", "fondtrain.train"], found
    assert len(violations()) == 2


@pytest.mark.parametrize("module", ["fondtrain.eval.evaluate", "fondtrain.eval.tuning", "fondtrain.runs.files"])
def test_evaluation_loads_neither_the_trainer_nor_deepspeed(module):
    code = (f"import sys, {module}; "
            "print(sorted(m for m in sys.modules if m.startswith(('fondtrain.train', 'deepspeed'))))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]", proc.stdout
