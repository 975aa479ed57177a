"""Video / frame-sequence classification: a clip loss, a per-frame loss, or both; accuracy for each.

loss = clip_weight * CE(clip logits, clip label) + frame_weight * CE(frame logits, frame labels; padded frames
ignored). Logged: ``train/loss``, ``train/acc`` (clip), ``train/frame_acc``, ``val_loss``, ``val_acc``,
``val_frame_acc``; the data side: ``data/decode_fps`` (frames decoded per second by one DataLoader worker) and
``train/loader_share`` (the share of a training step spent waiting for the batch). With a W&B logger, every
validation adds a confusion-matrix image and a few validation clips (filmstrips and GIFs) with their true and
predicted labels.

Training goes through the one shared truncated-BPTT loop (:mod:`pipeline.tasks.tbptt`, every clip starts from a zero
state). ``tbptt_steps: null`` (the default) makes each batch one window: full backpropagation through the whole clip,
one optimizer step per batch (20-frame clips need no more). ``tbptt_steps: K`` cuts long clips into windows of K
frames, the RNN state carried (detached) from window to window, one optimizer step per window. In each window the
loss is ``frame_weight`` x the per-frame loss over its frames + ``clip_weight`` x the clip loss of the clips that end
in it (summed over those clips / B, so over a batch every clip counts once). The clip loss needs ``pooling: last``
(mean and attention pool over frames a window cannot see) and the RNN ``bidirectional: false`` (a backward pass over
the future cannot be truncated). ``train/loss`` is then the mean of the windows' losses weighted by their frames;
validation always reads whole clips.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_only
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from pipeline.data.clips import IGNORE
from pipeline.models.recurrent import State
from pipeline.tasks import video_media
from pipeline.tasks.tbptt import TBPTTTask


class VideoTask(TBPTTTask):
    """Train a clip classifier with an optional per-frame head.

    Args:
        network: The model (``pipeline.models.video_classifier.VideoClassifier``); ``forward(frames, lengths)``
            returns clip logits (B, K) and per-frame logits (B, T, K_frame) or None.
        clip_weight: Weight of the clip loss (0: train the per-frame head only).
        frame_weight: Weight of the per-frame loss (0, or data without per-frame labels: clip loss only).
        tbptt_steps: Truncated BPTT window in frames for long clips: one optimizer step per window, the state
            carried across windows (null: backpropagate through the whole clip). Needs ``bidirectional: false``
            and, with a clip loss, ``pooling: last``; ``trainer.max_steps`` then counts windows.
        log_samples: Validation clips drawn for the tracking run after each validation (0: none).
        optimizer: See :class:`pipeline.tasks.base.SequenceTask`.
        scheduler: See :class:`pipeline.tasks.base.SequenceTask`.
        clip_norm: See :class:`pipeline.tasks.base.SequenceTask`.
        max_nonfinite_steps: See :class:`pipeline.tasks.base.SequenceTask`.
        ema_decay: See :class:`pipeline.tasks.base.SequenceTask`.
    """

    def __init__(
        self,
        network: nn.Module,
        clip_weight: float = 1.0,
        frame_weight: float = 1.0,
        tbptt_steps: int | None = None,
        log_samples: int = 4,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        clip_norm: float | None = 1.0,
        max_nonfinite_steps: int = 10,
        ema_decay: float | None = None,
    ) -> None:
        super().__init__(
            optimizer,
            scheduler,
            clip_norm,
            max_nonfinite_steps,
            tbptt_steps,
            carry_state=False,
            ema_decay=ema_decay,
        )
        if clip_weight <= 0 and (frame_weight <= 0 or network.frame_head is None):
            raise ValueError(
                "model.clip_weight and model.frame_weight leave no loss: give one of them a weight > 0."
            )
        if tbptt_steps is not None:
            if tbptt_steps < 1:
                raise ValueError(f"model.tbptt_steps is {tbptt_steps}; set it to 1 or more frames, or null.")
            if network.rnn.bidirectional:
                raise ValueError(
                    "model.tbptt_steps needs model.network.bidirectional: false (a backward pass over the future "
                    "cannot be truncated); set it, or tbptt_steps: null."
                )
            if clip_weight > 0 and network.pooling != "last":
                raise ValueError(
                    f"model.tbptt_steps with a clip loss needs model.network.pooling: last, not "
                    f"{network.pooling} (a window cannot pool over frames it does not see); set it, or "
                    f"tbptt_steps: null."
                )
        self.network = network
        self.clip_weight, self.frame_weight = clip_weight, frame_weight
        self.log_samples = log_samples
        k, kf = (
            network.head.out_features,
            network.frame_head.out_features if network.frame_head is not None else 0,
        )
        self.val_acc = MulticlassAccuracy(k, average="micro")
        self.train_accuracy_names = ("train/acc", "train/frame_acc") if kf else ("train/acc",)
        if kf:
            self.val_frame_acc = MulticlassAccuracy(kf, average="micro", ignore_index=IGNORE)
        self.confusion = MulticlassConfusionMatrix(k)
        self._samples: list[dict] = []
        self._batch_start: float | None = None
        self._batch_end: float | None = None
        self._window_logits: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]] = []

    def forward(self, frames: torch.Tensor, lengths: torch.Tensor):
        return self.network(frames, lengths)

    def losses(
        self, batch: dict
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(total loss, clip logits, frame logits, frame labels) of one batch."""
        clip, frame = self(batch["frames"], batch["lengths"])  # (B, K), (B, T, K_frame) or None
        loss = self.clip_weight * F.cross_entropy(clip, batch["labels"]) if self.clip_weight > 0 else 0.0
        frame_labels = batch.get("frame_labels")  # (B, T), IGNORE at padded frames
        if frame is not None and frame_labels is not None and self.frame_weight > 0:
            loss = loss + self.frame_weight * F.cross_entropy(
                frame.reshape(-1, frame.size(-1)), frame_labels.reshape(-1), ignore_index=IGNORE
            )
        return loss, clip, frame, frame_labels

    # --- training: the shared truncated-BPTT loop, one window of frames at a time ----------------------------
    def time_steps(self, batch: dict) -> int:
        return batch["frames"].size(1)  # T

    def batch_size_of(self, batch: dict) -> int:
        return batch["frames"].size(0)  # B

    def window_loss(self, batch: dict, window: slice, state: State | None) -> tuple[torch.Tensor, State]:
        lengths = batch["lengths"].to(batch["frames"].device)  # (B,)
        # (B,) real frames of each clip inside the window: 0 for a clip that already ended
        inside = (lengths - window.start).clamp(0, window.stop - window.start)
        out, state = self.network.run_window(batch["frames"][:, window], inside, state)  # (B, t, D*H)
        loss = out.new_zeros(())
        ends = ((lengths > window.start) & (lengths <= window.stop)).nonzero().squeeze(1)  # clips ending here
        clip = None
        if len(ends):  # (E, K); the loss only with a clip weight, the logits for train/acc either way
            h = tuple(s.index_select(1, ends) for s in state) if isinstance(state, tuple) else state[:, ends]
            clip = self.network.clip_logits(out[ends], inside[ends], h)
            if self.clip_weight > 0:
                ce = F.cross_entropy(clip, batch["labels"][ends], reduction="sum") / len(lengths)
                loss = loss + self.clip_weight * ce
        frame, frame_labels = self.network.frame_logits(out), batch.get("frame_labels")  # (B, t, K_frame)
        if frame is not None and frame_labels is not None and self.frame_weight > 0:
            labels = frame_labels[:, window]  # (B, t), IGNORE at padded frames
            if bool((labels != IGNORE).any()):
                ce = F.cross_entropy(frame.flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
                loss = loss + self.frame_weight * ce
        self._window_logits.append(
            (ends, None if clip is None else clip.detach(), None if frame is None else frame.detach())
        )
        return loss, state

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self._window_logits = []
        loss = super().training_step(batch, batch_idx) * batch["weight"]  # steps once per window
        windows, self._window_logits = self._window_logits, []
        n = len(batch["labels"])
        if batch["weight"]:
            # clip logits (B, K) in the order of rows, each from the window its clip ends in
            rows = torch.cat([ends for ends, _, _ in windows])
            clip = torch.cat([c for _, c, _ in windows if c is not None])
            # calling the metrics and self.log on every batch cost ~3% of a step against the plain loop (roofline.py)
            self.log_train_accuracy("train/acc", clip, batch["labels"][rows])
            frame_labels = batch.get("frame_labels")
            if windows[0][2] is not None and frame_labels is not None:
                frame = torch.cat([f for _, _, f in windows], dim=1)  # (B, T, K_frame)
                self.log_train_accuracy(
                    "train/frame_acc", frame.flatten(0, 1), frame_labels.flatten(), IGNORE
                )
        self.log_train_loss(loss, n)
        if batch.get("decode_s") and self.logging_step():
            self.log(
                "data/decode_fps_step",
                batch["decoded"] / batch["decode_s"],
                on_step=True,
                on_epoch=False,
                batch_size=n,
            )
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss, clip, frame, frame_labels = self.losses(batch)
        n = len(batch["labels"])
        self.val_acc(clip, batch["labels"])
        self.confusion.update(clip, batch["labels"])
        self.log("val_loss", loss, on_epoch=True, sync_dist=True, batch_size=n, prog_bar=True)
        self.log("val_acc", self.val_acc, on_epoch=True, batch_size=n, prog_bar=True)
        if frame is not None and frame_labels is not None:
            self.val_frame_acc(frame.flatten(0, 1), frame_labels.flatten())
            self.log("val_frame_acc", self.val_frame_acc, on_epoch=True, batch_size=n, prog_bar=True)
        if len(self._samples) < self.log_samples and self._wandb() is not None:
            self._keep_samples(batch, clip, frame)

    # --- timing: decoding throughput and the loader's share of a step ----------------------------------------
    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        self._batch_start = time.perf_counter()

    def on_train_batch_end(self, outputs, batch: dict, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        now = time.perf_counter()
        if self._batch_end is not None and self._batch_start is not None:
            wait, compute = self._batch_start - self._batch_end, now - self._batch_start
            n = len(batch["labels"])
            if self.logging_step():
                self.log(
                    "train/loader_share_step", wait / max(wait + compute, 1e-9), on_step=True, on_epoch=False,
                    batch_size=n,
                )  # fmt: skip
                self.log(
                    "train/frames_per_s", batch["n_frames"] / max(wait + compute, 1e-9), on_step=True,
                    on_epoch=False, batch_size=n,
                )  # fmt: skip
        self._batch_end = now

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        self._batch_end = None

    # --- pictures for the tracking run ------------------------------------------------------------------------
    def _wandb(self) -> WandbLogger | None:
        return next((lg for lg in self.loggers if isinstance(lg, WandbLogger)), None)

    def _keep_samples(self, batch: dict, clip: torch.Tensor, frame: torch.Tensor | None) -> None:
        dm = self.trainer.datamodule
        for i in range(min(self.log_samples - len(self._samples), len(batch["labels"]))):
            t = int(batch["lengths"][i])
            sample = {
                "frames": dm.denormalize(batch["frames"][i, :t]),
                "true": dm.labels[int(batch["labels"][i])],
                "pred": dm.labels[int(clip[i].argmax())],
            }
            if frame is not None and "frame_labels" in batch:
                names = dm.frame_label_names
                sample["frame_true"] = [names[int(j)] for j in batch["frame_labels"][i, :t]]
                sample["frame_pred"] = [names[int(j)] for j in frame[i, :t].argmax(-1)]
            self._samples.append(sample)

    def on_validation_epoch_end(self) -> None:
        matrix = self.confusion.compute().cpu().numpy()
        self.confusion.reset()
        samples, self._samples = self._samples, []
        if self.trainer.sanity_checking:
            return
        self._log_pictures(matrix, samples)

    @rank_zero_only
    def _log_pictures(self, matrix: np.ndarray, samples: list[dict]) -> None:
        logger = self._wandb()
        if logger is None:
            return
        import wandb

        labels = self.trainer.datamodule.labels
        media: dict = {"val/confusion": wandb.Image(video_media.confusion_image(matrix, labels))}
        folder = Path(logger.save_dir or os.environ.get("PIPELINE_RUN_DIR", ".")) / "samples"
        images, videos = [], []
        for i, s in enumerate(samples):
            caption = f"true {s['true']} / predicted {s['pred']}"
            if s["frames"].ndim == 2:  # a feature clip (T, F)
                images.append(
                    wandb.Image(video_media.feature_image(s["frames"], s["true"], s["pred"]), caption=caption)
                )
                continue
            frames = video_media.annotated_frames(
                s["frames"], s["true"], s["pred"], s.get("frame_true"), s.get("frame_pred")
            )
            images.append(wandb.Image(video_media.filmstrip(frames), caption=caption))
            gif = video_media.save_gif(frames, folder / f"step{self.global_step:06d}_{i}.gif")
            videos.append(wandb.Video(str(gif), caption=caption, format="gif"))
        if images:
            media["val/clips"] = images
        if videos:
            media["val/clip_gifs"] = videos
        logger.experiment.log(media | {"trainer/global_step": self.global_step})

    @torch.no_grad()
    def predict_lines(self, lines: list[str], datamodule) -> list[str]:
        """One line per video file: ``<clip label>\\t<probability>[\\t<per-frame labels>]``."""
        self.eval()
        out = []
        for path in lines:
            frames, lengths = datamodule.load_clip(path.strip())
            clip, frame = self(frames.to(self.device), lengths)
            p, i = clip.softmax(-1)[0].max(0)
            line = f"{datamodule.labels[int(i)]}\t{p.item():.4f}"
            if frame is not None:
                line += "\t" + " ".join(datamodule.frame_label_names[int(j)] for j in frame[0].argmax(-1))
            out.append(line)
        return out
