"""Rendezvous settings for multi-node training, derived from SLURM's environment.

Run once per node (one `srun` task per node); every node computes the same master address
and port and its own machine rank:

* nodes: SLURM_JOB_NODELIST (or SLURM_NODELIST), expanded here (`node[01-03,07],gpu5` ->
  node01 node02 node03 node07 gpu5; `scontrol show hostnames` is not needed); the master
  address is the first host;
* num_machines: SLURM_NNODES (else the number of hosts); machine rank: SLURM_NODEID (else
  SLURM_PROCID, which equals it with one task per node);
* processes per node: --procs_per_node, else SLURM_GPUS_ON_NODE, SLURM_GPUS_PER_NODE
  (`4` or `a100:4`), CUDA_VISIBLE_DEVICES, the visible GPU count, else 1;
* master port: 20000 + SLURM_JOB_ID mod 20000, the same on every node and different for
  jobs that share a node (override with MASTER_PORT).

    python -m fondtrain.train.slurm_env show                 # the settings, as JSON
    python -m fondtrain.train.slurm_env accelerate           # `accelerate launch` arguments
    python -m fondtrain.train.slurm_env torchrun             # torchrun arguments
    python -m fondtrain.train.slurm_env accelerate --exec -- launch/train.py --model ipvae ...
    python -m fondtrain.train.slurm_env torchrun --exec -- launch/train.py --backend deepspeed ...

With `--exec` the module replaces itself with the launcher (accelerate launch / torchrun)
and the given script and flags, which avoids word-splitting the arguments in a shell.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from fondtrain.errors import UserError


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise UserError(f"unbalanced brackets in SLURM node list {text!r}.")
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise UserError(f"unbalanced brackets in SLURM node list {text!r}.")
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _expand_range(spec: str, nodelist: str) -> list[str]:
    """`01-03,07` -> ['01', '02', '03', '07'] (zero padding kept)."""
    out = []
    for item in spec.split(","):
        item = item.strip()
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
        if not match:
            raise UserError(f"cannot read the range {item!r} in SLURM node list {nodelist!r}.")
        low, high = match.group(1), match.group(2) or match.group(1)
        if int(high) < int(low):
            raise UserError(f"the range {item!r} in SLURM node list {nodelist!r} runs backwards.")
        width = len(low)
        out.extend(str(n).zfill(width) for n in range(int(low), int(high) + 1))
    return out


def expand_hostlist(nodelist: str) -> list[str]:
    """Expand a SLURM host list: `node[01-03,07],gpu5` -> [node01, node02, node03, node07,
    gpu5]; several bracket groups in one name multiply (`r[1-2]n[1-2]` -> r1n1 r1n2 r2n1 r2n2)."""
    hosts: list[str] = []
    for part in _split_top_level(nodelist):
        names = [""]
        for literal, spec in re.findall(r"([^\[]*)(?:\[([^\]]*)\])?", part):
            if not literal and not spec:
                continue
            values = _expand_range(spec, nodelist) if spec else [""]
            names = [name + literal + value for name in names for value in values]
        hosts.extend(names)
    if not hosts:
        raise UserError(f"the SLURM node list {nodelist!r} names no host.")
    return hosts


def hostnames(nodelist: str, use_scontrol: bool = False) -> list[str]:
    """The hosts of a node list: `scontrol show hostnames` when asked and available, else
    our own expansion."""
    scontrol = shutil.which("scontrol") if use_scontrol else None
    if scontrol:
        result = subprocess.run([scontrol, "show", "hostnames", nodelist], capture_output=True, text=True)
        if result.returncode == 0 and result.stdout.split():
            return result.stdout.split()
    return expand_hostlist(nodelist)


def _gpus_from_env(env: Mapping[str, str]) -> int | None:
    for key in ("SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE"):
        value = env.get(key, "").strip()
        if value:
            # forms: "4", "a100:4", "gpu:a100:4", "4(x2)"
            match = re.search(r"(\d+)(?:\(x\d+\))?$", value.split(",")[0])
            if match:
                return int(match.group(1))
    visible = env.get("CUDA_VISIBLE_DEVICES", "").strip()
    if visible and visible != "NoDevFiles":
        return len([d for d in visible.split(",") if d.strip()])
    return None


@dataclass(frozen=True)
class Rendezvous:
    """Where the processes of a multi-node job meet, and who this node is."""

    hosts: tuple[str, ...]
    master_addr: str
    master_port: int
    num_machines: int
    machine_rank: int
    procs_per_node: int
    job_id: str

    @property
    def num_processes(self) -> int:
        """All processes of the job: num_machines x procs_per_node."""
        return self.num_machines * self.procs_per_node

    def accelerate_args(self) -> list[str]:
        """Arguments for `accelerate launch` on this node (before the script)."""
        args = ["--num_machines", str(self.num_machines), "--machine_rank", str(self.machine_rank),
                "--num_processes", str(self.num_processes),
                "--main_process_ip", self.master_addr, "--main_process_port", str(self.master_port),
                "--rdzv_backend", "static", "--same_network",
                # fondtrain's own --mixed_precision decides; this only silences the launcher
                "--mixed_precision", "no", "--dynamo_backend", "no"]
        if self.num_processes > 1:
            args.insert(0, "--multi_gpu")
        return args

    def torchrun_args(self) -> list[str]:
        """Arguments for `torchrun` on this node (before the script)."""
        return ["--nnodes", str(self.num_machines), "--node_rank", str(self.machine_rank),
                "--nproc_per_node", str(self.procs_per_node),
                "--master_addr", self.master_addr, "--master_port", str(self.master_port)]


def _int(env: Mapping[str, str], key: str) -> int | None:
    value = env.get(key, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError as err:
        raise UserError(f"{key}={value!r} is not a whole number.") from err


def from_environment(env: Mapping[str, str] | None = None, procs_per_node: int | None = None,
                     use_scontrol: bool = False) -> Rendezvous:
    """Rendezvous of this node from SLURM's variables (see the module docstring)."""
    env = os.environ if env is None else env
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        raise UserError("SLURM_JOB_NODELIST is not set: run this inside a SLURM job (srun / sbatch).")
    hosts = hostnames(nodelist, use_scontrol)
    num_machines = _int(env, "SLURM_NNODES") or _int(env, "SLURM_JOB_NUM_NODES") or len(hosts)
    if num_machines > len(hosts):
        raise UserError(f"SLURM_NNODES={num_machines} but the node list {nodelist!r} has only {len(hosts)} host(s).")
    machine_rank = _int(env, "SLURM_NODEID")
    if machine_rank is None:
        machine_rank = _int(env, "SLURM_PROCID") or 0
    if not 0 <= machine_rank < num_machines:
        raise UserError(f"node rank {machine_rank} is outside 0..{num_machines - 1}: launch one task per "
                        "node (srun --ntasks-per-node=1).")
    if procs_per_node is None:
        procs_per_node = _gpus_from_env(env)
    if procs_per_node is None:
        try:
            import torch

            procs_per_node = torch.cuda.device_count() or 1
        except ImportError:
            procs_per_node = 1
    if procs_per_node < 1:
        raise UserError(f"processes per node must be at least 1, got {procs_per_node}.")
    job_id = env.get("SLURM_JOB_ID", "0")
    port = _int(env, "MASTER_PORT")
    if port is None:
        port = 20000 + (int(job_id) if job_id.isdigit() else 0) % 20000
    return Rendezvous(tuple(hosts), hosts[0], port, num_machines, machine_rank, procs_per_node, job_id)


