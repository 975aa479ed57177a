"""A test driver: the training process sends itself SIGUSR1 right before a chosen step, so a preemption test can
put the signal at an exact place (an epoch's last batch, say) instead of wherever a timer happens to land."""

from __future__ import annotations

import os
import signal

import pytorch_lightning as pl


class SignalAt(pl.Callback):
    """Send SIGUSR1 to this process when training step ``step`` (1-based) starts; once.

    Args:
        step: The step during which the signal arrives.
    """

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_step + 1 == self.step:
            os.kill(os.getpid(), signal.SIGUSR1)
