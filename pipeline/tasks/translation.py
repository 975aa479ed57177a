"""Many-to-many translation: teacher-forced training with label smoothing; loss, perplexity, BLEU and chrF on val.

Every validation logs ``val_loss`` (per-target-token NLL, no smoothing), ``val_ppl`` and ``val_acc`` (teacher-forced
token accuracy); every ``bleu_every_n_val``-th validation (and every ``trainer.validate``) also decodes the split and
logs ``val_bleu`` / ``val_chrf`` (sacrebleu on detokenized hypotheses against the raw reference lines, default 13a
tokenization). With a W&B logger it also logs a table of sample translations and attention heatmaps of a few fixed
source sentences.
"""

from __future__ import annotations

import math
import time

import sacrebleu
import torch
import torch.distributed as dist
import torch.nn.functional as F
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from pytorch_lightning.loggers import WandbLogger
from torch import nn

from pipeline.data.tokenizer import BOS, EOS, PAD
from pipeline.models.beam_search import beam_search, greedy_search
from pipeline.tasks.base import SequenceTask
from pipeline.tasks.heatmap import attention_image, pad_image


class TranslationTask(SequenceTask):
    """Train an encoder-decoder translator.

    Args:
        network: The encoder-decoder (``pipeline.models.seq2seq.Seq2Seq``).
        optimizer: See :class:`pipeline.tasks.base.SequenceTask`.
        scheduler: See :class:`pipeline.tasks.base.SequenceTask`.
        clip_norm: See :class:`pipeline.tasks.base.SequenceTask`.
        max_nonfinite_steps: See :class:`pipeline.tasks.base.SequenceTask`.
        ema_decay: See :class:`pipeline.tasks.base.SequenceTask`.
        teacher_forcing: Probability of feeding the reference previous token in training (1: always; lower mixes in
            the model's own predictions, which makes every step sequential and slower).
        label_smoothing: Share of the target probability spread over the vocabulary (Szegedy et al., 2016).
        bleu_every_n_val: Decode the validation split and compute BLEU/chrF every n-th validation (loss always).
        beam_size: Beam for ``trainer.validate`` / ``pipeline.evaluate`` and ``pipeline.translate`` (1: greedy).
        val_beam_size: Beam for the BLEU of the validations during training (greedy by default: it is cheaper).
        length_penalty: Alpha of the length penalty in beam search (0: raw log-probability).
        max_length_ratio: Longest translation = ratio x source length + ``max_length_offset`` pieces.
        max_length_offset: See ``max_length_ratio``.
        num_samples: Sample translations (source, reference, hypothesis) logged per validation to W&B.
        heatmap_sentences: Source sentences whose attention is drawn each validation (default: the first
            ``num_heatmaps`` source sentences of the first validation).
        num_heatmaps: How many default heatmap sentences.
    """

    def __init__(
        self,
        network: nn.Module,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        clip_norm: float | None = 5.0,
        max_nonfinite_steps: int = 10,
        teacher_forcing: float = 1.0,
        label_smoothing: float = 0.1,
        bleu_every_n_val: int = 1,
        beam_size: int = 5,
        val_beam_size: int = 1,
        length_penalty: float = 0.6,
        max_length_ratio: float = 1.5,
        max_length_offset: int = 5,
        num_samples: int = 8,
        heatmap_sentences: list[str] | None = None,
        num_heatmaps: int = 3,
        ema_decay: float | None = None,
    ) -> None:
        super().__init__(optimizer, scheduler, clip_norm, max_nonfinite_steps, ema_decay)
        if getattr(network, "pad_id", PAD) != PAD:
            raise ValueError(
                f"model.network.pad_id is {network.pad_id}, but the translation data pads with id {PAD}; "
                f"remove pad_id from the config."
            )
        self.network = network
        self.teacher_forcing, self.label_smoothing = teacher_forcing, label_smoothing
        self.bleu_every_n_val, self.length_penalty = bleu_every_n_val, length_penalty
        self.beam_size, self.val_beam_size = beam_size, val_beam_size
        self.max_length_ratio, self.max_length_offset = max_length_ratio, max_length_offset
        self.num_samples, self.num_heatmaps = num_samples, num_heatmaps
        self.heatmap_sentences = list(heatmap_sentences or [])
        self.tokens_seen = 0  # real source + target tokens trained on (benchmarks report tokens/s)
        self.train_time_s = 0.0  # wall time in fit up to the last step (validation included), across resumes
        self._fit_start: float | None = None
        self._time_before = 0.0
        self._val_count = 0

    # --- training ---------------------------------------------------------------------------------------------
    def _nll(self, logits: torch.Tensor, target: torch.Tensor, smoothing: float) -> torch.Tensor:
        """Summed cross-entropy over real target tokens: logits (B, T, V), target (B, T)."""
        return F.cross_entropy(
            logits.flatten(0, 1).float(),
            target.flatten(),
            ignore_index=PAD,
            label_smoothing=smoothing,
            reduction="sum",
        )

    def train_loss(self, batch: dict) -> torch.Tensor:
        """The training loss of a batch: label-smoothed cross-entropy per real target token."""
        nll = self.network.summed_nll(
            batch["src"], batch["src_lengths"], batch["tgt_in"], batch["tgt_out"], self.label_smoothing,
            self.teacher_forcing,
        )  # fmt: skip
        return nll / max(batch["n_target"], 1) * batch["weight"]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        n_target = max(batch["n_target"], 1)
        loss = self.train_loss(batch)
        self.optimizer_step_on(loss)
        if batch["weight"]:
            self.tokens_seen += batch["n_tokens"]
        self.log_train_loss(loss, n_target)
        return loss.detach()

    def on_train_start(self) -> None:
        self._fit_start = time.perf_counter()
        self._time_before = self.train_time_s

    def on_train_batch_end(self, outputs, batch: dict, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        if self._fit_start is not None:  # time of the last step trained (checkpoints carry it)
            self.train_time_s = self._time_before + time.perf_counter() - self._fit_start

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["tokens_seen"] = self.tokens_seen
        checkpoint["train_time_s"] = self.train_time_s

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.tokens_seen = checkpoint.get("tokens_seen", 0)
        self.train_time_s = checkpoint.get("train_time_s", 0.0)

    # --- decoding ---------------------------------------------------------------------------------------------
    def translate_ids(self, src: torch.Tensor, src_lengths: torch.Tensor, beam_size: int | None = None):
        """Batch of source ids -> target id lists (greedy for beam 1)."""
        beam = self.beam_size if beam_size is None else beam_size
        opts = {
            "max_length_ratio": self.max_length_ratio,
            "max_length_offset": self.max_length_offset,
            "bos": BOS,  # the models know no token ids: the data's tokenizers fix them
            "eos": EOS,
        }
        if beam <= 1:
            return greedy_search(self.network, src, src_lengths, **opts)[0]
        return beam_search(
            self.network, src, src_lengths, beam_size=beam, length_penalty_alpha=self.length_penalty, **opts
        )

    @torch.no_grad()
    def predict_lines(
        self, lines: list[str], datamodule, beam_size: int | None = None, batch_size: int = 64
    ) -> list[str]:
        """One translation per input line (an empty line stays empty); batched by length for speed."""
        self.eval()
        out = [""] * len(lines)
        order = sorted((i for i, line in enumerate(lines) if line.strip()), key=lambda i: len(lines[i]))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            src, lengths = datamodule.encode_lines([lines[i] for i in idx])
            for i, ids in zip(idx, self.translate_ids(src.to(self.device), lengths, beam_size), strict=True):
                out[i] = datamodule.decode(ids)
        return out

    # --- validation -------------------------------------------------------------------------------------------
    def _bleu_due(self) -> bool:
        if self.trainer.sanity_checking:
            return False
        return self.trainer.state.fn != "fit" or self._val_count % max(self.bleu_every_n_val, 1) == 0

    def on_validation_epoch_start(self) -> None:
        self._sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # nll, tokens, correct
        self._records: list[tuple[str, str, str]] = []  # (source, reference, hypothesis)
        self._decode = self._bleu_due()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits, _ = self.network(batch["src"], batch["src_lengths"], batch["tgt_in"])
        target = batch["tgt_out"]
        real = target != PAD
        correct = ((logits.argmax(-1) == target) & real).sum()
        self._sums += torch.stack(
            [self._nll(logits, target, 0.0).double(), real.sum().double(), correct.double()]
        )
        if self._decode:
            dm = self.trainer.datamodule
            beam = self.val_beam_size if self.trainer.state.fn == "fit" else self.beam_size
            hyps = self.translate_ids(batch["src"], batch["src_lengths"], beam)
            self._records += zip(batch["src_text"], batch["tgt_text"], map(dm.decode, hyps), strict=True)

    def on_validation_epoch_end(self) -> None:
        sums, records = self._sums, self._records
        if dist.is_available() and dist.is_initialized():
            sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
            gathered: list = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, records)
            records = [r for part in gathered for r in part]
        nll = float(sums[0] / sums[1].clamp(min=1))
        self.log("val_loss", nll, prog_bar=True)
        self.log("val_ppl", math.exp(min(nll, 50.0)))
        self.log("val_acc", float(sums[2] / sums[1].clamp(min=1)))
        if self._decode and records:
            hyps = [h for _, _, h in records]
            refs = [[r for _, r, _ in records]]
            self.log("val_bleu", sacrebleu.corpus_bleu(hyps, refs).score, prog_bar=True)
            self.log("val_chrf", sacrebleu.corpus_chrf(hyps, refs).score)
        if not self.trainer.sanity_checking:
            self._val_count += 1
            self._log_pictures(records)

    def _log_pictures(self, records: list[tuple[str, str, str]]) -> None:
        """Sample translations as a W&B table and attention heatmaps as images; a no-op without a WandbLogger."""
        loggers = [lg for lg in self.trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers or self.global_rank != 0:
            return
        step = self.global_step
        if records and self.num_samples:
            rows = [[step, s, r, h] for s, r, h in records[: self.num_samples]]
            for lg in loggers:
                lg.log_table(
                    "val/samples", columns=["step", "source", "reference", "hypothesis"], data=rows, step=step
                )
        if not self.heatmap_sentences:
            self.heatmap_sentences = [s for s, _, _ in records[: self.num_heatmaps]]
        if not self.heatmap_sentences:
            return
        dm = self.trainer.datamodule
        src, lengths = dm.encode_lines(self.heatmap_sentences)
        hyps, weights = greedy_search(
            self.network,
            src.to(self.device),
            lengths,
            self.max_length_ratio,
            self.max_length_offset,
            return_attention=True,
            bos=BOS,
            eos=EOS,
        )
        images, captions = [], []
        for b, (ids, w) in enumerate(zip(hyps, weights, strict=True)):
            src_pieces = dm.src_tokenizer.pieces(src[b, : int(lengths[b])].tolist())
            tgt_pieces = dm.tgt_tokenizer.pieces([*ids, EOS])  # + EOS, the step that ends the sentence
            images.append(attention_image(w, src_pieces, tgt_pieces))
            captions.append(f"{self.heatmap_sentences[b]} -> {dm.decode(ids)}")
        width, height = max(im.width for im in images), max(im.height for im in images)
        images = [pad_image(im, width, height) for im in images]  # W&B shows one size per key
        for lg in loggers:
            lg.log_image("val/attention", images=images, step=step, caption=captions)
