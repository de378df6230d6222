"""Files as the user's umask says: some writers (safetensors, tempfile) create 0600 / 0700
files and folders whatever the umask, which group members on a shared file system cannot
read. `apply_umask` gives a written tree the modes a plain open()/mkdir() would have."""

from __future__ import annotations

import os
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


def publish_folder(staging: Path, out_dir: Path) -> None:
    """Move a completely written staging folder to out_dir with the umask's modes: the
    folder appears whole or not at all (out_dir, if it exists, must be empty: the callers
    have refused a non-empty one)."""
    apply_umask(staging)
    if out_dir.exists():
        out_dir.rmdir()
    staging.rename(out_dir)
