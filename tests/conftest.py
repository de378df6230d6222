"""Fixtures shared by the test suite."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def digits_shards(tmp_path_factory):
    """The built-in digits data set as real WebDataset shards (built once per session)."""
    from fondtrain.data.shards import ensure_shards

    root = tmp_path_factory.mktemp("shards")
    ensure_shards("digits", root)
    return root
