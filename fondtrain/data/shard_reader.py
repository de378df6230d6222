"""Reading and verifying WebDataset shard folders (the layout is in `fondtrain.data.shards`).

`load_manifest`, `split_entries`, `iter_blocks` and `read_split` read a folder; `verify_shards`
checks it completely (manifest, files, sizes, sha256, block shapes, counts) and
`verify_shards_once` only when a file changed since the last full check. Reading does not
import torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fondtrain.errors import UserError

FORMAT = "fondtrain-shards/1"
MANIFEST = "manifest.json"
BLOCK_KEY = re.compile(r"^block_(\d{6,})\.(npy|labels\.npy)$")



def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_manifest(shard_dir: str | os.PathLike) -> dict[str, Any]:
    """Read `shard_dir/manifest.json`; UserError if it is missing or not a fondtrain one."""
    folder = Path(shard_dir)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise UserError(
            f"shard folder {folder} does not exist; build it with `fondtrain shard` first."
        )
    if not path.is_file():
        raise UserError(
            f"{path} is missing; rebuild the shards with `fondtrain shard --overwrite`."
        )
    try:
        with open(path) as fh:
            manifest = json.load(fh)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); rebuild the shards.") from exc
    required = ("format", "dataset", "input_dim", "splits", "block_size", "normalization")
    if not isinstance(manifest, dict) or any(k not in manifest for k in required):
        raise UserError(f"{path} is not a fondtrain shard manifest; rebuild the shards.")
    if manifest["format"] != FORMAT:
        raise UserError(
            f"{path} has format {manifest['format']!r} but this fondtrain reads {FORMAT!r}; "
            "rebuild the shards."
        )
    return manifest


def split_entries(manifest: dict[str, Any], split: str, shard_dir: Path | str) -> dict[str, Any]:
    """The manifest entry of one split; UserError naming the folder if it is absent."""
    if split not in manifest["splits"]:
        raise UserError(
            f"{Path(shard_dir) / MANIFEST} has no split {split!r}; "
            f"it has {', '.join(manifest['splits'])}."
        )
    return manifest["splits"][split]


def _load_member(data: bytes, what: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:
        raise UserError(f"{what} is not a readable .npy array; rebuild the shards.") from exc


def iter_blocks(
    path: str | os.PathLike, input_dim: int, labelled: bool
) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
    """Read one shard tar in order, checking every block.

    Yields:
        (block index, x [b, M] float32, y [b] int64 or None).

    Raises:
        UserError naming the file if it is unreadable, truncated, or a block has the
        wrong shape / dtype / members.
    """
    path = Path(path)
    pending: dict[int, dict[str, np.ndarray]] = {}

    def finish(idx: int):
        parts = pending.pop(idx)
        x = parts.get("npy")
        y = parts.get("labels.npy")
        if x is None or (labelled and y is None) or (not labelled and y is not None):
            raise UserError(f"{path} block {idx} has the wrong members; rebuild the shards.")
        if x.ndim != 2 or x.shape[1] != input_dim or x.dtype != np.float32:
            raise UserError(
                f"{path} block {idx} has shape {x.shape} {x.dtype} but the manifest says "
                f"[b, {input_dim}] float32; rebuild the shards."
            )
        if y is not None and (y.shape != (len(x),) or y.dtype != np.int64):
            raise UserError(f"{path} block {idx} has labels of the wrong shape; rebuild.")
        return idx, x, y

    try:
        with tarfile.open(path, "r|") as tar:
            for member in tar:
                m = BLOCK_KEY.match(member.name)
                if not member.isfile() or m is None:
                    raise UserError(
                        f"{path} holds an unexpected member {member.name!r}; rebuild the shards."
                    )
                idx = int(m.group(1))
                for done in [k for k in pending if k != idx]:
                    yield finish(done)
                fh = tar.extractfile(member)
                data = fh.read() if fh is not None else b""
                pending.setdefault(idx, {})[m.group(2)] = _load_member(
                    data, f"{path} member {member.name}"
                )
        for done in list(pending):
            yield finish(done)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UserError(
            f"{path} is not a readable tar file ({exc}); it is truncated or corrupt, "
            "rebuild the shards."
        ) from exc


def read_split(
    shard_dir: str | os.PathLike, split: str = "train"
) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a whole split into memory (rows in stored order).

    Returns:
        (x [N, M] float32, y [N] int64 or None).
    """
    manifest = load_manifest(shard_dir)
    info = split_entries(manifest, split, shard_dir)
    dim, labelled = manifest["input_dim"], manifest.get("label_dtype") is not None
    x = np.empty((info["n_samples"], dim), dtype=np.float32)
    y = np.empty(info["n_samples"], dtype=np.int64) if labelled else None
    pos = 0
    for entry in info["shards"]:
        path = Path(shard_dir) / entry["file"]
        start = pos
        for _, xb, yb in iter_blocks(path, dim, labelled):
            if pos + len(xb) > len(x):
                raise UserError(f"{path} holds more samples than the manifest says; rebuild.")
            x[pos : pos + len(xb)] = xb
            if y is not None:
                y[pos : pos + len(xb)] = yb
            pos += len(xb)
        if pos - start != entry["n_samples"]:
            raise UserError(
                f"{path} holds {pos - start} samples but the manifest says "
                f"{entry['n_samples']}; rebuild the shards."
            )
    if pos != len(x):
        raise UserError(f"split {split} of {shard_dir} is incomplete; rebuild the shards.")
    return x, y