LAUNCHERS = ("show", "accelerate", "torchrun")


def launch(launcher: str, procs_per_node: int | None, scontrol: bool, exec: bool, script: list[str]) -> None:
    """Print this node's settings (show) or launcher arguments, or with `exec` become the
    launcher running `script` (what follows `--`)."""
    # fire reads values as Python literals: check that each is of its type
    if launcher not in LAUNCHERS:
        raise UserError(f"the launcher is one of {', '.join(LAUNCHERS)}, not {launcher!r}.")
    if procs_per_node is not None and type(procs_per_node) is not int:
        raise UserError(f"--procs_per_node takes a whole number, not {procs_per_node!r}.")
    for name, switch in (("scontrol", scontrol), ("exec", exec)):
        if not isinstance(switch, bool):
            raise UserError(f"--{name} is a switch and takes no value, got {switch!r}.")
    rdzv = from_environment(procs_per_node=procs_per_node, use_scontrol=scontrol)
    if launcher == "show":
        print(json.dumps(asdict(rdzv) | {"num_processes": rdzv.num_processes}, indent=1))
        return
    launcher_args = rdzv.accelerate_args() if launcher == "accelerate" else rdzv.torchrun_args()
    if not exec:
        print(shlex.join(launcher_args + script))
        return
    if not script:
        raise UserError("--exec needs the script and its flags after --.")
    # `python -m` with this interpreter: the launcher of this environment, whatever PATH says
    module = "accelerate.commands.launch" if launcher == "accelerate" else "torch.distributed.run"
    full = [sys.executable, "-m", module, *launcher_args, *script]
    print(f"fondtrain.slurm_env: node {rdzv.machine_rank}/{rdzv.num_machines}: {shlex.join(full)}",
          file=sys.stderr, flush=True)
    os.execvp(full[0], full)


def main(argv: list[str] | None = None) -> int:
    """`python -m fondtrain.train.slurm_env LAUNCHER [--procs_per_node N] [--scontrol] [--exec
    -- SCRIPT FLAGS...]` through fire; 0, or 2 after one `error: ...` line."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # everything after the first `--` is the training script and its flags (fire must not see it)
    head, script = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    if any(a in ("-h", "--help") for a in head):  # the module's own text, not fire's pager
        print(__doc__)
        return 0
    import fire

    def command(launcher: str, *extra: Any, procs_per_node: int | None = None, scontrol: bool = False,
                exec: bool = False, **unknown: Any) -> None:
        if extra or unknown:  # refused here: fire itself would complain only after running the command
            word = repr(extra[0]) if extra else f"--{next(iter(unknown))}"
            raise UserError(f"unknown argument {word}: give LAUNCHER [--procs_per_node N] [--scontrol] "
                            "[--exec -- SCRIPT FLAGS...].")
        launch(launcher, procs_per_node, scontrol, exec, script)

    try:
        fire.Fire(command, command=head, name="python -m fondtrain.train.slurm_env")
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0

if __name__ == "__main__":
    sys.exit(main())
