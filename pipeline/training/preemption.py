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

SIGTERM is what SLURM sends when it ends a job: preemption by a higher-priority job (SIGTERM, ``GraceTime`` seconds,
then the requeue of a ``PreemptMode=REQUEUE`` partition), ``scancel``, the time limit. It is handled the same way up
to the save (flag, agreement at the next step boundary, exact-resume checkpoint; SIGTERM outranks SIGUSR1 when both
came), then rank 0 asks ``scontrol show job`` what SIGTERM meant, while every other rank waits for its answer::

    PreemptTime set ─► preempted: wait while the job is RUNNING; SLURM requeues it when the grace time ends and stops
                       the ranks. (Ranks that left earlier would end the job first: CANCELLED, never requeued.)
    JobState not RUNNING (COMPLETING after scancel or the time limit) ─► leave at once: the job stays ended, with
                       its final checkpoint; KillWait (default 30 s) later SLURM would SIGKILL the ranks anyway
    neither (a SIGTERM from elsewhere), or no SLURM ─► save and stop (exit status 3), as SIGUSR1 without SLURM

Lightning installs its own SIGTERM handler when training starts (it broadcasts inside the handler, the same hazard as
above); this callback puts its flag-only handler back at the start of the sanity check and of training.
Outside SLURM the same signals save and stop (exit status 3); resume with ``--ckpt_path last``.
The handler is installed when the callback is built, before the data and the process group are set up; a signal
that arrives earlier, while Python is still importing, ends the process (the default action of the signal).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from lightning_fabric.plugins.environments import SLURMEnvironment
from pytorch_lightning.loggers import WandbLogger

from pipeline.training import rendezvous

#: Exit status of a process that saved and stopped without being requeued (outside SLURM, or requeue refused).
EXIT_PREEMPTED = 3
#: What the ranks agree on at a step boundary (the largest wins): nothing, save and requeue, save and stop.
NONE, REQUEUE, STOP = 0, 1, 2


def slurm_plugins() -> list:
    """Under SLURM: Lightning's cluster environment with its signal-handler requeue turned off (see above), and the
    rendezvous watchdog started (one sentence instead of a hang when a node cannot reach the others)."""
    if not SLURMEnvironment.detect():
        return []
    rendezvous.watch()
    return [SLURMEnvironment(auto_requeue=False)]


def slurm_job_id() -> str | None:
    """The id ``scontrol requeue`` takes: the job itself (an array task has a job id of its own too)."""
    return os.environ.get("SLURM_JOB_ID")


class Preempted(SystemExit):
    """Raised on every rank after the checkpoint is written, when there was no requeue; ends the process."""


