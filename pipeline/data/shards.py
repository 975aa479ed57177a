"""Shards: the pieces a source is cut into so that every (rank, worker) reads only its share, and can seek.

A shard is a plain tuple (it travels in checkpoints); a reader turns ``(shard, offset)`` into records, each with the
offset just after it, so that a reader can stop anywhere and start again there without reading what came before::

    one big text file, 4 nodes: byte ranges cut at line boundaries (Hadoop input splits)
        |--- shard 0 ---|--- shard 1 ---|--- shard 2 ---|--- shard 3 ---|
        a range owns the lines that *start* inside it: a reader seeks to start - 1, drops the rest of that line and
        reads on until the first line that starts at or after its end, so together the ranges read the file once.
    many files:  one shard per file (a .gz cannot be cut: one shard, and one log line that says so)
    parquet:     one shard per row group
    anything else (a hub id, a hub-layout folder, a task's own dataset): datasets' own shards (its files) when there
                 are at least as many as nodes, otherwise node j of N keeps every N-th record (and reads them all)

Offsets: ``(byte, line)`` in a text file (line is 0 when the range did not start at the top, so unknown there), the row
within a parquet row group, or the count of records already read for the others (which resume by reading again up
to there: no seek exists for them).
"""

from __future__ import annotations

import inspect
import logging
import math
import os
from collections.abc import Iterator
from typing import Any

import datasets
from datasets.distributed import split_dataset_by_node

log = logging.getLogger("pipeline.data")

Shard = (
    tuple  # ("text", path, start, end) | ("gzip", path) | ("rowgroup", path, group, first_row) | ("ds", j, n)
)
Offset = Any  # (byte, line) for text, an int otherwise; compared only for equality

_INTERLEAVES_SHARDS = (
    "max_buffer_input_shards" in inspect.signature(datasets.IterableDataset.shuffle).parameters
)

#: Size of a byte range of a text file, the unit of the shard shuffle: a node reads its ranges in a new random order
#: every epoch, so a shuffle buffer (10k SST-2 rows are ~0.5 MB) draws from a few places spread over the file; the
#: cost is one partial line re-read per range (~0.05% of the bytes).
SPLIT_BYTES = 256 << 10
_warned_gzip: set[str] = set()


def split_text(path: str, pieces: int) -> list[Shard]:
    """``pieces`` byte ranges of about equal size (the last takes the rest); line alignment happens when reading."""
    size = os.path.getsize(path)
    pieces = max(1, min(pieces, size))
    step = math.ceil(size / pieces)
    return [("text", path, i * step, min(size, (i + 1) * step)) for i in range(pieces) if i * step < size]


def plan_files(files: list[str], nodes: int, split_bytes: int = SPLIT_BYTES) -> list[Shard]:
    """Shards of local files for ``nodes`` readers: parquet row groups, whole gzip files, text byte ranges.

    Text files are cut into ranges of at most ``split_bytes``, and finer (in proportion to their size) when that gives
    fewer shards than nodes, so that no reader is idle and none reads another's share.
    """
    import pyarrow.parquet as pq

    fixed: list[Shard] = []
    text: list[str] = []
    for path in files:
        if path.endswith(".parquet"):
            meta = pq.ParquetFile(path).metadata
            first = 0
            for g in range(meta.num_row_groups):
                fixed.append(("rowgroup", path, g, first))
                first += meta.row_group(g).num_rows
        elif path.endswith(".gz"):
            if path not in _warned_gzip and nodes > 1:
                _warned_gzip.add(path)
                log.warning(
                    "%s is gzip-compressed and cannot be split, so one reader reads it whole; shard it into "
                    "several files or decompress it to let %d readers share it.",
                    path,
                    nodes,
                )
            fixed.append(("gzip", path))
        else:
            text.append(path)
    sizes = {p: os.path.getsize(p) for p in text}
    total = sum(sizes.values()) or 1
    missing = max(0, nodes - len(fixed))
    shards = list(fixed)
    for path in text:
        pieces = max(math.ceil(sizes[path] / split_bytes), math.ceil(missing * sizes[path] / total))
        shards += split_text(path, pieces)
    return shards


