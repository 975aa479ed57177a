"""From a sharded source to the batches a Trainer consumes, with a position that resumes without replay.

How the stream is laid out per rank and DataLoader worker (W ranks, K workers each, N = W*K "nodes")::

    source, cut into shards (byte ranges of a text file, files, parquet row groups; see pipeline.data.shards)
        │  epoch e: the shard order is shuffled with (seed, e); node n = rank*K + worker reads shards n, n+N, n+2N...
        ▼  (its "work": a list of segments (shard, from offset, to offset))
    node n:  read records into a buffer of buffer_size ─► encode the buffer (list-encode) ─► bucket, shuffle
             with the node's Random((seed, e, n)) ─► collate ─► batches, each tagged with the node's state:
                 buf = position where this buffer began, end = position after it, done j of its batches,
                 rng = the shuffle's state when the buffer began
        ▼
    StreamLoader (one per rank): takes batches from its K workers round robin (its own cursor, not the DataLoader's,
        so that a resumed rank continues the same order) ─► equalize ─► tag position + data state ─► Trainer
         equalize: one all_reduce(MAX) of "I still have a batch" per step; a rank that ran out yields a copy of
                   its last batch with weight 0 until every rank is out, so all ranks step the same number of
                   times (no hang at an uneven end) and no example is dropped (fairseq pads its shards alike).

Why this resume design (source offset + the buffer's bounds per node, rather than a whole shuffle buffer's contents
or a block shuffle with fixed blocks): the buffer is a pure function of where it began, so a checkpoint stores two
positions per (rank, worker) instead of the buffered examples, and a resumed node seeks to ``buf``, reads the one
buffer again, re-cuts the same batches from the same seeded shuffle and drops the ``done`` it had already yielded.
The work on resume is one buffer (for sources that cannot seek, gzip and datasets streams, also the shard up to
there, read but not encoded), never the epoch so far;
and the same bounds let another layout take the remaining work over exactly (see :mod:`pipeline.data.elastic`).
Unlike fixed blocks it keeps the shuffle buffer's size a free setting, independent of how the files are cut.

Checkpoints store ``(epoch, batches consumed)`` as before, plus every rank's state (gathered at save time, since
only rank 0 writes); a checkpoint without it (older runs) resumes by producing the consumed batches again.
"""

from __future__ import annotations

import random
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import datasets
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline.data.batching import flush_batches
from pipeline.data.faults import DataError, FaultCounter, merge_counts
from pipeline.data.reader import ShardReader

Encode = Callable[
    [dict, FaultCounter], Any
]  # record -> example, or None when the record was skipped (and counted)
EncodeMany = Callable[[list[dict], FaultCounter], list]  # records -> examples (None where skipped)
Collate = Callable[[list], dict]
Position = tuple  # (segment index in the node's work, offset in that segment's shard or None = its start)


def offset(value: Any) -> Any:
    """An offset as the reader yields it (states come back from DataLoader workers and checkpoints with lists)."""
    return tuple(value) if isinstance(value, list) else value


def position(value: Any) -> Position:
    return (value[0], offset(value[1]))


def rng_state(value: Any) -> tuple:
    """A ``random.Random`` state as ``getstate`` gives it (lists after a trip through a checkpoint)."""
    return (value[0], tuple(value[1]), value[2])


def segments(work: list) -> list[tuple]:
    return [(shard, offset(frm), offset(to)) for shard, frm, to in work]


def canonical_work(shards: int, seed: int, epoch: int, node: int, nodes: int, shuffle: bool) -> list[tuple]:
    """Node ``node``'s segments ``(shard, from, to)`` in an epoch: every N-th shard of the epoch's shard order."""
    order = list(range(shards))
    if shuffle:
        random.Random(f"{seed}/{epoch}/shards").shuffle(order)
    return [(i, None, None) for i in order[node::nodes]]


def _as_is(batch: dict) -> dict:
    return batch