class Preemption(pl.Callback):
    """Save an exact-resume checkpoint, then requeue or end the SLURM job, when a signal asks for it.

    Args:
        signum: The signal that announces preemption or the time limit: save and requeue.
        requeue: Run ``scontrol requeue`` under SLURM (else only save and stop).
        stop_signum: The signal that ends the job (preemption with a grace time, scancel): save, then see above.
    """

    def __init__(
        self, signum: int = signal.SIGUSR1, requeue: bool = True, stop_signum: int = signal.SIGTERM
    ) -> None:
        self.signum, self.requeue, self.stop_signum = signum, requeue, stop_signum
        self.requested = NONE
        self._group = None
        self._trainer: pl.Trainer | None = None
        self._detached: list[WandbLogger] = []  # W&B loggers taken off the trainer on SIGTERM
        self._first_step_said = False
        self._install()

    def _install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(self.signum, self._on_signal)
            signal.signal(self.stop_signum, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        # only this: the training loop acts on it at the next step boundary
        self.requested = max(self.requested, STOP if signum == self.stop_signum else REQUEUE)
        if signum == self.stop_signum and self._trainer is not None:
            # SLURM's SIGTERM reaches W&B's service process too, and every W&B call after it fails (a validation
            # that ends before the next step boundary would log, and crash this rank before it saves): stop
            # logging to W&B now; _finish_wandb still tries to finish it, for a service that is alive
            loggers = self._trainer.loggers
            self._detached += [lg for lg in loggers if isinstance(lg, WandbLogger)]
            self._trainer.loggers = [lg for lg in loggers if not isinstance(lg, WandbLogger)]

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
        self._trainer = trainer
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and not getattr(logger, "_guarded", False):
                _guard_wandb(logger, trainer)
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        if restarts and trainer.is_global_zero:
            _say(f"SLURM job {slurm_job_id()} restart {restarts}")

    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._install()  # Lightning has just replaced the SIGTERM handler with its own (see above)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._install()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not self._first_step_said and trainer.is_global_zero:
            # start-up cost on a cluster: from submit to this line (see README, multi-node)
            self._first_step_said = True
            _say(f"first training step done at {time.strftime('%Y-%m-%dT%H:%M:%S')}")
        action = self._agreed()
        if action == NONE:
            return
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            # Not at an epoch's last batch: Lightning restores such a checkpoint into an epoch that it then ends
            # at once, and training would go on with the data of the epoch after next. One step later is exact.
            self.requested = action  # on every rank, so that they agree again at the next step
            return
        self._preempt(trainer, action)

    # --- the work ----------------------------------------------------------------------------------------------
    def _agreed(self) -> int:
        """The largest action any rank was asked for; the same answer on all ranks at the same step."""
        return self._max(self.requested)

    def _max(self, value: int) -> int:
        if self._group is None:
            return value
        flag = torch.tensor([value], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
        return int(flag.item())

    def _preempt(self, trainer: pl.Trainer, action: int) -> None:
        self.requested = NONE
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
        if trainer.is_global_zero:
            _finish_wandb([*trainer.loggers, *self._detached])
        if action == STOP:
            self._stop(trainer, path)
        job = slurm_job_id() if self.requeue else None
        requeued = False
        if trainer.is_global_zero:
            where = f"preempted at step {trainer.global_step}: saved {path}"
            if job:
                requeued = _requeue(job)
                _say(
                    f"{where}; "
                    + (f"requeued SLURM job {job}" if requeued else "the requeue failed (see above)")
                )
            else:
                _say(f"{where}; resume with --ckpt_path last")
        # nobody leaves before rank 0 has requeued (srun --kill-on-bad-exit)
        if self._max(int(requeued)):
            _leave()
        raise Preempted(EXIT_PREEMPTED)

    def _stop(self, trainer: pl.Trainer, path: Path) -> None:
        """After the SIGTERM save: wait for SLURM's requeue of a preempted job, leave a cancelled one (see above)."""
        job = slurm_job_id()
        fate = NONE
        if trainer.is_global_zero:
            info = slurm_job(job) if job else {}
            where = f"stopped by SIGTERM at step {trainer.global_step}: saved {path}"
            if info.get("PreemptTime", "None") not in ("None", "Unknown", ""):
                _say(
                    f"{where}; SLURM preempts job {job}: waiting for its requeue at the end of the grace time"
                )
                # SLURM stops this process when it requeues the job; an unanswered query counts as still RUNNING
                while info.get("JobState", "RUNNING") == "RUNNING":
                    time.sleep(1)
                    info = slurm_job(job)
                fate = REQUEUE
            elif info.get("JobState") not in (None, "RUNNING"):
                _say(
                    f"{where}; SLURM job {job} is {info['JobState']} (cancelled or out of time, not preempted), so "
                    f"it is not requeued; continue it with --ckpt_path last"
                )
                fate = STOP
            else:
                _say(f"{where}; resume with --ckpt_path last")
        if self._max(fate) != NONE:  # every other rank waits here for rank 0's answer
            _leave()
        raise Preempted(EXIT_PREEMPTED)


def slurm_job(job: str) -> dict[str, str]:
    """``scontrol show job`` as a dict (JobState, PreemptTime, ...); {} when scontrol does not answer."""
    try:
        out = subprocess.run(
            ["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return dict(token.split("=", 1) for token in out.split() if "=" in token)


def _leave() -> None:
    """SLURM is stopping this job's processes (SIGTERM, SIGKILL after KillWait) and everything is saved: leave now,
    rather than race it through Lightning's and W&B's teardown."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _guard_wandb(logger: WandbLogger, trainer: pl.Trainer) -> None:
    """A W&B call that fails on a lost connection to W&B's service takes W&B off the trainer, not the run down.

    SLURM's SIGTERM reaches the service process as well; when it lands while rank 0 is inside a ``log_metrics``
    call, that call fails (ConnectionResetError) before the step boundary where the SIGTERM is acted on, and the
    rank crashed without its final checkpoint (a flaky cluster test, 2026-12-02). A service that dies for any other
    reason should not end a training run either."""
    inner = logger.log_metrics

    def log_metrics(*args, **kwargs) -> None:
        try:
            inner(*args, **kwargs)
        except (ConnectionError, BrokenPipeError, EOFError) as exc:
            trainer.loggers = [lg for lg in trainer.loggers if lg is not logger]
            _say(
                f"W&B's service is gone ({type(exc).__name__}: stopped by a signal?); training goes on without "
                f"W&B, and what W&B wrote so far stays in its run directory"
            )

    logger.log_metrics = log_metrics
    logger._guarded = True


def _finish_wandb(loggers: list) -> None:
    """Flush W&B before SLURM stops this job's processes. SLURM signals every process of the job step, W&B's service
    process too: after a SIGTERM it may be gone already, and what it wrote so far is what the run keeps."""
    for logger in loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            try:
                logger.experiment.finish()
            except Exception as exc:  # noqa: BLE001  (a broken connection to a stopped service)
                _say(
                    f"W&B could not finish the run ({type(exc).__name__}: its service stopped on the signal too)"
                )


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
