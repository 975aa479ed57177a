"""Exact resume: the data position, the randomness, and the tracking run id travel in every checkpoint.

What makes a resumed run bit-identical to an uninterrupted one:

- model, optimizer, scheduler and loop counters: Lightning's checkpoint;
- the data position: ``(epoch, batches consumed in the epoch)``, the same on every rank (they consume in lockstep),
  plus ``data``: every rank's loader state after that batch (per DataLoader worker: where its shuffle buffer began and
  ended, and how many of its batches were consumed; see :mod:`pipeline.data.stream`). Only rank 0 writes the
  checkpoint, so the states are gathered from all ranks when it is written. A resumed loader seeks there and re-reads
  one buffer instead of producing the epoch's consumed batches again, also on another number of ranks or workers
  (:mod:`pipeline.data.elastic`). A run that stops itself mid-epoch (``max_steps``, ``max_time``) keeps its position:
  Lightning runs the epoch-end hooks then, but the epoch is not over;
- randomness: before every training batch the torch RNG is reseeded from ``(seed, epoch, batch, rank)``, so dropout
  masks do not depend on how many batches ran in this process. The RNG states (torch, numpy, python) are stored too,
  for inspection;
- the W&B run id, so that tracking continues the same run;
- with more than 2 DDP ranks, the order in which gradients are summed: see :func:`fix_bucket_order`.
"""

from __future__ import annotations

import random

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


def reseed(seed: int) -> None:
    """``torch.manual_seed`` for the generators training draws from. torch.manual_seed itself also queues lazy CUDA,
    MTIA and XPU seeding when they are not initialized, each call formatting a Python stack trace: about a
    millisecond per batch on a CPU machine, for nothing. CPU results are the same (it seeds the same generator)."""
    torch.default_generator.manual_seed(seed)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.manual_seed_all(seed)


def fix_bucket_order(model: object, world_size: int) -> str | None:
    """Put a DDP model's gradient buckets in parameter order now, before its first step, instead of letting DDP
    re-order them after that step; returns the start line that says so, or None where nothing was needed.

    Why: DDP all-reduces gradients in flat buckets. Its first step packs them all into one, in parameter order; after that
    step DDP rebuilds it in the order the gradients became ready. The all-reduce sums an element starting from a rank
    that depends on the element's offset in the bucket, so the two layouts sum each gradient in different orders. An
    uninterrupted run uses the rebuilt layout at step N, a run resumed at step N starts over with the first one:
    with 4 ranks its step-N gradients were 1 ulp apart (2 nodes x 2 tasks: final weights 3e-8 to 2.4e-7 apart). With
    2 ranks there is only one sum, a+b = b+a, so nothing is done. Queuing every parameter for the rebuild makes DDP
    rebuild once, at the first forward of every run, in parameter order, and never again (what torch's own
    ``Join`` hook does). Cost: buckets are not re-ordered to gradient-ready order, so a model of several buckets
    starts its all-reduces later in the backward pass; under 1 MB of gradients there is one bucket either way.
    """
    if world_size <= 2 or not isinstance(model, DistributedDataParallel):
        return None
    # a private torch API (torch's Join hook calls it); a torch without it gets the old behaviour, said in the line
    push = getattr(model.reducer, "_push_all_rebuilt_params", None)
    if push is None:
        return (
            f"DDP with {world_size} ranks: this torch cannot fix the gradient bucket order, so a resumed run may "
            "differ from an uninterrupted one in the last bits of its weights"
        )
    push()
    return (
        f"DDP with {world_size} ranks: gradient buckets in parameter order from the first step, so a resumed run "
        "sums gradients in the same order as an uninterrupted one"
    )


