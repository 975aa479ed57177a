"""Preemption and time limits: SIGUSR1 becomes an exact-resume checkpoint at the next step boundary, then a requeue.

SLURM sends SIGUSR1 to every rank 90 s before the time limit (``#SBATCH --signal=SIGUSR1@90``), and a test or an
operator sends it with ``scancel --signal=USR1 <job>``. What happens then::

    USR1 ──► every rank: the handler sets a flag, nothing else (no I/O, no collective, no checkpoint)
    end of every training step, all ranks:  any = all_reduce(MAX, flag) on a CPU gloo group
        any == 0 ─► keep training
        any == 1 at an epoch's last batch ─► one more step (such a checkpoint would not resume exactly)
        any == 1 ─► trainer.save_checkpoint(<run>/checkpoints/last.ckpt)     rank 0 writes (atomically), all wait
                    rank 0: finish the W&B run, then ``scontrol requeue <job>``; barrier; every rank exits (status 0)
    requeued job ─► same run dir ``slurm-<job>`` ─► ``--ckpt_path last`` ─► same data position, same W&B run id

The ranks see the signal at slightly different times (one may be a step ahead of the other when it arrives); the
all-reduce makes them act at the same step, so they save the same state and nobody waits in a collective that the
others never enter. Lightning's own SLURM handler saves inside the signal handler; that save contains a barrier which
can pair with a gradient all-reduce of a rank that is still training, and both ranks hang (Lightning issue #21406).
So the CLI turns it off (``SLURMEnvironment(auto_requeue=False)``, see :func:`slurm_plugins`) and adds this callback.

A plain ``scancel`` (SIGTERM without a SIGUSR1 before it) is left to Lightning: the job stops and is not requeued.
Outside SLURM the same signal saves and stops (exit status 3); resume with ``--ckpt_path last``.
The handler is installed when the callback is built, before the data and the process group are set up; a SIGUSR1
that arrives earlier, while Python is still importing, ends the process (the default action of the signal).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from lightning_fabric.plugins.environments import SLURMEnvironment
from pytorch_lightning.loggers import WandbLogger

#: Exit status of a process that saved and stopped without being requeued (outside SLURM, or requeue refused).
EXIT_PREEMPTED = 3


def slurm_plugins() -> list:
    """Under SLURM: Lightning's cluster environment with its signal-handler requeue turned off (see above)."""
    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


def slurm_job_id() -> str | None:
    """The id ``scontrol requeue`` takes: the job itself (an array task has a job id of its own too)."""
    return os.environ.get("SLURM_JOB_ID")


class Preempted(SystemExit):
    """Raised on every rank after the checkpoint is written, when there was no requeue; ends the process."""


class Preemption(pl.Callback):
    """Save an exact-resume checkpoint and requeue the SLURM job when a signal asks for it.

    Args:
        signum: The signal that announces preemption or the time limit.
        requeue: Run ``scontrol requeue`` under SLURM (else only save and stop).
    """

    def __init__(self, signum: int = signal.SIGUSR1, requeue: bool = True) -> None:
        self.signum, self.requeue = signum, requeue
        self.requested = False
        self._group = None
        if threading.current_thread() is threading.main_thread():
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.requested = True  # only this: the training loop acts on it at the next step boundary

    # --- hooks -------------------------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if (
            dist.is_available()
            and dist.is_initialized()
            and dist.get_world_size() > 1
            and self._group is None
        ):
            # a CPU side channel: a 1-element all-reduce per step that never waits on the GPU stream
            self._group = dist.new_group(backend="gloo")
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        if restarts and trainer.is_global_zero:
            _say(f"SLURM job {slurm_job_id()} restart {restarts}")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not self._agreed():
            return
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            # Not at an epoch's last batch: Lightning restores such a checkpoint into an epoch that it then ends
            # at once, and training would go on with the data of the epoch after next. One step later is exact.
            self.requested = True  # on every rank, so that they agree again at the next step
            return
        self._preempt(trainer)

    # --- the work ----------------------------------------------------------------------------------------------
    def _agreed(self) -> bool:
        """True on every rank when any rank got the signal; the same answer on all ranks at the same step."""
        if self._group is None:
            return self.requested
        flag = torch.tensor([int(self.requested)], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
        return bool(flag.item())

    def _preempt(self, trainer: pl.Trainer) -> None:
        self.requested = False
        ckpt_cb = trainer.checkpoint_callback
        folder = Path(ckpt_cb.dirpath) if ckpt_cb is not None and ckpt_cb.dirpath else None
        path = (folder or Path(trainer.default_root_dir) / "checkpoints") / "last.ckpt"
        if ckpt_cb is not None and ckpt_cb.save_last:
            # recorded in the checkpoint, so that the resumed ModelCheckpoint goes on writing last.ckpt: with another
            # path (none yet, when preempted before its first save) it would write last-v1.ckpt and leave this
            # file stale for the next --ckpt_path last
            ckpt_cb.last_model_path = str(path)
        # every rank calls it: rank 0 writes (callbacks' state included: data position, W&B id), then a barrier
        trainer.save_checkpoint(path)
        # A requeue makes SLURM send SIGTERM to every rank right away; Lightning's SIGTERM handler runs a collective
        # inside the handler. From here on the process ends by itself within a second, so SIGTERM is not needed.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        job = slurm_job_id() if self.requeue else None
        requeued = False
        if trainer.is_global_zero:
            for logger in trainer.loggers:  # flush W&B before SLURM stops this job's processes
                if isinstance(logger, WandbLogger) and logger._experiment is not None:
                    logger.experiment.finish()
            where = f"preempted at step {trainer.global_step}: saved {path}"
            if job:
                requeued = _requeue(job)
                _say(
                    f"{where}; "
                    + (f"requeued SLURM job {job}" if requeued else "the requeue failed (see above)")
                )
            else:
                _say(f"{where}; resume with --ckpt_path last")
        if self._group is not None:  # nobody leaves before rank 0 has requeued (srun --kill-on-bad-exit)
            flag = torch.tensor([int(requeued)], dtype=torch.int32)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
            requeued = bool(flag.item())
        if requeued:
            # SLURM is stopping this job's processes (SIGTERM, SIGKILL after KillWait) and everything is saved:
            # leave now, rather than race it through Lightning's and W&B's teardown
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        raise Preempted(EXIT_PREEMPTED)


def _requeue(job: str) -> bool:
    try:
        proc = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        _say(f"scontrol requeue {job} failed: {exc}")
        return False
    if proc.returncode != 0:
        _say(
            f"scontrol requeue {job} failed: {(proc.stderr or proc.stdout).strip()} "
            f"(the batch script needs #SBATCH --requeue)"
        )
    return proc.returncode == 0


def _say(message: str) -> None:
    print(f"[pipeline] {message}", file=sys.stderr, flush=True)
