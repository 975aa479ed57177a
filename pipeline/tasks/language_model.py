"""Many-to-many, one step ahead: a language model trained with truncated BPTT on contiguous streams.

Losses are in nats per token (``train/loss``, ``val_loss``); bits per character (``val_bpc``) and nats per character
(``val_nats_per_char``) divide the same total by the characters the targets cover (for character tokens nats per
character is ``val_loss``). Every validation ends with a sample, generated one token at a time and fed back
(:mod:`pipeline.models.sampling`), logged to W&B as a table that grows by a row per validation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from pytorch_lightning.loggers import WandbLogger
from torch import nn

from pipeline.models.recurrent import State
from pipeline.models.sampling import generate
from pipeline.tasks.tbptt import TBPTTTask

LN2 = math.log(2.0)


class LanguageModelTask(TBPTTTask):
    """Train a next-token model on windows of contiguous streams, the hidden state carried from window to window.

    Args:
        network: The language model (``pipeline.models.language_model.RNNLanguageModel``); its
            ``forward(tokens, state)`` returns logits (B, T, V) and the state after the last step.
        optimizer: See :class:`pipeline.tasks.base.SequenceTask`.
        scheduler: See :class:`pipeline.tasks.base.SequenceTask`.
        clip_norm: See :class:`pipeline.tasks.base.SequenceTask`.
        max_nonfinite_steps: See :class:`pipeline.tasks.base.SequenceTask`.
        tbptt_steps: See :class:`pipeline.tasks.tbptt.TBPTTTask`; null: each batch (one ``data.bptt`` window) is one
            optimizer step.
        carry_state: See :class:`pipeline.tasks.tbptt.TBPTTTask`.
        sample_prime: Text that each validation sample starts from.
        sample_length: Tokens to generate for each validation sample (0: no samples).
        sample_temperature: Sampling temperature of the validation samples.
        sample_seed: Seed of the validation samples (the same seed at every validation, so rows compare models).
        ema_decay: See :class:`pipeline.tasks.base.SequenceTask`.
    """

    def __init__(
        self,
        network: nn.Module,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        clip_norm: float | None = 1.0,
        max_nonfinite_steps: int = 10,
        tbptt_steps: int | None = None,
        carry_state: bool = True,
        sample_prime: str = "\n",
        sample_length: int = 200,
        sample_temperature: float = 0.8,
        sample_seed: int = 0,
        ema_decay: float | None = None,
    ) -> None:
        super().__init__(
            optimizer, scheduler, clip_norm, max_nonfinite_steps, tbptt_steps, carry_state, ema_decay
        )
        self.network = network
        self.sample_prime, self.sample_length = sample_prime, sample_length
        self.sample_temperature, self.sample_seed = sample_temperature, sample_seed
        self.samples: list[list] = []  # [epoch, step, text] rows of the W&B table

    def forward(self, tokens: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        return self.network(tokens, state)

    # --- training ---------------------------------------------------------------------------------------------
    def window_loss(self, batch: dict, window: slice, state: State | None) -> tuple[torch.Tensor, State]:
        logits, state = self(batch["tokens"][:, window], state)  # (B, t, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), batch["targets"][:, window].flatten())
        return loss, state

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)  # nats per token, mean over the batch's windows
        n_tokens = batch["n_tokens"]
        self.log_train_loss(loss, n_tokens)
        if self.logging_step():
            self.log(
                "train/bpc", loss * n_tokens / max(batch["n_chars"], 1) / LN2, on_step=True, on_epoch=False
            )
        return loss

    # --- validation -------------------------------------------------------------------------------------------
    def score(self, batch: dict, state: State | None) -> tuple[torch.Tensor, State]:
        """Total nats of the batch's targets, and the state after it."""
        logits, state = self(batch["tokens"], state)
        nats = F.cross_entropy(logits.float().flatten(0, 1), batch["targets"].flatten(), reduction="sum")
        return nats, state

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        nats, self.val_state = self.score(batch, self.start_state(batch, self.val_state))
        n_tokens, n_chars = batch["n_tokens"], max(batch["n_chars"], 1)
        # means weighted by tokens / characters: over the epoch they are total nats / total tokens (characters)
        self.log("val_loss", nats / n_tokens, batch_size=n_tokens, sync_dist=True, prog_bar=True)
        self.log("val_nats_per_char", nats / n_chars, batch_size=n_chars, sync_dist=True)
        self.log("val_bpc", nats / n_chars / LN2, batch_size=n_chars, sync_dist=True, prog_bar=True)

    @torch.no_grad()
    def evaluate(self, loader) -> dict[str, float]:
        """Score a whole loader outside the Trainer's loop (benchmarks); the state is carried as in validation."""
        was_training = self.training
        self.eval()
        nats, tokens, chars, state = 0.0, 0, 0, None
        for batch in loader:
            batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            total, state = self.score(batch, self.start_state(batch, state))
            nats, tokens, chars = nats + float(total), tokens + batch["n_tokens"], chars + batch["n_chars"]
        self.train(was_training)
        return {
            "loss": nats / tokens,
            "nats_per_char": nats / chars,
            "bpc": nats / chars / LN2,
            "tokens": tokens,
            "chars": chars,
        }

    def on_validation_epoch_end(self) -> None:
        datamodule = self.trainer.datamodule
        if self.trainer.state.fn != "fit" or self.trainer.sanity_checking or not self.sample_length:
            return  # samples belong to training runs; pipeline.evaluate only scores
        if datamodule is None:
            return
        if self.global_rank != 0:
            return
        text = self.sample_text(
            datamodule, self.sample_prime, self.sample_length, self.sample_temperature, seed=self.sample_seed
        )
        self.samples.append([self.current_epoch, self.global_step, self.sample_prime + text])
        for logger in self.loggers:
            if isinstance(logger, WandbLogger):  # a table over validations; other loggers have no tables
                logger.log_text("val/samples", columns=["epoch", "step", "sample"], data=self.samples)

    # --- sampling ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_text(
        self,
        codec,
        prime: str,
        length: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        greedy: bool = False,
        seed: int | None = None,
    ) -> str:
        """Generate ``length`` tokens after ``prime`` (text); ``codec`` has ``encode_text`` and ``decode`` (the data
        module). Returns the generated text, without the prime."""
        was_training = self.training
        self.eval()  # no dropout while sampling
        ids = codec.encode_text(prime or "\n")
        out = generate(self.network, ids, length, temperature, top_k, top_p, greedy, seed, self.device)
        self.train(was_training)
        return codec.decode(out)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["lm_samples"] = self.samples

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.samples = list(checkpoint.get("lm_samples", []))