class ResumeState(pl.Callback):
    """Records the data position after each consumed batch; hands it to the DataModule on resume.

    Args:
        seed: Base of the per-batch reseeding (the CLI passes ``seed_everything``).
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.position: tuple[int, int] = (0, 0)  # (epoch, batches consumed in it)
        self.data_state: dict | None = None  # this rank's data loader state at that point (see data.stream)
        self.wandb_id: str | None = None
        self._group = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the strategy has wrapped the model by now, and no forward pass with gradients has run yet
        line = fix_bucket_order(trainer.strategy.model, trainer.world_size)
        if line:
            from pipeline.cli import say  # at call time: pipeline.cli imports this module

            say(line)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: dict, batch_idx: int
    ) -> None:
        epoch, index = batch.get("position", (trainer.current_epoch, batch_idx + 1))
        reseed(hash((self.seed, epoch, index, trainer.global_rank)) % (2**63))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch: dict, batch_idx: int) -> None:
        self.position = tuple(batch.get("position", (trainer.current_epoch, batch_idx + 1)))
        self.data_state = batch.get("data_state")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning runs the epoch-end hooks also when max_steps / max_time / should_stop ends training mid-epoch;
        # only an epoch whose data ran out is over, otherwise the position stays where training stopped
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch or self.position[1] == 0:
            self.position = (trainer.current_epoch + 1, 0)
            self.data_state = None

    def _gathered_data(self) -> dict | None:
        """Every rank's data state (only rank 0 writes the checkpoint, but every rank calls ``state_dict``)."""
        states = [self.data_state]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            if self._group is None:
                self._group = dist.new_group(backend="gloo")
            states = [None] * dist.get_world_size()
            dist.all_gather_object(states, self.data_state, group=self._group)
        if any(s is None for s in states):
            return None
        return {"layout": [len(states), len(states[0]["workers"])], "ranks": states}

    def state_dict(self) -> dict:
        return {
            "epoch": int(self.position[0]),
            "consumed": int(self.position[1]),
            "data": self._gathered_data(),
            "seed": self.seed,
            "wandb_id": self.wandb_id,
            "rng_torch": torch.get_rng_state(),
            "rng_numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
            "rng_python": list(random.getstate()[1]),
        }

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict
    ) -> None:
        state = checkpoint.get("callbacks", {}).get(self.state_key)
        if state is None:
            return
        self.position = (state["epoch"], state["consumed"])
        if self.position[1] == 0:
            self._finish_saved_epoch(checkpoint)
        elif self._reopen_stopped_epoch(checkpoint):
            pass
        elif self._finish_last_batch(checkpoint):
            self.position = (self.position[0] + 1, 0)
        if trainer.datamodule is not None:
            trainer.datamodule.resume_at = self.position
            if self.position[1] and hasattr(trainer.datamodule, "resume_data"):
                trainer.datamodule.resume_data = state.get("data")
        torch.set_rng_state(state["rng_torch"])

    @staticmethod
    def _finish_saved_epoch(checkpoint: dict) -> None:
        """A checkpoint written in ``on_train_epoch_end`` holds an epoch that is processed but not yet "completed";
        Lightning 2.6 restores it as "restarted on epoch end" and runs that epoch's loop again over a fresh iterator
        (with the old epoch number, so the old shuffle). Mark the epoch completed, so the resumed run starts the next
        epoch exactly as the uninterrupted run did."""
        loops = checkpoint.get("loops", {}).get("fit_loop")
        if not loops:
            return
        progress = loops["epoch_progress"]
        total = progress["total"]
        if total["started"] == total["ready"] and total["processed"] == total["completed"] + 1:
            for part in ("total", "current"):
                progress[part]["completed"] = progress[part]["processed"]
            batches = loops["epoch_loop.batch_progress"]
            batches["current"] = dict.fromkeys(batches["current"], 0)
            batches["is_last_batch"] = False

    @staticmethod
    def _reopen_stopped_epoch(checkpoint: dict) -> bool:
        """A checkpoint written after training stopped mid-epoch (``max_steps``, ``max_time``): Lightning has run the
        epoch-end hooks and counts the epoch as completed, so it would resume in the next epoch and skip the rest of
        this one. Restore it as the checkpoint of that epoch's last trained batch instead (the state a checkpoint
        written in ``on_train_batch_end`` has), so the continued run trains the rest of the epoch."""
        loops = checkpoint.get("loops", {}).get("fit_loop")
        if not loops or loops["epoch_loop.batch_progress"].get("is_last_batch"):
            return False
        progress = loops["epoch_progress"]
        if progress["total"]["completed"] != progress["total"]["started"]:
            return False  # the epoch is open: an ordinary mid-epoch checkpoint
        for part in ("total", "current"):
            progress[part]["processed"] = progress[part]["completed"] = progress[part]["started"] - 1
        batches = loops["epoch_loop.batch_progress"]
        for part in ("total", "current"):
            batches[part]["completed"] = batches[part]["processed"] - 1
        return True

    @staticmethod
    def _finish_last_batch(checkpoint: dict) -> bool:
        """A checkpoint written after an epoch's last batch (``is_last_batch``): Lightning 2.6 restores it into an
        epoch that ends at once and then moves one epoch too far. Restore it as "that epoch is over" instead, the state
        the uninterrupted run is in when the next epoch starts (the skipped epoch-end hooks change no weights)."""
        loops = checkpoint.get("loops", {}).get("fit_loop")
        if not loops or not loops["epoch_loop.batch_progress"].get("is_last_batch"):
            return False
        progress = loops["epoch_progress"]
        for part in ("total", "current"):
            progress[part]["processed"] = progress[part]["completed"] = progress[part]["started"]
        batches = loops["epoch_loop.batch_progress"]
        batches["total"]["completed"] = batches["total"]["processed"]
        batches["current"] = dict.fromkeys(batches["current"], 0)
        batches["is_last_batch"] = False
        return True
