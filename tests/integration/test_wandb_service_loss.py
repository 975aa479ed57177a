"""W&B's service process stopping mid-run (SLURM's SIGTERM reaches it too) takes W&B off the trainer, not the run down:
a real offline W&B run whose service is killed, then the next metrics call. It runs in a child process, whose exit
meets the dead service once more (W&B's own teardown prints a traceback there, which is not this test's output)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys, time
    from pathlib import Path
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import CSVLogger, WandbLogger
    from pipeline.training.preemption import Preemption

    def children(pid):
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == pid:
                    found.append(int(entry.name))
        return found

    tmp = sys.argv[1]
    before = set(children(os.getpid()))
    wandb_logger = WandbLogger(save_dir=tmp, offline=True, project="pipeline-test")
    csv_logger = CSVLogger(tmp)
    trainer = pl.Trainer(logger=[wandb_logger, csv_logger], enable_checkpointing=False, callbacks=[])
    Preemption().setup(trainer, pl.LightningModule(), "fit")
    wandb_logger.log_metrics({"loss": 1.0}, step=0)  # the service is up
    service = [pid for pid in children(os.getpid()) if pid not in before]
    for pid in service:
        os.kill(pid, signal.SIGTERM)
    time.sleep(2)
    for step in range(1, 20):  # the first calls may still be buffered; a lost connection shows within a few
        wandb_logger.log_metrics({"loss": 1.0}, step=step)
        if wandb_logger not in trainer.loggers:
            break
    print(json.dumps({"service": service, "loggers": [type(lg).__name__ for lg in trainer.loggers]}), flush=True)
    """
)


def test_metrics_after_the_service_died_drop_wandb_and_keep_the_run(tmp_path):
    env = dict(os.environ, WANDB_MODE="offline", WANDB_DIR=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=Path(__file__).resolve().parents[2],  # the project root: the child imports pipeline from here
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, proc.stderr[-3000:]
    result = json.loads(lines[-1])
    assert result["service"], "no W&B service process was started"
    assert result["loggers"] == ["CSVLogger"]  # W&B is off the trainer; the run and its other loggers go on
    assert "W&B's service is gone (" in proc.stderr
