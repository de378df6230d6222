"""Writing a whole file or none of it (base layer: config, eval and runs use it).

A reader never sees a half-written table: the text goes to a hidden partial file beside
the target, which then replaces the target in one rename (atomic on POSIX file systems).
A failed write leaves the old file, if any, and no partial file.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` to `path` whole or not at all; returns `path`."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    try:
        partial.write_text(text)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path
