"""Where a run writes: ``<runs_dir>/<experiment>/<run id>/`` with config, tokenizer, checkpoints and W&B files.

Every process of one run must agree on the directory:
- DDP launched by Lightning re-executes the script for ranks > 0 with rank 0's environment, so rank 0 exports
  ``PIPELINE_RUN_DIR`` and the others read it;
- under SLURM every rank starts on its own, so the run id is derived from the job id (``slurm-<job>[_<task>]``),
  which also survives a requeue: the requeued job finds its own directory and resumes from its newest checkpoint.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

ENV = "PIPELINE_RUN_DIR"


def new_run_id() -> str:
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    if job:
        task = os.environ.get("SLURM_ARRAY_TASK_ID")
        return f"slurm-{job}" + (f"_{task}" if task else "")
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:4]


def checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoints, newest last (by modification time)."""
    folder = Path(run_dir) / "checkpoints"
    files = [p for p in folder.glob("*.ckpt") if p.is_file()] if folder.is_dir() else []
    return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name == "last.ckpt"))


def latest_checkpoint(experiment_dir: Path) -> Path | None:
    """The newest checkpoint of the latest run (by modification time) that has one."""
    runs = [d for d in Path(experiment_dir).glob("*") if d.is_dir() and checkpoints(d)]
    if not runs:
        return None
    newest = max(runs, key=lambda d: checkpoints(d)[-1].stat().st_mtime_ns)
    ckpts = checkpoints(newest)
    last = newest / "checkpoints" / "last.ckpt"
    return last if last in ckpts else ckpts[-1]


def resolve(runs_dir: str, experiment: str, ckpt_path: str | None) -> tuple[Path, Path | None]:
    """Pick the run directory and the checkpoint to resume from.

    ``ckpt_path='last'``: the newest checkpoint of the latest run of the experiment (that run's directory is reused);
    a file: that checkpoint, in its own run directory when it lives in one; None: a fresh run.
    """
    exp_dir = Path(runs_dir) / experiment
    if os.environ.get(ENV):  # a DDP child: rank 0 already decided
        run_dir = Path(os.environ[ENV])
        if ckpt_path == "last":
            found = checkpoints(run_dir)
            return run_dir, (run_dir / "checkpoints" / "last.ckpt" if found else None)
        return run_dir, Path(ckpt_path) if ckpt_path else None
    if ckpt_path == "last":
        own = exp_dir / new_run_id()
        if os.environ.get("SLURM_JOB_ID") and checkpoints(own):  # a requeued SLURM job resumes itself
            ckpt = own / "checkpoints" / "last.ckpt"
            return own, ckpt if ckpt.exists() else checkpoints(own)[-1]
        ckpt = latest_checkpoint(exp_dir)
        if ckpt is None:
            return own, None  # nothing to resume: start fresh (said in the log)
        return ckpt.parent.parent, ckpt
    if ckpt_path:
        ckpt = Path(ckpt_path).resolve()
        if not ckpt.is_file():
            raise FileNotFoundError(f"--ckpt_path {ckpt_path}: no such checkpoint file.")
        parent = ckpt.parent.parent
        return (parent if (parent / "config.yaml").exists() else exp_dir / new_run_id()), ckpt
    return exp_dir / new_run_id(), None
