"""Progress: plain log lines when stderr is not a terminal (SLURM logs, CI, ``> file``), and the terminal's bar.

Progress bars redraw one line in place and show nothing useful in a file; this prints one line every
``every_s`` seconds instead: step, epoch, the latest training loss and throughput, and elapsed time.
"""

from __future__ import annotations

import sys
import time

import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichProgressBar
from pytorch_lightning.utilities import rank_zero_only


class LogProgress(pl.Callback):
    """Print ``[pipeline] step N (epoch E) loss=... tokens/s=... elapsed=...`` every ``every_s`` seconds."""

    def __init__(self, every_s: float = 30.0) -> None:
        self.every_s = every_s
        self._start = self._last = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = self._last = time.time()

    @rank_zero_only
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        now = time.time()
        if now - self._last < self.every_s:
            return
        self._last = now
        m = trainer.callback_metrics
        parts = [f"step {trainer.global_step}", f"(epoch {trainer.current_epoch})"]
        for key in ("train/loss_step", "train/loss", "train/tokens_per_s", "val_loss", "val_acc"):
            if key in m:
                parts.append(f"{key.split('/')[-1]}={float(m[key]):.4g}")
        parts.append(f"elapsed={int(now - self._start)}s")
        print("[pipeline] " + " ".join(parts), file=sys.stderr, flush=True)


class EpochBar(RichProgressBar):
    """Lightning's rich progress bar, without its "Epoch 0/-2" when the run is bounded by steps or time, not epochs
    (``max_epochs: null`` becomes -1 inside Lightning, and the bar printed max_epochs - 1)."""

    def _get_train_description(self, current_epoch: int) -> str:
        if self.trainer.max_epochs is not None and self.trainer.max_epochs >= 0:
            return super()._get_train_description(current_epoch)
        return f"Epoch {current_epoch}"


def use_epoch_bar(trainer: pl.Trainer) -> None:
    """Swap the default rich bar (when Lightning chose it) for :class:`EpochBar`."""
    for i, callback in enumerate(trainer.callbacks):
        if type(callback) is RichProgressBar:
            trainer.callbacks[i] = EpochBar()