class BatchStream(IterableDataset):
    """The worker side: read this node's share of the source, encode, bucket and collate it.

    Batches are dicts; besides the task's tensors they carry ``ids`` (the ``_where`` of each example), ``worker``,
    ``faults`` (this worker's cumulative skip counts) and ``state`` (the node's position), which the StreamLoader
    strips off. ``resume`` maps a local worker id to the state it starts from ("done": nothing left).
    """

    def __init__(
        self,
        dataset: datasets.IterableDataset | ShardReader,
        encode: Encode,
        collate: Collate,
        length: Callable[[Any], int],
        batch_size: int | None,
        max_tokens: int | None,
        buffer_size: int,
        shuffle: bool,
        seed: int,
        encode_many: EncodeMany | None = None,
    ) -> None:
        self.reader = dataset if isinstance(dataset, ShardReader) else ShardReader(None, dataset, [])
        self.encode, self.collate, self.length = encode, collate, length
        self.encode_many = encode_many or (lambda records, faults: [encode(r, faults) for r in records])
        self.batch_size, self.max_tokens, self.buffer_size = batch_size, max_tokens, buffer_size
        self.shuffle, self.seed = shuffle, seed
        self.epoch, self.rank, self.world = 0, 0, 1
        self.resume: dict[int, Any] = {}
        self.read_ahead = False

    def _records(self, shards: list, work: list, start: Position) -> Iterator[tuple[dict, Position]]:
        """The node's records from ``start`` on, each with the position after it."""
        first, offset = start
        for i in range(first, len(work)):
            shard, begin, stop = work[i]
            at = offset if i == first and offset is not None else begin
            if stop is not None and at == stop:
                continue
            for record, after in self.reader.records(shards[shard], at):
                yield record, (i, after)
                if stop is not None and after == stop:
                    break

    def _fill(
        self, records: Iterator[tuple[dict, Position]], stop: Position | None
    ) -> tuple[list[dict], Position]:
        """One buffer: ``buffer_size`` good records, or exactly the records up to ``stop`` (a resumed buffer)."""
        good: list[dict] = []
        pos = None
        for record, pos in records:
            if record["_fault"]:
                self.faults.skip(record["_fault"], record["_where"])
            else:
                good.append(record)
            if pos == stop or (stop is None and len(good) >= self.buffer_size):
                break
        return good, pos

    def _load(
        self, shards: list, work: list, pos: Position, stop: Position | None
    ) -> tuple[list[dict], list, Position | None]:
        """One buffer from ``pos``: its good records, their encoded examples and the position after it.

        The record iterator of the previous buffer carries on when this one starts where it ended: a fresh one over a
        source that cannot seek (a datasets stream, gzip) would read the shard from its start again, every buffer.
        """
        if self._cursor is None or self._cursor[0] != pos:
            self._cursor = (pos, self._records(shards, work, pos))
        records, end = self._fill(self._cursor[1], stop)
        self._cursor = (end, self._cursor[1]) if end is not None else None
        if end is None:
            return [], [], None
        return records, self.encode_many(records, self.faults), end

    def node_batches(self, node: int, nodes: int, state: Any) -> Iterator[dict]:
        """Node ``node``'s batches of the epoch from ``state`` (None: from the start), each tagged with its state."""
        if state == "done":
            return
        state = dict(state or {})
        self.reader.mix = (self.seed, self.epoch, self.buffer_size) if self.shuffle else None
        plan_nodes = state.get("plan_nodes", nodes)
        shards = self.reader.plan(plan_nodes)
        work = segments(state.get("work") or []) or canonical_work(
            len(shards), self.seed, self.epoch, node, plan_nodes, self.shuffle
        )
        # elastic: buffers begun on another layout, to finish first (bounds, seed, batches trained; see elastic.py)
        fixed = state.get("fixed") or []
        tag = state.get("tag", str(node))
        flush, skip, stop = state.get("flush", 0), state.get("done", 0), None
        pos = position(state.get("buf", (0, None)))
        self.faults.counts.update(state.get("faults", {}))
        # one shuffle stream per node whose flushes draw in turn (the batches of a run without resume are those of
        # the earlier, replaying design); a state carries its value at the start of the buffer it is in
        own = random.Random(f"{self.seed}/{self.epoch}/{tag}")
        if state and flush >= 0:
            stop = position(state["end"])  # re-read exactly that buffer, drop the batches already yielded
            if flush >= len(fixed):
                own.setstate(rng_state(state["rng"]))
        elif state:
            flush, skip = 0, 0  # an elastic node that has not begun
        common = {"tag": tag, "plan_nodes": plan_nodes}
        if state.get("work") is not None:
            common |= {"work": work, "fixed": fixed}
        ahead: ReadAhead | None = None
        self._cursor: tuple[Position, Iterator] | None = None  # (where it is, the record iterator)
        while True:
            rng = own
            if flush < len(fixed):
                pos, stop = position(fixed[flush][0]), position(fixed[flush][1])
                rng = random.Random()
                rng.setstate(rng_state(fixed[flush][2]))
                skip = max(skip, fixed[flush][3])
            drawn = rng.getstate()
            loaded = ahead.result() if ahead is not None else None  # joined: it shares the record iterator
            if loaded is not None and ahead.bounds == (pos, stop):
                before, (records, examples, end) = ahead.before, loaded
            else:
                before = self.faults.snapshot()
                records, examples, end = self._load(shards, work, pos, stop)
            if end is None:
                return
            ahead = None
            if self.read_ahead:  # the next buffer is read and encoded while this one's batches are trained on
                nxt = (
                    (position(fixed[flush + 1][0]), position(fixed[flush + 1][1]))
                    if flush + 1 < len(fixed)
                    else (end, None)
                )
                ahead = ReadAhead(nxt, self.faults.snapshot(), lambda b=nxt: self._load(shards, work, *b))
            pairs = [(ex, r["_where"]) for ex, r in zip(examples, records, strict=True) if ex is not None]
            batches = flush_batches(
                pairs, lambda p: self.length(p[0]), rng, self.batch_size, self.max_tokens, self.shuffle
            )
            for j, group in enumerate(batches):
                if j < skip:
                    continue
                batch = self.collate([example for example, _ in group])
                batch["ids"] = [where for _, where in group]
                batch["state"] = common | {
                    "buf": pos,
                    "end": end,
                    "flush": flush,
                    "done": j + 1,
                    "of": len(batches),
                    "faults": before,
                    "rng": drawn,
                }
                yield batch
            flush, skip, pos, stop = flush + 1, 0, end, None

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        k, n_workers = (info.id, info.num_workers) if info else (0, 1)
        self.faults = FaultCounter()
        # only in a worker process: in the training process a reading thread would contend with the steps' Python
        self.read_ahead = info is not None
        for batch in self.node_batches(self.rank * n_workers + k, self.world * n_workers, self.resume.get(k)):
            if info is not None:
                inline_small_tensors(batch)
            batch["worker"] = k
            batch["faults"] = self.faults.snapshot()
            yield batch
        # a final, empty report so that faults after the last batch are counted too
        yield {"ids": [], "worker": k, "faults": self.faults.snapshot(), "empty": True}


