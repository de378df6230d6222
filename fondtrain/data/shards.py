"""WebDataset shards: write (atomically) and build-if-missing; reading and verifying are in
`fondtrain.data.shard_reader`.

Layout of a shard folder `shards/<dataset>/` (`shards/npy-<file>-<hash>/` for a user
array, see `shard_folder`):

    manifest.json
    train-000000.tar, train-000001.tar, ...
    val-000000.tar, ...
    verified.json       sizes and mtimes at the last full check (`verify_shards_once`)

Each tar is a valid WebDataset shard whose samples are BLOCKS of consecutive rows:
key `block_000123` with members `block_000123.npy` ([b, M] float32, b <= block_size)
and, for labelled data, `block_000123.labels.npy` ([b] int64). Block keys count up
through a split, so a block's key is unique within it. 16x16 patches are 1 KiB, so
moving blocks instead of single samples keeps per-sample overhead (tar headers, Python
calls, inter-process pickling) negligible.

manifest.json records: format, dataset, source, seed, source_kwargs, input_dim,
sample_shape, dtype, label_dtype, normalization {mean, std}, block_size,
samples_per_shard, per split {n_samples, shards: [{file, n_samples, n_blocks,
first_block, bytes, sha256}]}, meta (the source's description), fondtrain_version,
created (UTC, ISO 8601).

The tars are written with the standard `tarfile` module in the layout WebDataset reads
(members of a sample adjacent, named <key>.<ext>), so writing and verifying shards does
not import torch. Writing goes to a hidden temporary sibling folder that is renamed into place at the end,
so a conversion that fails leaves no half-written folder behind. Tar members carry
mtime 0, so the same data and seed give byte-identical shards (same sha256).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import shutil
import tarfile
import uuid
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

import fondtrain
from fondtrain.data.shard_reader import FORMAT, MANIFEST, sha256_of, verify_shards_once
from fondtrain.errors import UserError

DEFAULT_BLOCK_SIZE = 1024  # 1 MB blocks of 16x16 patches: per-block overhead (tar and
# .npy headers) stays well below the cost of the data itself
MAX_SAMPLES_PER_SHARD = 8192
TARGET_TRAIN_SHARDS = 64
def default_samples_per_shard(n_train: int, block_size: int = DEFAULT_BLOCK_SIZE) -> int:
    """Samples per shard: aim for >= 64 train shards, in whole blocks, at most 8192.

    Many small shards let several loader workers read in parallel and keep the share of
    one rank's data that sits in a partly-read shard small (the loader splits ranks by
    sample range, so it does not need more shards than ranks). 100k patches -> 2048
    samples (2 MB) per shard, 49 shards.
    """
    per = math.ceil(max(n_train, 1) / TARGET_TRAIN_SHARDS)
    per = math.ceil(per / block_size) * block_size
    return int(min(max(per, block_size), max(MAX_SAMPLES_PER_SHARD, block_size)))


def _jsonable(obj: Any) -> Any:
    """Make numpy scalars / arrays / paths in a meta dict JSON-friendly."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return str(obj)
    return obj