class CountingFile:
    """A binary file that counts the bytes it hands out (the benchmark's "bytes read")."""

    total = 0  # per process: every reader of this process together

    def __init__(self, path: str) -> None:
        self.fh = open(path, "rb")  # noqa: SIM115  (closed by the reader's with-block)

    def __enter__(self) -> CountingFile:
        return self

    def __exit__(self, *exc) -> None:
        self.fh.close()

    def seek(self, pos: int) -> None:
        self.fh.seek(pos)

    def readline(self) -> bytes:
        line = self.fh.readline()
        CountingFile.total += len(line)
        return line

    def read(self, size: int) -> bytes:
        data = self.fh.read(size)
        CountingFile.total += len(data)
        return data


def text_lines(shard: Shard, offset: Offset | None) -> Iterator[tuple[bytes, int, int, Offset]]:
    """``(raw line without its newline, its byte, its 1-based line number or 0, offset after it)`` for the lines owned by
    a text range (those that start in it)."""
    _, path, start, end = shard
    with CountingFile(path) as fh:
        if offset is not None:
            pos, line = offset
            fh.seek(pos)
        elif start > 0:
            fh.seek(start - 1)
            pos = start - 1 + len(fh.readline())  # the rest of a line that started before the range
            line = 0
        else:
            pos, line = 0, 0
        known = start == 0  # line numbers are counted from the top only in the first range
        while pos < end:
            # the range in blocks (a line per readline costs more than the split); the last line that starts in the
            # block may run past it: readline completes it
            block = fh.read(min(end - pos, 1 << 20))
            if not block:
                break
            lines = block.split(b"\n")
            tail = lines.pop()  # b"" when the block ends at a line end
            if tail:
                tail += fh.readline()
                lines.append(tail[:-1] if tail.endswith(b"\n") else tail)
                ends_open = not tail.endswith(b"\n")  # the file's last line, without a newline
            else:
                ends_open = False
            last = len(lines) - 1
            for i, raw in enumerate(lines):
                after = pos + len(raw) + (0 if (i == last and ends_open) else 1)
                line = line + 1 if known else 0
                yield raw, pos, line, (after, line)
                pos = after


def dataset_shards(ds: datasets.IterableDataset, nodes: int) -> list[Shard]:
    """datasets' own shards (files) when there are enough for every node, else N interleaved splits."""
    if ds.num_shards >= nodes:
        return [("ds", j, ds.num_shards) for j in range(ds.num_shards)]
    return [("every", j, nodes) for j in range(nodes)]


def dataset_records(
    ds: datasets.IterableDataset, shard: Shard, offset: int | None, mix: tuple[int, int, int] | None = None
) -> Iterator[tuple[dict, int]]:
    """The records of a datasets shard, each with the count read so far (a resume reads up to ``offset`` again).

    ``mix = (seed, epoch, buffer)`` streams them through datasets' seeded shuffle buffer first: such sources are often
    one shard (two zipped files), which the shard shuffle cannot mix; the order is still a pure function of the epoch.
    """
    kind, j, n = shard
    part = (
        ds.shard(num_shards=n, index=j) if kind == "ds" else split_dataset_by_node(ds, rank=j, world_size=n)
    )
    if mix is not None:  # after sharding: shard() drops the epoch that set_epoch gave the shuffle
        # datasets >= 5 feeds the buffer from up to 10 shards at once through a thread pool, one future per example
        # (~50 us each); with a single shard there is nothing to interleave
        single = part.num_shards == 1 and _INTERLEAVES_SHARDS
        part = part.shuffle(
            seed=mix[0], buffer_size=mix[2], **({"max_buffer_input_shards": 1} if single else {})
        )
        part.set_epoch(mix[1])
    done = 0
    for chunk in part.iter(batch_size=256):
        keys = list(chunk)
        for i in range(len(chunk[keys[0]])):
            done += 1
            if offset is not None and done <= offset:
                continue
            record = {k: chunk[k][i] for k in keys}
            if (
                kind == "ds" and n > 1 and "_where" in record
            ):  # datasets numbers records within each shard (file)
                record["_where"] = f"{record['_where']} (shard {j + 1} of {n})"
            yield record, done
