"""pipeline.submit without a cluster: the rendered batch script, and requests it refuses (no sbatch needed)."""

from __future__ import annotations

import re
import subprocess

import pytest
from conftest import ROOT, run_cli

CONFIG = "configs/debug/sentiment.yaml"
CPU_DDP = ("--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu")


def dry_run(tmp_path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run_cli(
        "pipeline.submit", "--config", CONFIG, "--dry-run", "--runs_dir", str(tmp_path / "runs"), *args,
        tmp_path=tmp_path, check=check,
    )  # fmt: skip


def sbatch_options(script: str) -> dict[str, str]:
    return dict(
        (m.group(1), m.group(2) or "")
        for m in re.finditer(r"^#SBATCH --([\w-]+)(?:=(\S+))?$", script, flags=re.M)
    )


def test_dry_run_matches_the_request_to_the_trainer(tmp_path):
    script = dry_run(
        tmp_path, *CPU_DDP, "--trainer.max_steps", "30", "--time", "01:30:00", "--partition", "gpu"
    ).stdout
    opts = sbatch_options(script)
    assert opts["nodes"] == "1" and opts["ntasks-per-node"] == "2"  # one task per DDP process
    assert "gpus-per-node" not in opts  # a CPU run asks for no GPU
    assert opts["time"] == "01:30:00" and opts["partition"] == "gpu"
    assert opts["signal"] == "SIGUSR1@90" and "requeue" in opts and opts["open-mode"] == "append"
    assert opts["output"] == f"{tmp_path}/runs/sentiment/slurm-%j.log"
    assert f"export CONFIG={ROOT / CONFIG}" in script
    assert "set -- --runs_dir" in script and "--trainer.max_steps 30" in script
    assert "srun --kill-on-bad-exit=1" in script
    # the script is valid bash
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_gpus_and_nodes_become_trainer_settings(tmp_path):
    script = dry_run(
        tmp_path,
        "--trainer.accelerator",
        "gpu",
        "--trainer.devices",
        "auto",
        "--nodes",
        "2",
        "--gpus-per-node",
        "4",
    ).stdout
    opts = sbatch_options(script)
    assert opts["nodes"] == "2" and opts["ntasks-per-node"] == "4" and opts["gpus-per-node"] == "4"
    set_line = next(line for line in script.splitlines() if line.startswith("set -- "))
    assert "--trainer.devices 4" in set_line and "--trainer.num_nodes 2" in set_line


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (
            ("--trainer.accelerator", "gpu", "--trainer.devices", "2", "--gpus-per-node", "4"),
            "trainer.devices is 2",
        ),
        (("--trainer.num_nodes", "1", "--nodes", "2"), "trainer.num_nodes 1"),
        (("--gpus-per-node", "2", "--trainer.accelerator", "cpu"), "trainer.accelerator is cpu"),
        (
            ("--trainer.devices", "auto", "--trainer.accelerator", "cpu"),
            "number of tasks per node is unknown",
        ),
        (("--time", "00:01:00"), "90 s preemption warning"),
    ],
)
def test_inconsistent_requests_are_refused_in_one_sentence(tmp_path, args, says):
    proc = dry_run(tmp_path, *args, check=False)
    assert proc.returncode == 2 and not proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_sweep_renders_an_array_over_the_lines_of_a_file(tmp_path):
    sweep = tmp_path / "sweep.txt"
    sweep.write_text(
        "--model.init_args.network.init_args.cell gru\n--model.init_args.network.init_args.cell rnn\n"
    )
    script = dry_run(tmp_path, "--sweep", str(sweep)).stdout
    opts = sbatch_options(script)
    assert opts["array"] == "0-1" and opts["output"].endswith("slurm-%A_%a.log")
    assert f"export SWEEP={sweep}" in script


def test_socket_interface_reaches_gloo_and_nccl(tmp_path, monkeypatch):
    for key in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
        monkeypatch.delenv(key, raising=False)
    opts = dry_run(tmp_path, *CPU_DDP, "--nodes", "2", "--socket-ifname", "ib0").stdout
    assert "export GLOO_SOCKET_IFNAME=ib0" in opts and "export NCCL_SOCKET_IFNAME=ib0" in opts
    assert sbatch_options(opts)["nodes"] == "2"
    plain = dry_run(
        tmp_path, *CPU_DDP
    ).stdout  # not asked for, not set in this environment: the backends choose
    assert "export GLOO_SOCKET_IFNAME" not in plain and "export NCCL_SOCKET_IFNAME" not in plain
