"""Jobs on the SLURM test cluster, as the cluster tests submit and watch them (through ``pipeline.submit``)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import cli_env, run_cli
from slurm_cluster import SlurmCluster

CONFIG = "configs/debug/sentiment.yaml"
DDP = (
    "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu",
    "--trainer.enable_progress_bar", "false",
)  # fmt: skip
WANDB = Path(sys.executable).parent / "wandb"


class Job:
    def __init__(self, slurm: SlurmCluster, out: str) -> None:
        fields = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
        self.slurm, self.id = slurm, fields["job"]
        self.log, self.run_dir = Path(fields["log"]), Path(fields["run directory"])

    def info(self) -> dict[str, str]:
        return self.slurm.job(self.id)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait(self, states: set[str], timeout: float) -> dict[str, str]:
        try:
            return self.slurm.wait_state(self.id, states, timeout)
        except TimeoutError as exc:
            pytest.fail(f"{exc}\n--- log tail\n{self.text()[-5000:]}")

    def wait_for(self, predicate, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if self.info().get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
                break
            time.sleep(0.2)
        pytest.fail(
            f"job {self.id}: no {what} ({self.info().get('JobState')})\n--- log\n{self.text()[-5000:]}"
        )

    def checkpoint_steps(self) -> list[int]:
        return sorted(int(p.stem[4:]) for p in (self.run_dir / "checkpoints").glob("step*.ckpt"))

    def signal(self, name: str = "USR1") -> None:
        self.slurm.run("scancel", f"--signal={name}", self.id)


def submit(slurm: SlurmCluster, tmp_path: Path, experiment: str, *args: str) -> Job:
    proc = run_cli(
        "pipeline.submit", "--config", CONFIG, "--runs_dir", str(tmp_path / "runs"), "--experiment", experiment,
        *args, tmp_path=tmp_path, env=cli_env(tmp_path, **slurm.env),
    )  # fmt: skip
    return Job(slurm, proc.stdout)


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


def assert_same_weights(a: Path, b: Path, note: object = "") -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"{a} and {b} differ in {different} {note}"


def offline_runs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def logged_steps(offline_run: Path) -> list[int]:
    """``trainer/global_step`` of every history row of an offline W&B run, read with wandb's own inspector."""
    out = subprocess.run(
        [str(WANDB), "leet", "inspect", "--json", str(offline_run)],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    rows = [json.loads(line) for line in out.splitlines() if '"type":"history"' in line]
    return [
        int(r["history"]["item"]["trainer/global_step"])
        for r in rows
        if "trainer/global_step" in r["history"]["item"]
    ]


def assert_sync_line_last(job: Job) -> None:
    last = job.text().rstrip().splitlines()[-1]
    assert last.startswith("[job] W&B ran offline; to upload this run: wandb sync "), last
    assert last.split("wandb sync ", 1)[1].split() == [str(p) for p in offline_runs(job.run_dir)]
