"""Training and inference speed against the matrix-product limit and the reference.

The same as `fondtrain bench` (see `fondtrain bench --help`), for those who run the
scripts in benchmarks/ directly, e.g.:

    .venv/bin/python benchmarks/bench_speed.py --reference_dir ~/src/IterativeVAE --threads 1
    .venv/bin/python benchmarks/bench_speed.py --quick --out /tmp/speed.md
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fondtrain.cli import main  # noqa: E402

if __name__ == "__main__":
    main(["bench", *sys.argv[1:]])
