"""From a streaming dataset to the batches a Trainer consumes, with a position that can be saved and restored.

How the stream is laid out per rank and DataLoader worker (W ranks, K workers each)::

    source stream (datasets.IterableDataset, shuffled with seed, re-shuffled each epoch by set_epoch)
        │  split_dataset_by_node(node = rank*K + worker, nodes = W*K)   every (rank, worker) is a "node":
        ▼                                                               disjoint examples, together the epoch
    rank r, worker k:  encode (tokenize, validate, count faults) ─► bucket in a shuffle buffer ─► collate
        │   rng = Random((seed, epoch, node)): the batches of an epoch are a pure function of the config
        ▼
    DataLoader (worker 0, 1, ..., K-1, 0, 1, ... round robin)            one process per rank
        ▼
    StreamLoader.__iter__ ─► equalize ─► skip ─► tag position ─► Trainer
         equalize: one all_reduce(MAX) of "I still have a batch" per step; a rank that ran out yields a copy of
                   its last batch with weight 0 until every rank is out, so all ranks step the same number of
                   times (no hang at an uneven end) and no example is dropped (fairseq pads its shards alike).
         skip:     on resume, the first ``consumed`` batches of the epoch are produced again and thrown away,
                   which restores every worker's position (and the round-robin phase) exactly.

Because everything above is deterministic, the data position of every rank and worker is the pair
``(epoch, batches consumed in the epoch)``, the same on every rank; that pair is what checkpoints store.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable, Iterator
from typing import Any

import datasets
import torch
import torch.distributed as dist
from datasets.distributed import split_dataset_by_node
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline.data.batching import bucket_batches
from pipeline.data.faults import DataError, FaultCounter, merge_counts

_INTERLEAVES_SHARDS = (
    "max_buffer_input_shards" in inspect.signature(datasets.IterableDataset.shuffle).parameters
)

Encode = Callable[
    [dict, FaultCounter], Any
]  # record -> example, or None when the record was skipped (and counted)
Collate = Callable[[list], dict]


class BatchStream(IterableDataset):
    """The worker side: read this worker's share of the stream, encode, bucket and collate it.

    Batches are dicts; besides the task's tensors they carry ``ids`` (the ``_where`` of each example), ``worker``
    and ``faults`` (this worker's cumulative skip counts), which the StreamLoader strips off.
    """

    def __init__(
        self,
        dataset: datasets.IterableDataset,
        encode: Encode,
        collate: Collate,
        length: Callable[[Any], int],
        batch_size: int | None,
        max_tokens: int | None,
        buffer_size: int,
        shuffle: bool,
        seed: int,
    ) -> None:
        self.dataset, self.encode, self.collate, self.length = dataset, encode, collate, length
        self.batch_size, self.max_tokens, self.buffer_size = batch_size, max_tokens, buffer_size
        self.shuffle, self.seed = shuffle, seed
        self.epoch, self.rank, self.world = 0, 0, 1

    def examples(self) -> Iterator[tuple[Any, str]]:
        """This worker's encoded examples with their ids (faulty records are counted in ``self.faults``)."""
        info = get_worker_info()
        k, n_workers = (info.id, info.num_workers) if info else (0, 1)
        ds = self.dataset
        if self.shuffle:
            # datasets >= 5 feeds the buffer from up to 10 shards at once through a thread pool, one future per
            # example (~50 us each); with a single shard (one file) there is nothing to interleave
            extra = {"max_buffer_input_shards": 1} if ds.num_shards == 1 and _INTERLEAVES_SHARDS else {}
            ds = ds.shuffle(seed=self.seed, buffer_size=self.buffer_size, **extra)
            ds.set_epoch(self.epoch)
        nodes = self.world * n_workers
        if nodes > 1:
            ds = split_dataset_by_node(ds, rank=self.rank * n_workers + k, world_size=nodes)
        # .iter() bypasses datasets' own per-worker sharding (which idles workers when there are fewer shards
        # than workers); we already split by (rank, worker) above.
        for chunk in ds.iter(batch_size=256):
            for i, where in enumerate(chunk["_where"]):
                fault = chunk["_fault"][i]
                if fault:
                    self.faults.skip(fault, where)
                    continue
                example = self.encode({key: col[i] for key, col in chunk.items()}, self.faults)
                if example is not None:
                    yield example, where

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        k, n_workers = (info.id, info.num_workers) if info else (0, 1)
        self.faults = FaultCounter()
        rng = random.Random(f"{self.seed}/{self.epoch}/{self.rank * n_workers + k}")
        pairs = bucket_batches(
            self.examples(),
            length=lambda pair: self.length(pair[0]),
            rng=rng,
            buffer_size=self.buffer_size,
            batch_size=self.batch_size,
            max_tokens=self.max_tokens,
            shuffle=self.shuffle,
        )
        for group in pairs:
            batch = self.collate([example for example, _ in group])
            batch["ids"] = [where for _, where in group]
            batch["worker"] = k
            batch["faults"] = self.faults.snapshot()
            yield batch
        # a final, empty report so that faults after the last batch are counted too
        yield {"ids": [], "worker": k, "faults": self.faults.snapshot(), "empty": True}


class StreamLoader:
    """The main-process side: a re-iterable over one epoch of batches, given to the Trainer as a dataloader.

    Args:
        stream: The worker-side BatchStream.
        num_workers: DataLoader worker processes (0: read in the main process).
        epoch_fn: Returns the epoch about to be iterated (the Trainer's ``current_epoch``).
        train: Training loaders equalize across ranks and honour the resume position; validation loaders do not.
    """

    def __init__(
        self, stream: BatchStream, num_workers: int, epoch_fn: Callable[[], int], train: bool
    ) -> None:
        self.stream, self.num_workers, self.epoch_fn, self.train = stream, num_workers, epoch_fn, train
        self.resume_at: tuple[int, int] | None = None  # (epoch, batches already consumed in it)
        self.fault_counts: dict[str, int] = {}
        self.examples_seen = 0
        self._group = None

    def _rank_world(self) -> tuple[int, int]:
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def _any_rank_has(self, has_batch: bool) -> bool:
        if self._group is None:
            self._group = dist.new_group(backend="gloo")  # CPU side channel, also when training runs on NCCL
        flag = torch.tensor([int(has_batch)])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
        return bool(flag.item())

    def _batches(self) -> Iterator[dict]:
        """This rank's batches of the epoch, fault reports folded into ``fault_counts``."""
        loader = DataLoader(
            self.stream,
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=False,
            multiprocessing_context="fork" if self.num_workers else None,
        )
        per_worker: dict[int, dict[str, int]] = {}
        for batch in loader:
            per_worker[batch.pop("worker")] = batch.pop("faults")
            self.fault_counts = merge_counts(per_worker)
            if not batch.pop("empty", False):
                yield batch

    def _no_batches(self, epoch: int) -> None:
        skipped = ", ".join(f"{k}={v}" for k, v in sorted(self.fault_counts.items())) or "none"
        raise DataError(
            f"the training data gave no examples in epoch {epoch} (skipped inputs: {skipped}); check the data files "
            f"and the column/label settings."
        )

    def __iter__(self) -> Iterator[dict]:
        epoch = self.epoch_fn()
        rank, world = self._rank_world()
        self.stream.epoch, self.stream.rank, self.stream.world = epoch, rank, world
        skip = self.resume_at[1] if self.resume_at and self.resume_at[0] == epoch else 0
        self.resume_at = None
        source = self._batches()
        last = None
        index = 0
        while True:
            batch = next(source, None)
            if self.train and world > 1:
                if not self._any_rank_has(batch is not None):
                    break
                if batch is None:  # this rank ran out first: a zero-weight copy keeps the ranks in step
                    if last is None:
                        raise DataError(
                            f"rank {rank} received no training examples in epoch {epoch}; the training data is "
                            f"smaller than the number of processes x workers: use fewer devices or workers."
                        )
                    batch = {**last, "weight": 0.0, "ids": []}
            elif batch is None:
                if last is None and self.train:
                    self._no_batches(epoch)
                break
            last = batch
            index += 1
            if index <= skip:
                continue
            batch.setdefault("weight", 1.0)
            batch["position"] = (epoch, index)
            self.examples_seen += len(batch["ids"])
            yield batch
