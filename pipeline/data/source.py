"""One streaming source for every task: local files under the data root, or a Hugging Face hub dataset.

Both come out as a ``datasets.IterableDataset`` (streaming, never materialised) whose records hold the requested
columns as strings plus two bookkeeping fields:

- ``_where``: ``"sst2/train.tsv:17"`` (file relative to the data root, 1-based line) or ``"hub-id[split]#i"``; it is the
  example id that resume tests count, and the location printed when the example is bad;
- ``_fault``: ``""`` for a good record, else the kind of fault (see :mod:`pipeline.data.faults`); faulty records are
  counted and dropped downstream, in the DataLoader worker, so that counting happens in one place.

Local text formats (tsv/csv/jsonl/txt, optionally ``.gz``) are read by our own line reader wrapped in
``IterableDataset.from_generator``: unlike the pandas-based csv builder it knows the line number of every record
(needed for messages), never infers types (SST-2 has rows that are bare numbers), and can tell an undecodable line or
a truncated gzip member apart. Parquet files and hub ids go through ``datasets.load_dataset(..., streaming=True)``.
"""

from __future__ import annotations

import csv
import glob
import gzip
import json
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import datasets

from pipeline.data.faults import DataError

#: Where ``path:`` entries are looked up unless they are absolute; ``PIPELINE_DATA`` overrides it.
DEFAULT_DATA_ROOT = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"

Format = Literal["auto", "tsv", "csv", "jsonl", "text", "parquet"]


def data_root() -> Path:
    """The data root: ``$PIPELINE_DATA`` if set, else ``../shared/data`` beside the project."""
    env = os.environ.get("PIPELINE_DATA")
    return Path(env).expanduser().resolve() if env else DEFAULT_DATA_ROOT.resolve()


def _format_of(path: str) -> str:
    name = path[:-3] if path.endswith(".gz") else path
    ext = name.rsplit(".", 1)[-1].lower()
    return {
        "tsv": "tsv",
        "csv": "csv",
        "jsonl": "jsonl",
        "json": "jsonl",
        "txt": "text",
        "parquet": "parquet",
    }.get(ext, "text")


