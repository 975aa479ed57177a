"""A source's records by shard and offset: what a (rank, worker) reads, and where a resumed one starts again.

:class:`ShardReader` is built in the main process (it resolves files and, for hub ids, the ``datasets`` stream) and
pickled into every DataLoader worker. ``plan(nodes)`` cuts the source into shards (see :mod:`pipeline.data.shards`);
``records(shard, offset)`` yields ``(record, offset after it)``. Records are the source's usual
``{column: str, "_where": str, "_fault": str}``.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator

import datasets

from pipeline.data.faults import DataError
from pipeline.data.shards import Offset, Shard, dataset_records, dataset_shards, plan_files, text_lines
from pipeline.data.source import LineParser, _faulty, _flatten, _format_of, _open, _relative, data_root


class ShardReader:
    """Reads one split of a corpus shard by shard.

    Args:
        files: Local files (text, parquet, gzip) read by our own readers; or None with ``dataset``.
        dataset: A ``datasets`` stream (hub ids, hub-layout folders, tasks with a source of their own).
        columns: The columns records carry.
        fmt: The source's ``format`` setting (``auto``: by extension).
        header: Column names for tsv/csv files without a header row.
        label: How dataset records are named in ``_where``.
    """

    records_read = 0  # per process, every reader together: what the resume tests count

    def __init__(
        self,
        files: list[str] | None,
        dataset: datasets.IterableDataset | None,
        columns: list[str],
        fmt: str = "auto",
        header: list[str] | None = None,
        label: str = "",
    ) -> None:
        self.files, self.dataset, self.columns = files, dataset, tuple(columns)
        self.fmt, self.header, self.label = fmt, tuple(header) if header else None, label
        self.root = str(data_root())
        self.mix: tuple[int, int, int] | None = (
            None  # (seed, epoch, buffer) of a training stream over ``dataset``
        )

    def plan(self, nodes: int) -> list[Shard]:
        """The shards for ``nodes`` readers (a pure function of the files and ``nodes``)."""
        if self.dataset is not None:
            return dataset_shards(self.dataset, nodes)
        assert self.files is not None
        return plan_files(self.files, nodes)

    def records(self, shard: Shard, offset: Offset | None) -> Iterator[tuple[dict, Offset]]:
        """The records of ``shard`` after ``offset`` (None: from its start), each with the offset after it."""
        kind = shard[0]
        if kind in ("ds", "every"):
            assert self.dataset is not None
            records = dataset_records(self.dataset, shard, offset, self.mix)
        elif kind == "text":
            records = self._text(shard, offset)
        elif kind == "rowgroup":
            records = self._row_group(shard, offset)
        else:
            records = self._gzip(shard, offset)
        for item in records:
            ShardReader.records_read += 1
            yield item

    def _text(self, shard: Shard, offset: Offset | None) -> Iterator[tuple[dict, Offset]]:
        path, start = shard[1], shard[2]
        rel = _relative(path, self.root)
        fmt = _format_of(path) if self.fmt == "auto" else self.fmt
        parse = LineParser(fmt, self.columns, self.header)
        if parse.names is None and fmt in ("tsv", "csv") and (start > 0 or offset is not None):
            with _open(
                path
            ) as fh:  # ranges after the first (and resumed ones) take the names from the header row
                parse(fh.readline(), rel, True)
        for raw, byte, line, after in text_lines(shard, offset):
            # the line number where it is known (the first range), else the byte offset of the line
            record = parse(raw, f"{rel}:{line}" if line else f"{rel}@{byte}", byte == 0)
            if record is not None:
                yield record, after

    def _row_group(self, shard: Shard, offset: int | None) -> Iterator[tuple[dict, int]]:
        import pyarrow.parquet as pq

        _, path, group, first = shard
        rel = _relative(path, self.root)
        rows = pq.ParquetFile(path).read_row_group(group).to_pylist()
        for i in range(offset or 0, len(rows)):
            flat, where = _flatten(rows[i]), f"{rel}#{first + i}"
            if any(flat.get(c) is None for c in self.columns):
                record = _faulty(self.columns, where, "malformed")
            else:
                record = {c: str(flat[c]) for c in self.columns} | {"_where": where, "_fault": ""}
            yield record, i + 1

    def _gzip(self, shard: Shard, offset: int | None) -> Iterator[tuple[dict, int]]:
        path = shard[1]
        rel = _relative(path, self.root)
        parse = LineParser(_format_of(path) if self.fmt == "auto" else self.fmt, self.columns, self.header)
        lineno = 0
        try:
            with _open(path) as fh:
                for raw in fh:
                    lineno += 1
                    if offset is not None and lineno <= offset and lineno > 1:
                        continue  # no seek in a gzip stream: a resume reads (but does not parse) up to there
                    record = parse(raw, f"{rel}:{lineno}", lineno == 1)
                    if record is not None and (offset is None or lineno > offset):
                        yield record, lineno
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise DataError(
                f"{rel} is truncated or corrupt after line {lineno} ({exc}); re-download or re-compress the file."
            ) from None
