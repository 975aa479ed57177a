"""W&B's service process stopping mid-run (SLURM's SIGTERM reaches it too) takes W&B off the trainer, not the run down:
a real offline W&B run whose service is killed, then the next metrics call."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
from pytorch_lightning.loggers import CSVLogger, WandbLogger

from pipeline.training.preemption import Preemption


def children(pid: int) -> list[int]:
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


def test_metrics_after_the_service_died_drop_wandb_and_keep_the_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    before = set(children(os.getpid()))
    wandb_logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="pipeline-test")
    csv_logger = CSVLogger(tmp_path)
    trainer = pl.Trainer(logger=[wandb_logger, csv_logger], enable_checkpointing=False, callbacks=[])
    Preemption().setup(trainer, pl.LightningModule(), "fit")
    wandb_logger.log_metrics({"loss": 1.0}, step=0)  # the service is up
    service = [pid for pid in children(os.getpid()) if pid not in before]
    if not service:
        pytest.skip("this wandb runs no service process")
    for pid in service:
        os.kill(pid, signal.SIGTERM)
    time.sleep(2)
    for step in range(1, 20):  # the first calls may still be buffered; a lost connection shows within a few
        wandb_logger.log_metrics({"loss": 1.0}, step=step)
        if wandb_logger not in trainer.loggers:
            break
    assert trainer.loggers == [csv_logger]
    assert "W&B's service is gone" in capsys.readouterr().err
