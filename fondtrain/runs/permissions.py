"""Files as the user's umask says: some writers (safetensors, tempfile) create 0600 / 0700
files and folders whatever the umask, which group members on a shared file system cannot
read. `apply_umask` gives a written tree the modes a plain open()/mkdir() would have."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


def current_umask() -> int:
    """The process umask (read from /proc where possible: setting it to read it races)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(root: str | os.PathLike) -> None:
    """chmod root and everything below it to 0666 (files) / 0777 (folders) minus the umask."""
    mask = current_umask()
    root = Path(root)
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


@contextlib.contextmanager
def staged_folder(out_dir: Path, kind: str) -> Iterator[Path]:
    """A hidden folder beside out_dir to write into: when the block ends normally it
    becomes out_dir, with the umask's modes; on any error it is removed. So out_dir appears
    whole or not at all (if it exists, it must be empty: the callers refuse a non-empty one)."""
    staging = out_dir.parent / f".tmp-{kind}-{out_dir.name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
        apply_umask(staging)
        if out_dir.exists():
            out_dir.rmdir()
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
