"""`fondtrain bench`: training and inference speed of the vH16 configuration, against the
matrix-product limit of this machine and (with `--reference_dir`) the reference
implementation, every figure of a table from one run with the candidates interleaved.

- settings.py: `BenchSettings`, what one run measures; which precisions a device runs
  quickly (bf16); natural16's training patches;
- harness.py: timing (interleaved rounds, medians), device sync, threads, worker
  processes, peak memory;
- candidates.py: the timed callables (matmul limit, fondtrain's and the reference's
  cycle and evaluation, float32 or bf16 autocast) and the paired models they run on; the
  bf16 precision check;
- cases.py: speed (cycle, compiled cycle, bf16 cycle, evaluation), precision checks,
  scaling, memory, processes, population (issue 15);
- projection.py: the projected wall time of the paper's run (300 epochs of natural16) on
  this machine, per preset and precision;
- jobs.py: the worker processes of the memory and process cases;
- reference.py: the one loader of a reference checkout (also benchmarks/reference_parity.py);
- report.py: progress lines, Markdown tables, JSON;
- suite.py: `run`, every case of one call.
"""

from fondtrain.bench.settings import ASSUMED_N_TRAIN, NATURAL16_N_TRAIN, BenchSettings
from fondtrain.bench.suite import run

__all__ = ["ASSUMED_N_TRAIN", "NATURAL16_N_TRAIN", "BenchSettings", "run"]