#: Tensors up to this many bytes leave a DataLoader worker inside the pickled batch rather than in shared memory.
INLINE_BYTES = 1 << 16


def inline_small_tensors(batch: dict) -> None:
    """Worker side: small tensors (lengths, labels) as numpy arrays. A tensor crosses to the main process as a shared
    memory file whose descriptor is passed over a socket, about 1 ms each on a 2-core machine: three small tensors
    of a video batch cost more receiving time than its frames."""
    small = [k for k, v in batch.items() if torch.is_tensor(v) and v.nbytes <= INLINE_BYTES]
    for key in small:
        batch[key] = batch[key].numpy()
    if small:
        batch["_inlined"] = small


def restore_small_tensors(batch: dict) -> None:
    """Main side: the inlined arrays back as tensors (no copy)."""
    for key in batch.pop("_inlined", ()):
        batch[key] = torch.from_numpy(batch[key])


class ReadAhead:
    """The next buffer of a node, read and encoded on a thread while the current buffer's batches are yielded.

    Without it a worker reads nothing while its batches wait in the DataLoader's queue, and every buffer boundary
    stalls training for a whole buffer's reading and encoding (video clips are decoded here: 32% of step time).
    What is read, and in which order, does not change: only when. A daemon thread, so that a worker whose epoch
    ended is not held back by a buffer nobody will use::

        worker:  [fill+encode buffer k] [yield k's batches ..................] [yield k+1's batches ...]
        thread:                         [fill+encode buffer k+1]               [fill+encode buffer k+2]
    """

    def __init__(self, bounds: tuple, before: dict[str, int], load: Callable[[], tuple]) -> None:
        self.bounds, self.before = bounds, before  # (from, to) positions; fault counts before this buffer
        self._out: tuple | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(load,), daemon=True, name="read-ahead")
        self._thread.start()

    def _run(self, load: Callable[[], tuple]) -> None:
        try:
            self._out = load()
        except BaseException as exc:  # raised in the worker's own thread, where DataLoader reports it
            self._error = exc

    def result(self) -> tuple:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._out


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
        self.resume_data: dict | None = None  # every rank's data state at that point (see ResumeState)
        self.fault_counts: dict[str, int] = {}
        self.examples_seen = 0
        self._group = None
        self._remake_from: tuple[dict, int, int] | None = None  # (old rank state, its rank, world) on resume

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

    def _batches(self, rank_state: dict | None) -> Iterator[dict]:
        """This rank's batches of the epoch, round robin over its workers from where ``rank_state`` left off; each
        tagged with ``data_state`` (the rank's state after it). Fault reports are folded into ``fault_counts``."""
        workers = max(1, self.num_workers)
        states = list(rank_state["workers"]) if rank_state else [None] * workers
        cursor = rank_state["next"] if rank_state else 0
        ended: set[int] = set(rank_state["ended"]) if rank_state else set()
        self.stream.resume = {k: "done" if k in ended else s for k, s in enumerate(states)}
        loader = DataLoader(
            self.stream,
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=False,
            multiprocessing_context="fork" if self.num_workers else None,
            collate_fn=_as_is,  # not default_convert, which walks every id and state of every batch
        )
        source = iter(loader)
        queues: list[deque] = [deque() for _ in range(workers)]
        per_worker: dict[int, dict[str, int]] = {}
        while len(ended) < workers or any(queues):
            k = cursor
            while not queues[k] and k not in ended:  # pull until worker k has a batch or is done
                batch = next(source)
                w = batch.pop("worker")
                per_worker[w] = batch.pop("faults")
                self.fault_counts = merge_counts(per_worker)
                if batch.pop("empty", False):
                    ended.add(w)
                else:
                    queues[w].append(batch)
            cursor = (k + 1) % workers
            if not queues[k]:
                continue
            batch = queues[k].popleft()
            restore_small_tensors(batch)
            states[k] = batch.pop("state")
            done = sorted(w for w in ended if not queues[w])
            batch["data_state"] = {"next": cursor, "workers": list(states), "ended": done, "last": k}
            yield batch

    def _remade_batch(self, source: tuple[dict, int, int], rank_state: dict) -> dict:
        """A resumed rank with nothing left still steps with the others, on zero-weight copies of a batch: the last
        batch it (or, after a layout change, an old rank) had yielded, made again from the checkpointed state."""
        old, rank, world = source
        k = old["last"]
        state, workers = old["workers"][k], len(old["workers"])
        self.stream.faults = FaultCounter()
        batch = next(
            self.stream.node_batches(
                rank * workers + k, world * workers, {**state, "done": state["done"] - 1}
            )
        )
        batch.pop("state")
        return batch | {"data_state": rank_state}

    def _no_batches(self, epoch: int) -> None:
        skipped = ", ".join(f"{k}={v}" for k, v in sorted(self.fault_counts.items())) or "none"
        raise DataError(
            f"the training data gave no examples in epoch {epoch} (skipped inputs: {skipped}); check the data files "
            f"and the column/label settings."
        )

    def _start(self, epoch: int, rank: int, world: int) -> tuple[int, int, dict | None]:
        """(batches consumed before, batches to produce again and drop, this rank's state) for a resume."""
        at, data = self.resume_at, self.resume_data
        self.resume_at = self.resume_data = None
        if not self.train or not at or at[0] != epoch or at[1] == 0:
            return 0, 0, None
        if not data:  # a checkpoint without data states: produce the consumed batches again
            return 0, at[1], None
        from pipeline.data.elastic import rank_states

        world_then = len(data["ranks"])
        old = {
            r: (state, r, world_then)
            for r, state in enumerate(data["ranks"])
            if state.get("last") is not None
        }
        self._remake_from = old.get(rank) if world_then == world else next(iter(old.values()), None)
        return at[1], 0, rank_states(data, self.stream, world, max(1, self.num_workers), at[1])[rank]

    def __iter__(self) -> Iterator[dict]:
        epoch = self.epoch_fn()
        rank, world = self._rank_world()
        self.stream.epoch, self.stream.rank, self.stream.world = epoch, rank, world
        index, skip, rank_state = self._start(epoch, rank, world)
        source = self._batches(rank_state)
        last = None
        produced = 0
        while True:
            batch = next(source, None)
            if self.train and world > 1:
                if not self._any_rank_has(batch is not None):
                    break
                if batch is None:  # this rank ran out first: a zero-weight copy keeps the ranks in step
                    if last is None and rank_state is not None and self._remake_from is not None:
                        last = self._remade_batch(self._remake_from, rank_state)  # resumed, nothing left here
                    if last is None:
                        raise DataError(
                            f"rank {rank} received no training examples in epoch {epoch}; the training data is "
                            f"smaller than the number of processes x workers: use fewer devices or workers."
                        )
                    batch = {**last, "weight": 0.0, "ids": []}
            elif batch is None:
                if last is None and self.train and rank_state is None:
                    self._no_batches(epoch)
                break
            last = batch
            produced += 1
            if produced <= skip:
                continue
            index += 1
            batch.setdefault("weight", 1.0)
            batch["position"] = (epoch, index)
            self.examples_seen += len(batch["ids"])
            yield batch