def _check_splits(splits: dict[str, tuple[np.ndarray, np.ndarray | None]]):
    """Validate and normalise the arrays: x [N, M] float32, y [N] int64 or None."""
    if "train" not in splits:
        raise ValueError("splits must contain 'train'")
    out, dims, labelled = {}, set(), set()
    for name, (x, y) in splits.items():
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise ValueError(f"bad split name {name!r}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2:
            raise ValueError(f"split {name}: x must be [N, M], got {x.shape}")
        if y is not None:
            y = np.ascontiguousarray(y, dtype=np.int64)
            if y.shape != (len(x),):
                raise ValueError(f"split {name}: y must be [{len(x)}], got {y.shape}")
        dims.add(x.shape[1])
        labelled.add(y is not None)
        out[name] = (x, y)
    if len(dims) != 1 or len(labelled) != 1:
        raise ValueError("all splits need the same M and all or none need labels")
    return out, dims.pop(), labelled.pop()


def _add_npy(tar: tarfile.TarFile, name: str, array: np.ndarray) -> None:
    """Add one .npy member with fixed metadata (mtime 0) so rebuilds are byte-identical."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    info = tarfile.TarInfo(name)
    info.size = buf.tell()
    info.mtime = 0
    info.mode = 0o444
    buf.seek(0)
    tar.addfile(info, buf)


def _write_split(
    folder: Path, split: str, x: np.ndarray, y: np.ndarray | None,
    samples_per_shard: int, block_size: int,
) -> list[dict[str, Any]]:
    """Write one split as `split-NNNNNN.tar` files; returns the manifest shard entries."""
    entries, block = [], 0
    for i, start in enumerate(range(0, len(x), samples_per_shard)):
        stop = min(start + samples_per_shard, len(x))
        path = folder / f"{split}-{i:06d}.tar"
        first_block = block
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for b0 in range(start, stop, block_size):
                b1 = min(b0 + block_size, stop)
                key = f"block_{block:06d}"
                # members of one sample are adjacent and sorted by name, as wds.TarWriter does
                if y is not None:
                    _add_npy(tar, f"{key}.labels.npy", y[b0:b1])
                _add_npy(tar, f"{key}.npy", x[b0:b1])
                block += 1
        entries.append({
            "file": path.name,
            "n_samples": stop - start,
            "n_blocks": block - first_block,
            "first_block": first_block,
            "bytes": path.stat().st_size,
            "sha256": sha256_of(path),
        })
    return entries


def write_shards(
    out_dir: str | os.PathLike,
    dataset_name: str,
    splits: dict[str, tuple[np.ndarray, np.ndarray | None]],
    meta: dict[str, Any],
    samples_per_shard: int | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    *,
    overwrite: bool = False,
    shuffle_train: bool = True,
) -> Path:
    """Write splits as WebDataset shards plus manifest.json into `out_dir`, atomically.

    Args:
        out_dir: the shard folder to create (e.g. shards/natural16).
        dataset_name: recorded in the manifest.
        splits: {"train": (x [N, M], y [N] or None), "val": (...), ...}.
        meta: source description; `normalization`, `sample_shape`, `seed`,
            `source_kwargs` and `source` are lifted into the manifest's top level.
        samples_per_shard: rows per tar file (default: `default_samples_per_shard`).
        block_size: rows per tar member.
        overwrite: replace an existing `out_dir` (the old one stays intact if writing fails).
        shuffle_train: store the train rows in a permutation seeded by meta["seed"], so
            that a streaming reader sees well-mixed data even when the source is ordered
            (e.g. patches grouped by photo). The set of rows is unchanged.

    Returns:
        the final shard folder.
    """
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists; pass overwrite=True (--overwrite) to replace it.")
    splits, dim, labelled = _check_splits(splits)
    if block_size < 1:
        raise ValueError("block_size must be >= 1")
    if samples_per_shard is None:
        samples_per_shard = default_samples_per_shard(len(splits["train"][0]), block_size)
    seed = int(meta.get("seed", 0) or 0)
    if shuffle_train:
        perm = np.random.default_rng([seed, 0x5EED]).permutation(len(splits["train"][0]))
        x, y = splits["train"]
        splits["train"] = (x[perm], None if y is None else y[perm])

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "dataset": dataset_name,
            "source": meta.get("source", dataset_name),
            "seed": seed,
            "source_kwargs": _jsonable(meta.get("source_kwargs", {})),
            "input_dim": dim,
            "sample_shape": _jsonable(meta.get("sample_shape", [dim])),
            "dtype": "float32",
            "label_dtype": "int64" if labelled else None,
            "normalization": _jsonable(meta.get("normalization", {"mean": 0.0, "std": 1.0})),
            "block_size": block_size,
            "samples_per_shard": samples_per_shard,
            "splits": {},
            "meta": _jsonable(meta),
            "fondtrain_version": fondtrain.__version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        for name, (x, y) in splits.items():
            shards = _write_split(tmp, name, x, y, samples_per_shard, block_size)
            manifest["splits"][name] = {"n_samples": len(x), "shards": shards}
        with open(tmp / MANIFEST, "w") as fh:
            json.dump(manifest, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        if out.exists():  # overwrite: move the old folder aside, then swap
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# ---------------------------------------------------------------------- reading


def shard_folder(shards_root: str | os.PathLike, dataset: str,
                 path: str | os.PathLike | None = None) -> Path:
    """Where the shards of `dataset` live: shards_root/<dataset>, and for a user array
    (npy/npz) shards_root/<dataset>-<file stem>-<hash of its absolute path>, so that two
    array files never share (or overwrite) one shard folder."""
    root = Path(shards_root)
    if dataset not in ("npy", "npz") or path is None:
        return root / dataset
    source = Path(path).expanduser().resolve()
    digest = hashlib.sha256(str(source).encode()).hexdigest()[:8]
    return root / f"{dataset}-{source.stem}-{digest}"


def build_shards(
    dataset: str,
    out: str | os.PathLike = "shards",
    path: str | os.PathLike | None = None,
    seed: int = 0,
    overwrite: bool = False,
    samples_per_shard: int | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    say: Callable[[str], None] | None = None,
    **source_kwargs: Any,
) -> Path:
    """Load data set `dataset` and write it to `out/<dataset>` (always builds); `say` gets
    one line naming what was read, the split sizes and the folder.

    Returns:
        the shard folder.
    """
    from fondtrain.data.sources import load_source

    target = shard_folder(out, dataset, path)
    if target.exists() and not overwrite:  # fail before the (possibly slow) conversion
        raise UserError(f"{target} already exists; pass --overwrite to rebuild it.")
    data = load_source(dataset, path=path, seed=seed, **source_kwargs)
    splits = {"train": (data.x_train, data.y_train), "val": (data.x_val, data.y_val)}
    folder = write_shards(
        target, dataset, splits, data.meta, samples_per_shard, block_size, overwrite=overwrite
    )
    if say is not None:
        source = f"read {path}" if path is not None else f"made {dataset}"
        say(f"{source}: {len(data.x_train):,} train / {len(data.x_val):,} validation samples -> {folder}")
    return folder


def check_patch_rule(manifest: dict[str, Any], folder: str | os.PathLike) -> None:
    """Refuse a photo data set's shards (those with a `flat_fraction` option) cut by another
    patch rule than this fondtrain's at the folder's own fraction: the rule decides which
    patches the data set holds (`fondtrain.data.whiten.FLAT_FRACTION`), so such a folder
    is another data set under the same name."""
    from fondtrain.data.whiten import flat_patch_rule

    fraction = (manifest.get("source_kwargs") or {}).get("flat_fraction")
    if fraction is None:
        return
    built = (manifest.get("meta") or {}).get("flat_patch_rule")
    if built != flat_patch_rule(fraction):
        raise UserError(
            f"{folder} was cut with an older patch rule ({built!r}, this fondtrain "
            f"applies {flat_patch_rule(fraction)!r}): rebuild it with `fondtrain shard "
            f"{manifest.get('dataset')} --overwrite` or use another shards folder."
        )


def ensure_shards(
    dataset: str,
    shards_root: str | os.PathLike = "shards",
    path: str | os.PathLike | None = None,
    seed: int = 0,
    overwrite: bool = False,
    say: Callable[[str], None] | None = None,
    **source_kwargs: Any,
) -> Path:
    """Return `shard_folder(shards_root, dataset, path)`, building it first if it does not exist
    (and then telling `say` in one line).

    A folder that exists and verifies is used as it is (no-op) unless it contradicts what
    the caller asked for explicitly: another data set, another `path`, or another value of
    an option passed in `source_kwargs` -> UserError (rebuild with `overwrite`). A
    different `seed` only warns: the shards keep the seed they were built with (recorded
    in the manifest), so `fondtrain shard --seed 1` followed by training works. A photo data
    set's folder cut by another patch rule is refused (`check_patch_rule`). Call it on
    rank 0 only and let the others wait (a barrier), since building writes files.
    """
    from fondtrain.data.sources import resolve_source_kwargs

    target = shard_folder(shards_root, dataset, path)
    wanted = _jsonable(resolve_source_kwargs(dataset, path, seed, **source_kwargs))
    if target.exists() and not overwrite:
        manifest = verify_shards_once(target)
        have = manifest.get("source_kwargs", {})
        asked = set(source_kwargs) | ({"path"} if path is not None else set())
        differ = sorted(k for k in asked if have.get(k) != wanted.get(k))
        if manifest.get("dataset") != dataset or differ:
            shown = ", ".join(f"{k}={have.get(k)!r} (asked {wanted.get(k)!r})" for k in differ)
            raise UserError(
                f"{target} was built from {manifest.get('dataset')!r} with {shown or 'other data'};"
                " pass overwrite=True (fondtrain shard --overwrite) or use another shards folder."
            )
        check_patch_rule(manifest, target)
        if "seed" in wanted and have.get("seed") != wanted["seed"]:
            warnings.warn(
                f"{target} was built with seed {have.get('seed')}, not {wanted['seed']}; "
                "using it as it is", stacklevel=2,
            )
        return target
    built = None if say is None else lambda line: say(f"built the missing shards: {line}")
    return build_shards(
        dataset, shards_root, path=path, seed=seed, overwrite=overwrite, say=built, **source_kwargs
    )
