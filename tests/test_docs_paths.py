"""The documents a user reads name no folders of the machines they were written on: runs,
logs and checkpoints are named as runs/NAME under the repository (a user cannot see
/work/... or /tmp/... of another machine)."""

from __future__ import annotations

import re

from tests.train_helpers import REPO

# absolute paths of a development machine (a placeholder for the user's own data, such as
# /data/vH16/processed.npy in an example command, is fine)
MACHINE_PATH = re.compile(r"(?<![\w.~-])/(work|tmp|home|root|Users|var|mnt)/")


def documents():
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")),
            *sorted((REPO / "fondtrain" / "pretrained").glob("*/README.md")), REPO / "benchmarks" / "RESULTS.md"]


def test_documents_name_no_paths_of_a_development_machine():
    found = [f"{path.relative_to(REPO)}:{n}: {line.strip()[:100]}"
             for path in documents() for n, line in enumerate(path.read_text().splitlines(), 1)
             if MACHINE_PATH.search(line)]
    assert not found, "\n".join(found)


def test_the_pattern_finds_such_paths():
    assert MACHINE_PATH.search("made from /tmp/standin/run") and MACHINE_PATH.search("see /work/sci-runs/x")
    assert not MACHINE_PATH.search("--data_path /data/vH16/processed.npy") and not MACHINE_PATH.search("runs/x/tmp/")
