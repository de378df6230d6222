"""Data: sources -> WebDataset shards -> per-rank loader -> feeders.

    sources.py   load_source(name, path, seed, **opts) -> SourceData (x [N, M] float32, ...)
    whiten.py    1/f whitening and patch sampling for photo data sets
    shards.py    write_shards / verify_shards / load_manifest / read_split / ensure_shards
    loader.py    ShardLoader(shard_dir, split, batch_size, rank, world_size, ...).epoch(e)
    feeders.py   make_feeder(name, x, n_steps) -> feeder[t] = [B, M]

The names below are imported lazily so that `import fondtrain.data.shards` (the CLI)
does not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "SOURCES": "sources",
    "SourceData": "sources",
    "load_source": "sources",
    "read_idx": "sources",
    "write_shards": "shards",
    "verify_shards": "shards",
    "load_manifest": "shards",
    "read_split": "shards",
    "build_shards": "shards",
    "ensure_shards": "shards",
    "ShardLoader": "loader",
    "FEEDERS": "feeders",
    "make_feeder": "feeders",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
