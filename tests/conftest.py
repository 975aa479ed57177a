"""Shared test helpers: run the real CLI in a subprocess, in a scratch runs folder, W&B offline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        PIPELINE_CACHE=str(tmp_path / "cache"),
        PYTHONPATH=str(ROOT),
        PYTHONWARNINGS="ignore",
        OMP_NUM_THREADS="1",  # tiny models: threads only spin against each other on a 2-core machine
    )
    env.pop("PIPELINE_RUN_DIR", None)
    env.pop("PIPELINE_CKPT", None)
    env.update(extra)
    return env


def run_cli(
    module: str,
    *args: str,
    tmp_path: Path,
    check: bool = True,
    timeout: int = 600,
    env: dict | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess:
    """``python -m <module> <args>`` from the repository root; fails the test with the output on error."""
    cmd = [sys.executable, "-m", module, *args]
    # a session of its own: a simulated crash (PIPELINE_KILL_AT) kills the run's process group, never pytest
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        env=env or cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=timeout,
        input=stdin,
        start_new_session=True,
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}"
        )
    return proc


def run_dir_of(proc: subprocess.CompletedProcess) -> Path:
    """The run directory a fit printed (``[pipeline] run directory: X``, the last one)."""
    lines = [ln for ln in proc.stderr.splitlines() if "run directory:" in ln]
    assert lines, proc.stderr[-3000:]
    path = Path(lines[-1].split("run directory:", 1)[1].strip())
    return path if path.is_absolute() else ROOT / path


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    """A scratch ``--runs_dir``."""
    return tmp_path / "runs"


def toy_sentiment_batches(n: int = 6, size: int = 8, length: int = 5, vocab: int = 30) -> list[dict]:
    """``n`` seeded batches shaped as the sentiment data module yields them, for a task fit without a corpus."""
    import torch  # here: most tests that import this module never build a tensor

    g = torch.Generator().manual_seed(0)
    return [
        {
            "tokens": torch.randint(1, vocab, (size, length), generator=g),
            "lengths": torch.full((size,), length),
            "labels": torch.randint(0, 2, (size,), generator=g),
            "weight": 1.0,
        }
        for _ in range(n)
    ]