def _open(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _flatten(record: dict, prefix: str = "") -> dict:
    """``{"translation": {"en": a}}`` -> ``{"translation.en": a}`` so configs can name nested fields."""
    flat = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _split_line(text: str, fmt: str) -> list[str] | dict | None:
    if fmt == "tsv":
        return text.split("\t")
    if fmt == "csv":
        return next(csv.reader([text]), [])
    if fmt == "jsonl":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            return None
        return _flatten(obj) if isinstance(obj, dict) else None
    return [text]


def _faulty(columns: tuple[str, ...], where: str, fault: str) -> dict:
    return {c: None for c in columns} | {"_where": where, "_fault": fault}


class LineParser:
    """One line of a local text file -> a record (or a fault record); the header row of tsv/csv sets the names."""

    def __init__(self, fmt: str, columns: tuple[str, ...], names: tuple[str, ...] | list[str] | None) -> None:
        self.fmt, self.columns, self.names = fmt, columns, names
        self._index: list[int] | None = None  # positions of ``columns`` among the tsv fields

    def __call__(self, raw: bytes, where: str, first: bool) -> dict | None:
        """The record of ``raw`` at ``where``; None for the header row (which it takes the names from)."""
        columns = self.columns
        try:
            # utf-8-sig on the first line drops a byte-order mark that would corrupt the header
            text = raw.decode("utf-8-sig" if first else "utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            return _faulty(columns, where, "undecodable")
        if self.names is None and self.fmt in ("tsv", "csv"):
            self.names = _split_line(text, self.fmt)  # header row
            return None
        if not text.strip():
            return _faulty(columns, where, "empty")
        if self.fmt == "tsv" and self.names is not None:  # the common case, without a dict per line
            fields = text.split("\t")
            if self._index is None:
                names = list(self.names)
                self._index = [names.index(c) if c in names else -1 for c in columns]
            if len(fields) != len(self.names) or -1 in self._index:
                return _faulty(columns, where, "malformed")
            record = {c: fields[i] for c, i in zip(columns, self._index, strict=True)}
            record["_where"], record["_fault"] = where, ""
            return record
        fields = _split_line(text, self.fmt)
        if isinstance(fields, dict):
            row = fields
        elif fields is None or (self.names is not None and len(fields) != len(self.names)):
            return _faulty(columns, where, "malformed")
        else:
            row = dict(zip(self.names or ["text"], fields, strict=False))
        if any(c not in row for c in columns):
            return _faulty(columns, where, "malformed")
        return {c: str(row[c]) for c in columns} | {"_where": where, "_fault": ""}


def _relative(path: str, root: str) -> str:
    return os.path.relpath(path, root) if path.startswith(root) else path


def read_records(
    files: list[str], fmt: str, columns: tuple[str, ...], header: tuple[str, ...] | None, root: str
) -> Iterator[dict]:
    """Yield one record per line of ``files`` (generator behind ``IterableDataset.from_generator``).

    ``files`` is the shard list: ``datasets`` hands each DataLoader worker / rank a sub-list when there are enough.
    """
    for path in files:
        rel = _relative(path, root)
        parse = LineParser(_format_of(path) if fmt == "auto" else fmt, columns, header)
        lineno = 0
        try:
            with _open(path) as fh:
                for raw in fh:
                    lineno += 1
                    record = parse(raw, f"{rel}:{lineno}", lineno == 1)
                    if record is not None:
                        yield record
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise DataError(
                f"{rel} is truncated or corrupt after line {lineno} ({exc}); re-download or re-compress the file."
            ) from None


@dataclass
class Source:
    """Where one split of a corpus comes from.

    Args:
        path: File(s) or glob(s), relative to the data root (``$PIPELINE_DATA``, default ``../shared/data``) unless
            absolute; ``.gz`` is read transparently. Mutually exclusive with ``hub``.
        hub: A Hugging Face hub dataset id (e.g. ``stanfordnlp/sst2``), streamed with ``load_dataset(streaming=True)``.
        split: The hub split to read (ignored for local files).
        name: The hub dataset configuration name, if it has several (e.g. ``de-en`` for wmt14).
        format: File format; ``auto`` picks it from the extension (tsv, csv, jsonl/json, parquet, anything else: text).
        header: Column names for tsv/csv files that have no header row (otherwise the first row is the header).
    """

    path: str | list[str] | None = None
    hub: str | None = None
    split: str = "train"
    name: str | None = None
    format: Format = "auto"
    header: list[str] | None = None

    def __post_init__(self) -> None:
        if (self.path is None) == (self.hub is None):
            raise DataError(
                "a data source needs exactly one of 'path' (local files) or 'hub' (a hub dataset id)."
            )

    def __repr__(self) -> str:
        return f"Source({self.hub + '[' + self.split + ']' if self.hub else self.path})"

    def files(self) -> list[str]:
        """The local files this source reads, in order; a clear error when one is missing or empty."""
        root = data_root()
        patterns = [self.path] if isinstance(self.path, str) else list(self.path or [])
        found: list[str] = []
        for pattern in patterns:
            full = str(Path(pattern).expanduser()) if os.path.isabs(pattern) else str(root / pattern)
            matches = sorted(glob.glob(full))
            if not matches:
                raise DataError(
                    f"data file '{pattern}' not found (looked for {full}); check the path in the config, or point "
                    f"PIPELINE_DATA at the folder that holds it."
                )
            found += matches
        for f in found:
            if os.path.getsize(f) == 0:
                raise DataError(f"data file {f} is empty; it has no examples to read.")
        return found

    def columns(self) -> list[str]:
        """The column names this source offers (from the header row, the first record or the hub features)."""
        if self.hub:
            feats = datasets.load_dataset(self.hub, self.name, split=self.split, streaming=True).features
            return list(_flatten(dict(feats)).keys()) if feats else []
        path = self.files()[0]
        fmt = _format_of(path) if self.format == "auto" else self.format
        if fmt == "text":
            return ["text"]
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(path).names)
        if self.header and fmt in ("tsv", "csv"):
            return list(self.header)
        with _open(path) as fh:
            for raw in fh:
                text = raw.decode("utf-8-sig", errors="replace").rstrip("\r\n")
                if text.strip():
                    fields = _split_line(text, fmt)
                    return list(fields.keys()) if isinstance(fields, dict) else list(fields or [])
        raise DataError(f"data file {path} has no lines with content; it has no examples to read.")

    def require(self, wanted: dict[str, str]) -> None:
        """Check that each config key's column exists, e.g. ``{"data.text_column": "sentence"}``."""
        have = self.columns()
        if not have:  # hub dataset without declared features: checked on the first record instead
            return
        for key, column in wanted.items():
            if column not in have:
                raise DataError(
                    f"{key}: '{column}' is not a column of {self} (its columns: {', '.join(have)}); "
                    f"set {key} to one of those."
                )

    def reader(self, columns: list[str]):  # -> pipeline.data.reader.ShardReader (which imports this module)
        """What the training stream reads: local text and parquet files by seekable shards of our own; hub ids and
        sources with a dataset of their own (subclasses) through ``datasets``, sharded by its files."""
        from pipeline.data.reader import ShardReader

        local = self.hub is None and type(self).dataset is Source.dataset
        files = self.files() if local else []
        if local and (self.format != "parquet" or all(f.endswith(".parquet") for f in files)):
            return ShardReader(files, None, columns, self.format, self.header)
        return ShardReader(None, self.dataset(columns), columns, label=repr(self))

    def dataset(self, columns: list[str]) -> datasets.IterableDataset:
        """A streaming dataset of records ``{column: str, "_where": str, "_fault": str}``."""
        if self.hub or (
            self.format == "parquet" or (self.format == "auto" and self.files()[0].endswith(".parquet"))
        ):
            features = datasets.Features(
                {c: datasets.Value("string") for c in [*columns, "_where", "_fault"]}
            )
            return self._via_load_dataset(columns, features)
        root = str(data_root())
        return datasets.IterableDataset.from_generator(
            read_records,
            # no declared features: the records are already str (or None for faults); with features, datasets
            # re-encodes every record through its type system, ~40 us each, a few % of a small model's step
            features=None,
            gen_kwargs={
                "files": self.files(),  # the one list: datasets shards over it
                "fmt": self.format,
                "columns": tuple(columns),
                "header": tuple(self.header) if self.header else None,
                "root": root,
            },
        )

    def _via_load_dataset(self, columns: list[str], features: datasets.Features) -> datasets.IterableDataset:
        if self.hub:
            ds = datasets.load_dataset(self.hub, self.name, split=self.split, streaming=True)
            label = f"{self.hub}[{self.split}]"
        else:
            ds = datasets.load_dataset("parquet", data_files=self.files(), split="train", streaming=True)
            label = str(self.path)

        def to_record(example: dict, idx: int) -> dict:
            flat = _flatten(example)
            where = f"{label}#{idx}"
            if any(flat.get(c) is None for c in columns):
                return {c: None for c in columns} | {"_where": where, "_fault": "malformed"}
            return {c: str(flat[c]) for c in columns} | {"_where": where, "_fault": ""}

        return ds.map(to_record, with_indices=True, remove_columns=list(ds.features or [])).cast(features)
