"""Compile a C source of this folder at first use and load it with ctypes.

The shared library is built with the system's C compiler (`$CC`, else cc, gcc or clang)
for this machine's CPU (-march=native: the kernels are vectorised for its widest
registers) into a cache folder, one file per source, compiler and CPU (the name is a hash
of them), so a later process loads it at once. The cache is $FONDTRAIN_KERNEL_CACHE, else
$XDG_CACHE_HOME/fondtrain/kernels (~/.cache/fondtrain/kernels). A build writes a
temporary file and renames it into place, so processes that build at the same time never
load a half-written library. FONDTRAIN_KERNELS=0 turns the kernels off.

`load` returns None (and the caller runs its torch code) where no compiler is found or
the build fails, after one line of warning per process.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parent
# Tried in order: the fast build, then one any C compiler accepts.
FLAG_SETS = (
    ["-O3", "-march=native", "-fopenmp-simd", "-fPIC", "-shared"],
    ["-O3", "-fopenmp-simd", "-fPIC", "-shared"],
    ["-O2", "-fPIC", "-shared"],
)
BUILD_TIMEOUT_S = 60

_loaded: dict[str, ctypes.CDLL | None] = {}  # per source name, for this process


def load(name: str) -> ctypes.CDLL | None:
    """The library built from `name` (a .c file of this folder), or None: kernels turned
    off, no compiler, or no build succeeded (warned once)."""
    if name not in _loaded:
        _loaded[name] = None if os.environ.get("FONDTRAIN_KERNELS", "1") == "0" else _build_and_load(name)
    return _loaded[name]


def _build_and_load(name: str) -> ctypes.CDLL | None:
    source = SOURCE_DIR / name
    compiler = _compiler()
    if compiler is None:
        return _give_up(name, "no C compiler found (set CC)")
    path = cache_dir() / f"{source.stem}-{_fingerprint(source, compiler)}.so"
    if not path.exists():
        error = _build(source, compiler, path)
        if error:
            return _give_up(name, error)
    try:
        return ctypes.CDLL(str(path))
    except OSError as exc:
        return _give_up(name, f"cannot load {path}: {exc}")


def cache_dir() -> Path:
    if os.environ.get("FONDTRAIN_KERNEL_CACHE"):
        return Path(os.environ["FONDTRAIN_KERNEL_CACHE"])
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "fondtrain" / "kernels"


def _compiler() -> list[str] | None:
    """The compiler command, its program's path resolved: $CC if set (e.g. "ccache gcc";
    nothing else then), else the first of cc, gcc, clang found."""
    commands = [shlex.split(os.environ["CC"])] if os.environ.get("CC") else [["cc"], ["gcc"], ["clang"]]
    for command in commands:
        found = shutil.which(command[0]) if command else None
        if found:
            return [os.path.realpath(found), *command[1:]]
    return None


def _fingerprint(source: Path, compiler: list[str]) -> str:
    """What the library depends on: the source, the compiler (command, size and time of
    its program: a changed compiler builds anew) and this CPU (-march=native)."""
    stat = os.stat(compiler[0])
    parts = [source.read_bytes(), f"{compiler} {stat.st_size} {stat.st_mtime_ns}".encode(),
             repr(FLAG_SETS).encode(), _cpu_identity().encode()]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]


def _cpu_identity() -> str:
    """The CPU's model and instruction-set flags (Linux), else the platform's words."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    wanted = ("model name", "flags", "Features", "CPU part")  # x86; ARM
    lines = {line.split(":")[0].strip(): line for line in info.splitlines() if ":" in line}
    return platform.machine() + "\n" + "\n".join(lines.get(key, "") for key in wanted)


def _build(source: Path, compiler: list[str], path: Path) -> str | None:
    """Compile source into path (renamed into place when done); the error, or None."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".so")
        os.close(fd)
    except OSError as exc:
        return f"cannot write to the kernel cache {path.parent} ({exc}; set FONDTRAIN_KERNEL_CACHE)"
    error = "no flags tried"
    try:
        for flags in FLAG_SETS:
            try:
                done = subprocess.run([*compiler, *flags, "-o", tmp, str(source)], capture_output=True,
                                      text=True, timeout=BUILD_TIMEOUT_S)
            except (OSError, subprocess.TimeoutExpired) as exc:
                return f"{compiler[0]} failed to run ({exc})"
            if done.returncode == 0:
                os.replace(tmp, path)
                return None
            error = f"{compiler[0]} failed: {(done.stderr.strip().splitlines() or [''])[0][:200]}"
        return error
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _give_up(name: str, why: str) -> None:
    warnings.warn(f"fondtrain: the C kernel {name} is not available ({why}); using the slower torch code",
                  RuntimeWarning, stacklevel=4)
    return None
