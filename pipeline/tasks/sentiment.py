"""Many-to-one classification (sentiment): cross-entropy, accuracy, one optimizer step per batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from pipeline.tasks.base import SequenceTask


class SentimentTask(SequenceTask):
    """Train a sequence classifier.

    Args:
        network: The classifier (``pipeline.models.classifier.SequenceClassifier``); its ``forward(tokens, lengths)``
            returns logits (B, C).
        optimizer: Optimizer class and its arguments, e.g. ``{class_path: torch.optim.AdamW, init_args: {lr: 0.002}}``.
        scheduler: Learning-rate scheduler, stepped after every optimizer step (e.g. ``pipeline.tasks.schedules.Warmup``).
        clip_norm: Clip the global gradient norm to this value (null: no clipping); the norm before clipping is logged.
        max_nonfinite_steps: Stop after this many consecutive steps with a NaN/Inf loss or gradient norm.
        ema_decay: See :class:`pipeline.tasks.base.SequenceTask`.
    """

    def __init__(
        self,
        network: nn.Module,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        clip_norm: float | None = 1.0,
        max_nonfinite_steps: int = 10,
        ema_decay: float | None = None,
    ) -> None:
        super().__init__(optimizer, scheduler, clip_norm, max_nonfinite_steps, ema_decay)
        self.network = network
        num_classes = network.head.out_features
        # training predictions are argmaxes and the data checked every label: the per-step argument checks
        # (a torch.unique each) are only overhead
        self.train_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.network(tokens, lengths)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self(batch["tokens"], batch["lengths"])  # (B, C)
        loss = F.cross_entropy(logits, batch["labels"]) * batch["weight"]
        self.optimizer_step_on(loss)
        if batch["weight"]:
            self.log_train_accuracy(
                "train/acc", self.train_acc, logits.detach(), batch["labels"], len(logits)
            )
        self.log_train_loss(loss, len(batch["labels"]))
        return loss.detach()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self(batch["tokens"], batch["lengths"])
        loss = F.cross_entropy(logits, batch["labels"], reduction="sum") / len(batch["labels"])
        self.val_acc(logits, batch["labels"])
        n = len(batch["labels"])
        self.log("val_loss", loss, on_epoch=True, sync_dist=True, batch_size=n, prog_bar=True)
        self.log("val_acc", self.val_acc, on_epoch=True, batch_size=n, prog_bar=True)

    @torch.no_grad()
    def predict_lines(self, lines: list[str], datamodule) -> list[str]:
        """One output line per input line: ``<label>\\t<probability>``."""
        self.eval()
        out = []
        for text in lines:
            tokens, lengths = datamodule.encode_text(text)
            probs = self(tokens.to(self.device), lengths).softmax(-1)[0]
            p, i = probs.max(0)
            out.append(f"{datamodule.labels[int(i)]}\t{p.item():.4f}")
        return out