VERIFIED = "verified.json"  # size and mtime of every file when the folder last verified


def _stamp(folder: Path, manifest: dict[str, Any]) -> dict[str, list[int]]:
    files = [MANIFEST] + [e["file"] for info in manifest["splits"].values() for e in info["shards"]]
    stamp = {}
    for name in files:
        try:
            st = (folder / name).stat()
        except OSError:
            return {}
        stamp[name] = [st.st_size, st.st_mtime_ns]
    return stamp


def verify_shards_once(shard_dir: str | os.PathLike) -> dict[str, Any]:
    """`verify_shards`, but only when a file changed since the last full verification.

    A full check (sha256 of every shard) is recorded as the size and mtime of every file
    in `shard_dir/verified.json`; while those match, only the manifest is read, so a
    training start does not re-hash the data set. A folder that cannot be written is
    verified in full every time.
    """
    folder = Path(shard_dir)
    manifest = load_manifest(folder)
    try:
        recorded = json.loads((folder / VERIFIED).read_text())
    except (OSError, ValueError):
        recorded = None
    stamp = _stamp(folder, manifest)
    if stamp and recorded == stamp:
        return manifest
    manifest = verify_shards(folder)
    with contextlib.suppress(OSError):  # a read-only folder is simply verified every time
        (folder / VERIFIED).write_text(json.dumps(_stamp(folder, manifest)))
    return manifest


def verify_shards(shard_dir: str | os.PathLike) -> dict[str, Any]:
    """Check a shard folder completely: manifest, files, sizes, sha256, block shapes, counts.

    Returns:
        the manifest (dict) if everything is fine.

    Raises:
        UserError with one sentence naming the first bad file.
    """
    folder = Path(shard_dir)
    manifest = load_manifest(folder)
    dim, labelled = manifest["input_dim"], manifest.get("label_dtype") is not None
    for split, info in manifest["splits"].items():
        total = 0
        for entry in info["shards"]:
            path = folder / entry["file"]
            if not path.is_file():
                raise UserError(f"shard {path} is missing; rebuild the shards with --overwrite.")
            size = path.stat().st_size
            if size != entry["bytes"]:
                raise UserError(
                    f"shard {path} has {size} bytes but the manifest says {entry['bytes']} "
                    "(truncated or replaced); rebuild the shards with --overwrite."
                )
            if sha256_of(path) != entry["sha256"]:
                raise UserError(
                    f"shard {path} fails its sha256 check (corrupt); rebuild the shards "
                    "with --overwrite."
                )
            n = n_blocks = 0
            for _, xb, _ in iter_blocks(path, dim, labelled):
                n += len(xb)
                n_blocks += 1
            if n != entry["n_samples"] or n_blocks != entry.get("n_blocks", n_blocks):
                raise UserError(
                    f"shard {path} holds {n} samples in {n_blocks} blocks but the manifest "
                    f"says {entry['n_samples']} in {entry.get('n_blocks')}; rebuild the shards."
                )
            total += n
        if total != info["n_samples"]:
            raise UserError(
                f"split {split} of {folder / MANIFEST} lists {info['n_samples']} samples but "
                f"its shards hold {total}; rebuild the shards."
            )
    return manifest


# --------------------------------------------------------------------- building
