"""write_text_atomic: the whole text or the old file, never a partial one."""

from __future__ import annotations

import pytest

from fondtrain.atomic_write import write_text_atomic


def test_writes_the_text_and_replaces_an_old_file(tmp_path):
    path = tmp_path / "table.tsv"
    assert write_text_atomic(path, "a\tb\n") == path and path.read_text() == "a\tb\n"
    write_text_atomic(path, "c\n")
    assert path.read_text() == "c\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.tsv"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_partial(tmp_path):
    path = tmp_path / "table.tsv"
    write_text_atomic(path, "old\n")
    with pytest.raises(UnicodeEncodeError):
        write_text_atomic(path, "\udcff")  # a lone surrogate cannot be encoded: fails mid-write
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.tsv"]
