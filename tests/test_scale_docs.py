"""docs/cluster.md stays true: the files it names exist and the training flags it uses parse."""

from __future__ import annotations

import re
import shlex

from fondtrain.cli.flags import train_options
from tests.train_helpers import REPO

DOC = REPO / "docs" / "cluster.md"


def _code_lines() -> list[str]:
    """Lines of the fenced code blocks, with backslash continuations joined."""
    blocks = re.findall(r"```[a-z]*\n(.*?)```", DOC.read_text(), flags=re.S)
    return [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]


def test_files_named_in_the_cluster_guide_exist():
    named = set(re.findall(r"(launch/[\w/.-]+\.(?:py|json|sbatch|tsv)|fondtrain/[\w/]+\.py|tests/[\w]+\.py)",
                           DOC.read_text()))
    assert {"launch/slurm/train_multi_node.sbatch", "launch/deepspeed/zero1.json"} <= named
    missing = sorted(n for n in named if not (REPO / n).exists())
    assert not missing, missing


def test_training_flags_in_the_cluster_guide_parse():
    known = {f"--{name}" for o in train_options() for name in (o.name, *o.aliases)}
    used = set()
    for line in _code_lines():
        if "launch/train.py" not in line and ".sbatch" not in line:
            continue
        words = shlex.split(line.lstrip("# "))
        after = [i for i, w in enumerate(words) if w.endswith("train.py") or w.endswith(".sbatch")]
        if after:
            used |= {w.split("=")[0] for w in words[after[0] + 1:] if w.startswith("--")}
    assert {"--backend", "--deepspeed_config", "--mixed_precision", "--dataset"} <= used
    unknown = sorted(used - known)
    assert not unknown, unknown
