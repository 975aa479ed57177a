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
        adversarial_eps: Adversarial training on the embeddings (Miyato et al., 2017, "Adversarial Training Methods
            for Semi-Supervised Text Classification"): each batch is also trained on its embeddings moved by this
            L2 length per sentence in the direction that raises its loss most (the normalized gradient), and the two
            losses' gradients are added. A regularizer; each step costs about twice as much. null: off.
        label_smoothing: Share of the target probability spread evenly over the classes in training (Szegedy et
            al., 2016); SST-2's phrase labels are binarized from five grades, so some are close calls. 0: off.
    """

    def __init__(
        self,
        network: nn.Module,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        clip_norm: float | None = 1.0,
        max_nonfinite_steps: int = 10,
        ema_decay: float | None = None,
        adversarial_eps: float | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(optimizer, scheduler, clip_norm, max_nonfinite_steps, ema_decay)
        if adversarial_eps is not None and adversarial_eps <= 0:
            raise ValueError(
                f"model.adversarial_eps is {adversarial_eps}; set it above 0 (e.g. 1.0), or null."
            )
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(
                f"model.label_smoothing is {label_smoothing}; set it in [0, 1), e.g. 0.1, or 0 for none."
            )
        self.network = network
        self.adversarial_eps, self.label_smoothing = adversarial_eps, label_smoothing
        num_classes = network.head.out_features
        self.train_accuracy_names = ("train/acc",)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.network(tokens, lengths)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        tokens, lengths, labels = batch["tokens"], batch["lengths"], batch["labels"]
        if self.adversarial_eps is None:
            logits = self(tokens, lengths)  # (B, C)
            loss = self.loss(logits, labels) * batch["weight"]
            self.optimizer_step_on(loss)
        else:
            # two forward-backward passes, one optimizer step: the clean batch's gradients, then the adversarial
            # batch's added to them (under DDP each backward is all-reduced, so the sum is the global one)
            self.optimizers().zero_grad(set_to_none=True)
            embedded = self.network.embed(tokens)  # (B, T, E)
            embedded.retain_grad()
            logits = self.network.classify(embedded, tokens, lengths)
            loss = self.loss(logits, labels) * batch["weight"]
            self.backward_pass(loss)
            shifted = self.network.embed(tokens) + self.adversarial_shift(embedded.grad, lengths)
            adversarial = self.loss(self.network.classify(shifted, tokens, lengths), labels)
            self.optimizer_step_on(adversarial * batch["weight"], accumulate=True)
        if batch["weight"]:
            self.log_train_accuracy("train/acc", logits, labels)
        self.log_train_loss(loss, len(labels))  # the clean loss: comparable with and without adversarial_eps
        return loss.detach()

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The training loss: mean cross-entropy of logits (B, C) against labels (B,), label-smoothed if asked."""
        return F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)

    def adversarial_shift(self, grad: torch.Tensor | None, lengths: torch.Tensor) -> torch.Tensor:
        """The first-order worst-case move of the embeddings: ``grad`` (B, T, E) of the loss with respect to them,
        scaled to L2 length ``adversarial_eps`` per sentence, zero at pads (B, T, E). A constant: no gradient."""
        if grad is None:  # a zero-weight batch (DDP's padding) backpropagated nothing
            return torch.zeros(())
        real = torch.arange(grad.size(1), device=grad.device)[None, :] < lengths[:, None].to(grad.device)
        grad = grad.float() * real.unsqueeze(-1)  # pads are not words: leave them alone
        norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12)  # (B,)
        return (self.adversarial_eps * grad / norm[:, None, None]).to(grad.dtype).detach()

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
