"""One form of every model: a plain run is a population of one (P = 1), so no line of the
package branches on "a single model or a population", and no function has a population
twin beside it (`evaluate` and `evaluate_population`, `load` and `load_members`)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from tests.train_helpers import REPO

PACKAGE = REPO / "fondtrain"
# The tests a second form leaves: `model.n_members is None`, `if members is None: ...`.
MARKERS = ("members is None", "n_members is not None")
TWIN_SUFFIXES = ("_members", "_population")


def marked_lines(root: Path) -> list[str]:
    """path:line: text of every line under root holding one of MARKERS."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if any(marker in line for marker in MARKERS):
                found.append(f"{path.relative_to(root.parent)}:{number}: {line.strip()}")
    return found


def twins(root: Path) -> list[str]:
    """Functions NAME_members or NAME_population defined in the same folder as a NAME."""
    defined: dict[Path, set[str]] = defaultdict(set)
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                defined[path.parent].add(node.name)
    return sorted(f"{folder.relative_to(root.parent)}: {name} beside {name[:-len(suffix)]}"
                  for folder, names in defined.items() for name in names for suffix in TWIN_SUFFIXES
                  if name.endswith(suffix) and name[:-len(suffix)] in names)


def test_no_line_branches_on_one_model_or_a_population():
    assert marked_lines(PACKAGE) == []


def test_no_function_has_a_population_twin():
    assert twins(PACKAGE) == []


def test_the_checks_see_branches_and_twins(tmp_path):
    package = tmp_path / "fondtrain"
    (package / "eval").mkdir(parents=True)
    (package / "eval" / "evaluate.py").write_text("def evaluate(model):\n    return model.n_members is None\n")
    (package / "eval" / "population.py").write_text("def evaluate_population(run):\n    pass\n")
    (package / "sweep.py").write_text("def run_members(config):\n    pass\n")  # no `run` beside it
    assert marked_lines(package) == ["fondtrain/eval/evaluate.py:2: return model.n_members is None"]
    assert twins(package) == ["fondtrain/eval: evaluate_population beside evaluate"]
