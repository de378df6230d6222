"""fire runs every `fondtrain` command, and gets from the typed layer values it cannot misread."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import fire
import numpy as np
import pytest

from fondtrain.cli import main
from fondtrain.cli.flags import literal
from tests.train_helpers import REPO


def test_fire_dispatches_with_the_typed_values(tmp_path, monkeypatch, capsys):
    np.save(tmp_path / "arr.npy", np.random.default_rng(0).standard_normal((300, 8, 8)).astype(np.float32))
    monkeypatch.chdir(tmp_path)
    calls = []
    real_fire = fire.Fire

    def recording_fire(*args, **kwargs):
        calls.append(kwargs["command"])
        return real_fire(*args, **kwargs)

    monkeypatch.setattr(fire, "Fire", recording_fire)
    main(["shard", "--dataset", "npy", "--path", "arr.npy", "--out", "sh", "--seed", "1e0", "--overwrite", "no"])
    folder = Path(capsys.readouterr().out.strip())
    assert calls == [["shard", "--dataset='npy'", "--path='arr.npy'", "--out='sh'", "--seed=1", "--overwrite=False"]]
    assert (tmp_path / folder / "manifest.json").is_file()


@pytest.mark.parametrize("value", ["123", "false", "a 'quoted' \"word\"\n", "--help", "-", "", 1e5, 0.1, -7.0,
                                   math.inf, -math.inf, 3, 2**62 + 1, True, None, (0.9, 0.999), (5.0,), (),
                                   ("ipvae", "igvae")])
def test_fire_reads_each_literal_back_exactly(value):
    got = fire.Fire(lambda v=None: v, command=[f"--v={literal(value)}"], serialize=lambda result: None)
    assert got == value and type(got) is type(value)


def test_no_argparse_in_the_package():
    """One parsing style: the typed layer over fire (slurm_env: fire with its own checks)."""
    users = []
    for path in sorted((REPO / "fondtrain").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) else []
            users += [str(path.relative_to(REPO)) for name in names if (name or "").split(".")[0] == "argparse"]
    assert users == []
