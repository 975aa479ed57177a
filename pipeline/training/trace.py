"""Opt-in tracing of what training consumed, for debugging data order and for the resume/DDP tests.

``PIPELINE_TRACE=<folder>``: every rank appends ``<global step>\\t<example id>`` lines for each consumed training
example to ``<folder>/ids-rank<r>.tsv`` and saves its final weights to ``<folder>/weights-rank<r>.pt``.
``PIPELINE_KILL_AT=<step>`` (or ``epoch:<n>``): the process group is SIGKILLed at the start of that training step
(or of that epoch's first batch), which simulates a crash at a known point.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytorch_lightning as pl
import torch


class DataTrace(pl.Callback):
    """Writes consumed example ids and final weights per rank (see the module doc)."""

    def __init__(self, folder: str | None, kill_at: str | None) -> None:
        self.folder = Path(folder) if folder else None
        self.kill_at = kill_at

    @classmethod
    def from_env(cls) -> DataTrace | None:
        folder, kill = os.environ.get("PIPELINE_TRACE"), os.environ.get("PIPELINE_KILL_AT")
        return cls(folder, kill) if (folder or kill) else None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module, batch: dict, batch_idx: int) -> None:
        if not self.kill_at:
            return
        if self.kill_at.startswith("epoch:"):
            hit = trainer.current_epoch == int(self.kill_at[6:]) and batch.get("position", (0, 0))[1] == 1
        else:
            hit = trainer.global_step == int(self.kill_at)
        if hit:
            os.killpg(os.getpgid(0), signal.SIGKILL)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module, outputs, batch: dict, batch_idx: int
    ) -> None:
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / f"ids-rank{trainer.global_rank}.tsv", "a") as fh:
            fh.writelines(f"{trainer.global_step}\t{i}\n" for i in batch.get("ids", []))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.folder is not None:
            state = {k: v.detach().cpu() for k, v in pl_module.state_dict().items()}
            torch.save(state, self.folder / f"weights-rank{trainer.global_rank}.pt")
