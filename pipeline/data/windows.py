"""One long token stream -> B parallel contiguous streams per rank -> windows of ``bptt`` steps (batches).

The layout pytorch/examples ``word_language_model`` calls *batchify*, made DDP- and resume-aware::

    ids (N,)  ──drop `offset` tokens (train: random in [0, bptt) per epoch, same on every rank)──►
    (W*B, L) rows, each a contiguous piece of the text, in reading order:

        rank 0 ┌ row 0    t0 t1 t2 ............ t(L-1)     <- text[offset        : offset +   L]
               └ row B-1  ...
        rank 1 ┌ row B    ...                             <- each rank owns its own contiguous segments
               └ ...
    each rank's (B, L) block is cut along time into windows of bptt steps:

               |── window 1 ──|── window 2 ──|── ... ──|── window n ──|  (leftover < bptt: unused this epoch)
        batch k: tokens  = rows[:, s : s+bptt]        (B, T)   s = (k-1)*bptt
                 targets = rows[:, s+1 : s+bptt+1]    (B, T)   the next token of every position

Batch k+1 continues exactly where batch k stopped in every row, so a hidden state carried from batch to batch
(:mod:`pipeline.tasks.tbptt`) has read all the text before it. Every rank yields the same number of batches of the
same shape (B, bptt), so the carried state always fits and no rank waits for another.

Training layouts reserve ``bptt`` tokens for the offset, so the number of windows is the same every epoch; the tokens
that do not fill a whole window (at most W*B*(bptt+1) + bptt per epoch; which ones moves with the offset) are
reported by :meth:`WindowLoader.unused`. Validation layouts use offset 0 and end with one shorter window, so nearly
every token is scored.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist

from pipeline.data.faults import DataError


def rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def layout(ids: torch.Tensor, n_rows: int, offset: int = 0, reserve: int = 0) -> torch.Tensor:
    """``ids`` (N,) -> (n_rows, L) contiguous rows, ``L = (N - reserve) // n_rows``, starting at ``offset``."""
    length = (ids.numel() - reserve) // n_rows
    return ids[offset : offset + n_rows * length].view(n_rows, length)


class WindowLoader:
    """An epoch of (B, bptt) windows of this rank's streams; re-iterable, given to the Trainer as a dataloader.

    Args:
        ids: The whole split as one token stream (N,).
        batch_size: B, parallel streams per rank.
        bptt: Window length in tokens.
        epoch_fn: Returns the epoch about to be iterated (the Trainer's ``current_epoch``).
        train: Random per-epoch offset, whole windows only, and the resume position; else offset 0 and a last,
            shorter window.
        seed: Seed of the per-epoch offset.
        count_chars: ``(tokens, targets) -> characters`` the targets cover, for bits per character; None: one
            character per token.
        name: The split, for messages.
    """

    def __init__(
        self,
        ids: torch.Tensor,
        batch_size: int,
        bptt: int,
        epoch_fn: Callable[[], int],
        train: bool,
        seed: int = 0,
        count_chars: Callable[[torch.Tensor, torch.Tensor], int] | None = None,
        name: str = "corpus",
    ) -> None:
        self.ids, self.batch_size, self.bptt = ids, batch_size, bptt
        self.epoch_fn, self.train, self.seed = epoch_fn, train, seed
        self.count_chars, self.name = count_chars, name
        self.resume_at: tuple[int, int] | None = None  # (epoch, batches already consumed in it)
        _, world = rank_world()
        n_rows = world * batch_size
        length = (ids.numel() - (bptt if train else 0)) // n_rows  # tokens per row
        shortest = bptt + 1 if train else 2
        if length < shortest:
            raise DataError(
                f"the {name} split has {ids.numel()} tokens: too few for {world} process(es) x {batch_size} streams "
                f"of at least {shortest} tokens; lower data.batch_size or data.bptt, or use more text."
            )
        self.rows_per_rank, self.row_length = batch_size, length
        # predictions per row: length - 1; train keeps whole windows only
        self.n_windows = (length - 1) // bptt if train else -(-(length - 1) // bptt)

    def offset(self, epoch: int) -> int:
        """Where this epoch's layout starts: random in [0, bptt) for training, so window edges move each epoch."""
        return random.Random(f"{self.seed}/{epoch}").randrange(self.bptt) if self.train else 0

    def rows(self, epoch: int) -> torch.Tensor:
        """This rank's (B, L) block of contiguous streams for ``epoch``."""
        rank, world = rank_world()
        grid = layout(self.ids, world * self.batch_size, self.offset(epoch), self.bptt if self.train else 0)
        return grid[rank * self.batch_size : (rank + 1) * self.batch_size]

    def unused(self) -> int:
        """Tokens of the split (all ranks) that are never a target in one epoch."""
        _, world = rank_world()
        return self.ids.numel() - world * self.batch_size * min(
            self.n_windows * self.bptt, self.row_length - 1
        )

    def __len__(self) -> int:
        return self.n_windows

    # Lightning treats a loader with state_dict/load_state_dict as resumable (no mid-epoch resume warning); the
    # position itself travels through pipeline.training.resume.ResumeState -> resume_at.
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def __iter__(self) -> Iterator[dict]:
        epoch = self.epoch_fn()
        skip = self.resume_at[1] if self.train and self.resume_at and self.resume_at[0] == epoch else 0
        self.resume_at = None
        rows = self.rows(epoch)  # (B, L), a view: windows are copied one at a time
        for k in range(skip, self.n_windows):
            start = k * self.bptt
            end = min(start + self.bptt, self.row_length - 1)
            tokens = rows[:, start:end].long()  # (B, T)
            targets = rows[:, start + 1 : end + 1].long()  # (B, T)
            n_chars = self.count_chars(tokens, targets) if self.count_chars is not None else targets.numel()
            batch = {
                "tokens": tokens,
                "targets": targets,
                "reset": k == 0,  # the streams start here: begin from a zero hidden state
                "n_tokens": targets.numel(),
                "n_chars": n_chars,
                "weight": 1.0,
            }
            if self.train:
                batch["position"] = (epoch, k + 1)  # (epoch, batches consumed once this one is done)
            yield batch
