"""Parallel (sentence-aligned) corpora as one streaming source: two line files, or a hub dataset with a column per
language.

Local files are named by a template with ``{lang}`` (and optionally ``{split}``), e.g.
``multi30k/task1/raw/{split}.{lang}.gz`` with ``split: train`` reads ``train.en.gz`` and ``train.de.gz`` line by line,
zipped. Records are ``{<lang>: str, ..., "_where": "multi30k/task1/raw/train.en.gz:17", "_fault": ""}``: the
location names the first language's file and the line, which is the same line in the other file.

The files are read by :func:`pipeline.data.source.read_records` (so undecodable and empty lines become fault records,
a truncated .gz a clear error, exactly as for every other task); this module only zips the languages. Before anything
is trained, :meth:`ParallelSource.require` counts the lines of both files: files that differ are a DataError
naming both files and both counts, because zipping them would silently pair the wrong sentences.

A hub dataset (``hub: bentrevett/multi30k`` or ``hub: wmt14, name: de-en``) is read with ``load_dataset(streaming=True)``;
nested records are flattened, so the column of a language is ``column`` with ``{lang}`` filled in
(``translation.{lang}`` for wmt14-style datasets, ``{lang}`` for bentrevett/multi30k).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace

import datasets

from pipeline.data.faults import DataError
from pipeline.data.source import Source, _open, data_root, read_records


def count_lines(path: str) -> int:
    """Lines in a (gzipped) text file, counted in 1 MiB blocks; a last line without newline counts too."""
    n, last = 0, b"\n"
    with _open(path) as fh:
        while block := fh.read(1 << 20):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")


def read_parallel(pairs: list[tuple[str, ...]], langs: tuple[str, ...], root: str) -> Iterator[dict]:
    """Zip the lines of aligned files (generator behind ``IterableDataset.from_generator``)."""
    for files in pairs:
        readers = [read_records([f], "text", ("text",), None, root) for f in files]
        for records in itertools.zip_longest(*readers):
            if any(r is None for r in records):  # check_aligned normally catches this before training
                raise DataError(_mismatch_message(list(files), root))
            fault = next((r["_fault"] for r in records if r["_fault"]), "")
            texts = {lang: (None if fault else r["text"]) for lang, r in zip(langs, records, strict=True)}
            yield texts | {"_where": records[0]["_where"], "_fault": fault}


def _mismatch_message(files: list[str], root: str) -> str:
    counts = [count_lines(f) for f in files]
    a, b = (os.path.relpath(f, root) if f.startswith(root) else f for f in files[:2])
    return (
        f"parallel files differ in length: {a} has {counts[0]} lines but {b} has {counts[1]}; line i of one must "
        f"translate line i of the other, so fix or re-export the shorter one."
    )


@dataclass
class ParallelSource(Source):
    """One split of a parallel corpus.

    Args:
        path: File template with ``{lang}`` (and optionally ``{split}``), relative to the data root unless absolute,
            e.g. ``multi30k/task1/raw/{split}.{lang}.gz``; plain text, one sentence per line, ``.gz`` read
            transparently. Mutually exclusive with ``hub``.
        hub: A Hugging Face hub dataset id with one text column per language.
        split: Fills ``{split}`` in ``path``; the hub split to read.
        name: The hub dataset configuration (e.g. ``de-en`` for wmt14).
        format: Must stay ``auto`` or ``text``: parallel files are read line by line.
        header: Unused (parallel files have no header row).
        column: Hub column of a language, ``{lang}`` filled in (records are flattened: ``translation.en``).
    """

    column: str = "translation.{lang}"

    # A subclass of Source so that it can stand where the base DataModule declares a Source (jsonargparse also
    # resolves a subclass's arguments against the base signature's types of the same name).

    def __post_init__(self) -> None:
        if (self.path is None) == (self.hub is None):
            raise DataError("a parallel data source needs exactly one of 'path' (a file template) or 'hub'.")
        if self.path is not None and (not isinstance(self.path, str) or "{lang}" not in self.path):
            raise DataError(
                f"parallel data path {self.path!r} is not one template with a {{lang}} placeholder; write it like "
                f"'multi30k/task1/raw/{{split}}.{{lang}}.gz' so that each language's file can be found."
            )
        if self.format not in ("auto", "text"):
            raise DataError(
                f"parallel data is read as plain text lines; format '{self.format}' is not supported."
            )

    def __repr__(self) -> str:
        return f"ParallelSource({self.hub + '[' + self.split + ']' if self.hub else self.path_for('*')})"

    def with_split(self, split: str) -> ParallelSource:
        """The same corpus, another split (``test_2016_flickr``), or other files when ``split`` is a template."""
        if "{lang}" in split:
            return replace(self, path=split, hub=None)
        return replace(self, split=split)

    def path_for(self, lang: str) -> str:
        assert isinstance(self.path, str)
        return self.path.replace("{split}", self.split).replace("{lang}", lang)

    def files_for(self, langs: list[str]) -> list[str]:
        """One file per language (a clear error when one is missing or empty)."""
        out = []
        for lang in langs:
            found = Source(path=self.path_for(lang)).files()
            if len(found) != 1:
                raise DataError(
                    f"parallel data path '{self.path_for(lang)}' matches {len(found)} files; it must name one file."
                )
            out += found
        return out

    def require(self, wanted: dict[str, str]) -> None:
        """``wanted`` maps config keys to languages: local files must exist, be non-empty and have equal line
        counts (else a DataError naming both files and counts); hub columns must exist."""
        langs = list(wanted.values())
        if self.hub:
            Source(hub=self.hub, split=self.split, name=self.name).require(
                {
                    f"column of '{lang}' ({key})": self.column.replace("{lang}", lang)
                    for key, lang in wanted.items()
                }
            )
            return
        files = self.files_for(langs)
        counts = [count_lines(f) for f in files]
        if len(set(counts)) > 1:
            raise DataError(_mismatch_message(files, str(data_root())))

    def dataset(self, columns: list[str]) -> datasets.IterableDataset:
        """Streaming records ``{lang: str, ..., "_where": str, "_fault": str}``; ``columns`` are language codes."""
        langs = columns
        if self.hub:
            hub = Source(hub=self.hub, split=self.split, name=self.name)
            names = [self.column.replace("{lang}", lang) for lang in langs]
            ds = hub.dataset(names)
            return ds.rename_columns({c: lang for c, lang in zip(names, langs, strict=True) if c != lang})
        return datasets.IterableDataset.from_generator(
            read_parallel,
            features=None,  # records are already str; declared features re-encode each one (see Source.dataset)
            gen_kwargs={
                "pairs": [tuple(self.files_for(langs))],
                "langs": tuple(langs),
                "root": str(data_root()),
            },
        )
