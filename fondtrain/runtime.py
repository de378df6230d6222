"""Process-wide settings that training, evaluation and benchmarks all need before they
start a back end (below train/ and eval/)."""

from __future__ import annotations

import os

import torch


def quiet_deepspeed_on_cpu() -> None:
    """Without CUDA, tell DeepSpeed (which Accelerate consults when it is installed) that
    the accelerator is the CPU, instead of letting it warn on every run that it found no
    GPU. A DS_ACCELERATOR the user set is kept."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
