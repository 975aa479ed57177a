"""Truncated backpropagation through time (TBPTT): the one implementation, for every task that needs it.

Carry the hidden state forward through the whole sequence, but backpropagate only through the last window::

    a batch (B, T), cut along time into windows of ``tbptt_steps`` (the last may be shorter):

    state_0 ──► [ window 1 ] ──► loss_1 ─► optimizer step
                      │
                      └─ state_1.detach() ──► [ window 2 ] ──► loss_2 ─► optimizer step
                                                    │
                                                    └─ state_2.detach() ──► ...
    forward reads all of the text before a window (through the state's *value*); backward stops at the window's
    start (the detached state has no graph), so memory and time per step stay flat however long the sequence.

- ``carry_state=True``: the state after a batch's last window is where the next batch starts. That is right when
  consecutive batches continue the same streams (:mod:`pipeline.data.windows`, the language model); the state is
  reset to zeros where the streams begin (``batch["reset"]``, or the first batch of an epoch), travels in checkpoints
  (all ranks' states) so that a resumed run continues exactly, and is reset when a batch has another batch size.
- ``carry_state=False``: every batch starts from zeros (independent clips: the video task, with long clips cut into
  windows by ``tbptt_steps``).

Windows are made with fixed-length slices, not ``tensor_split(n)`` (which makes n chunks, not chunks of n steps).

Step counting, so that users can reason about it:

- ``trainer.global_step`` counts optimizer steps taken = windows (a step skipped as non-finite is not counted);
  ``trainer.max_steps`` is in the same unit. It is checked between batches, so with k windows per batch a run stops
  within k - 1 steps after max_steps. ModelCheckpoint's ``every_n_train_steps`` also counts optimizer steps (make it a
  multiple of k).
- The x-axis of logged curves (W&B ``trainer/global_step``) and ``val_check_interval`` count *batches*: each batch's
  ``train/*`` values are the means over its windows. With one window per batch (the LM: its loader already cuts
  ``bptt`` windows, ``tbptt_steps: null``) batches, windows and optimizer steps are the same count.
  ``train/optimizer_steps`` is logged for plotting against optimizer steps when they differ.
- Gradients are clipped per window (``clip_norm``) and the scheduler steps once per window, in
  :meth:`pipeline.tasks.base.SequenceTask.optimizer_step_on`.
- Under DDP every rank must cut its batch into the same number of windows (each window's step all-reduces
  gradients); :meth:`TBPTTTask.check_ranks_agree` stops with a sentence when they would not, rather than hang.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable

from pipeline.models.recurrent import State, detach_state
from pipeline.tasks.base import SequenceTask

WindowFn = Callable[[slice, State | None], tuple[torch.Tensor, State]]


def windows(length: int, size: int | None) -> list[slice]:
    """Slices of ``size`` steps covering ``range(length)``; the last one may be shorter. None: one window."""
    if not size or size >= length:
        return [slice(0, length)]
    return [slice(start, min(start + size, length)) for start in range(0, length, size)]


def truncated_bptt(
    window_fn: WindowFn,
    length: int,
    size: int | None,
    state: State | None,
    on_loss: Callable[[torch.Tensor, slice], bool],
) -> State | None:
    """Run ``window_fn(window, state) -> (loss, state)`` over the windows, handing each loss to ``on_loss`` (which
    backpropagates and steps) and detaching the state before the next window. ``on_loss`` returns False when it did
    not take the step (non-finite); the state that produced that loss is then dropped (zeros from here on).
    Returns the final (detached) state.
    """
    for window in windows(length, size):
        loss, state = window_fn(window, state)
        stepped = on_loss(loss, window)
        state = detach_state(state) if stepped else None
    return state


def state_batch_size(state: State | None) -> int | None:
    if state is None:
        return None
    return (state[0] if isinstance(state, tuple) else state).size(1)  # (L, B, H)


class TBPTTTask(SequenceTask):
    """Base for tasks trained with truncated BPTT: subclasses implement :meth:`window_loss`.

    Args:
        optimizer: See :class:`pipeline.tasks.base.SequenceTask`.
        scheduler: See :class:`pipeline.tasks.base.SequenceTask` (stepped once per window).
        clip_norm: See :class:`pipeline.tasks.base.SequenceTask` (applied per window).
        max_nonfinite_steps: See :class:`pipeline.tasks.base.SequenceTask`.
        tbptt_steps: Window length in time steps: each batch of T steps makes ceil(T / tbptt_steps) optimizer steps.
            null: the whole batch is one window (its time length is then the truncation length).
        carry_state: Start each batch from the state the previous batch ended with (contiguous streams); False:
            from zeros (independent sequences).
        ema_decay: See :class:`pipeline.tasks.base.SequenceTask`.
    """

    def __init__(
        self,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        clip_norm: float | None = 1.0,
        max_nonfinite_steps: int = 10,
        tbptt_steps: int | None = None,
        carry_state: bool = True,
        ema_decay: float | None = None,
    ) -> None:
        super().__init__(optimizer, scheduler, clip_norm, max_nonfinite_steps, ema_decay)
        self.tbptt_steps, self.carry_state = tbptt_steps, carry_state
        self.train_state: State | None = None  # carried from batch to batch (detached)
        self.val_state: State | None = None  # the same for the validation streams

    # --- what subclasses provide ------------------------------------------------------------------------------
    def window_loss(self, batch: dict, window: slice, state: State | None) -> tuple[torch.Tensor, State]:
        """The mean loss over the window's time steps ``batch[...][:, window]`` and the state after them."""
        raise NotImplementedError

    def time_steps(self, batch: dict) -> int:
        """T, the batch's length in time steps (override when the batch has no ``tokens`` (B, T, ...))."""
        return batch["tokens"].size(1)

    def batch_size_of(self, batch: dict) -> int:
        """B, the number of sequences the batch holds (override like :meth:`time_steps`)."""
        return batch["tokens"].size(0)

    # --- the training step ------------------------------------------------------------------------------------
    def starts_streams(self, batch: dict) -> bool:
        position = batch.get("position")
        return bool(batch.get("reset", position is not None and position[1] == 1))

    def start_state(self, batch: dict, carried: State | None) -> State | None:
        """The state a batch starts from: the carried one, unless the streams begin here or the batch size changed."""
        if not self.carry_state or carried is None or self.starts_streams(batch):
            return None
        return carried if state_batch_size(carried) == self.batch_size_of(batch) else None

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        losses: list[tuple[torch.Tensor, int]] = []

        def on_loss(loss: torch.Tensor, window: slice) -> bool:
            losses.append((loss.detach(), window.stop - window.start))
            return self.optimizer_step_on(loss * batch["weight"])

        length = self.time_steps(batch)
        self.check_ranks_agree(length)
        state = truncated_bptt(
            lambda window, state: self.window_loss(batch, window, state),
            length,
            self.tbptt_steps,
            self.start_state(batch, self.train_state),
            on_loss,
        )
        self.train_state = state if self.carry_state else None
        if len(losses) > 1 and self.logging_step():
            self.log("train/optimizer_steps", float(self.trainer.global_step), on_step=True, on_epoch=False)
        steps = sum(n for _, n in losses)
        return sum(loss * n for loss, n in losses) / steps  # mean over the batch's time steps

    def check_ranks_agree(self, length: int) -> None:
        """Under DDP every rank must take the same number of optimizer steps per batch: each step all-reduces the
        gradients, so a rank with one window more would wait forever for the others. Batches of different lengths
        in time (clips of any length without a fixed frame count) would do that; stop with a sentence instead."""
        if self.trainer.world_size < 2 or not self.tbptt_steps:
            return
        n = torch.tensor([len(windows(length, self.tbptt_steps))], device=self.device)
        counts = self.all_gather(n).flatten().tolist()  # (world,)
        if min(counts) != max(counts):
            raise ValueError(
                f"DDP ranks got batches of different lengths in time ({min(counts)} to {max(counts)} windows of "
                f"{self.tbptt_steps} steps), so they would take different numbers of optimizer steps and wait on "
                f"each other forever; give every sequence the same length (e.g. data.num_frames with sampling: "
                f"uniform) or set model.tbptt_steps: null."
            )

    def on_validation_epoch_start(self) -> None:
        self.val_state = None

    # --- the carried state travels in checkpoints -------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        state = self.train_state
        if self.carry_state and state is not None:
            if self.trainer.world_size > 1:  # every rank carries its own streams: keep them all, (W, L, B, H)
                state = self.all_gather(state)
            else:
                state = (
                    tuple(s.unsqueeze(0) for s in state) if isinstance(state, tuple) else state.unsqueeze(0)
                )
            state = tuple(s.cpu() for s in state) if isinstance(state, tuple) else state.cpu()
        checkpoint["tbptt_state"] = state if self.carry_state else None

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("tbptt_state")
        if state is None:
            self.train_state = None
            return
        rank, world = (self.global_rank, self.trainer.world_size) if self._trainer is not None else (0, 1)
        saved_world = (state[0] if isinstance(state, tuple) else state).size(0)
        if saved_world != world:  # another number of processes lays the streams out anew: start from zeros
            self.train_state = None
            return
        mine = [s[rank].to(self.device) for s in (state if isinstance(state, tuple) else (state,))]
        self.train_state = tuple(mine) if isinstance(state, tuple) else mine[0]
