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


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matrices: a second thread only adds overhead (and is slow on a busy machine).
    A module opts in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def keep_figures(monkeypatch):
    """keep_figures(module, name): from then on every figure `module.name` makes (the real
    drawing) is also kept in the returned list, for the test to inspect."""
    def start(module, name: str = "new_figure") -> list:
        drawn, original = [], getattr(module, name)

        def keep(*args, **kwargs):
            drawn.append(original(*args, **kwargs))
            return drawn[-1]

        monkeypatch.setattr(module, name, keep)
        return drawn

    return start
