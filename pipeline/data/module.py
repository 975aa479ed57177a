"""What every task's DataModule shares: streaming sources, the tokenizer, bucketed batches, resume position.

A task family subclasses :class:`StreamDataModule` and says four things: which columns it reads (``columns``), how a
record becomes an example (``encode``), how examples become a batch (``collate``) and how long an example is
(``length``, for bucketing). Everything else (DDP sharding, workers, epochs, equal batch counts across ranks, the
resume position, fault counts) lives in :mod:`pipeline.data.stream` and is the same for every task.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytorch_lightning as pl

from pipeline.data.faults import DataError, FaultCounter
from pipeline.data.source import Source
from pipeline.data.stream import BatchStream, StreamLoader
from pipeline.data.tokenizer import Tokenizer


class StreamDataModule(pl.LightningDataModule):
    """Base class; see the subclasses for the arguments users set."""

    def __init__(
        self,
        train: Source,
        val: Source | None,
        tokenizer: Tokenizer | None,
        batch_size: int | None,
        max_tokens: int | None,
        buffer_size: int,
        num_workers: int,
        seed: int,
    ) -> None:
        super().__init__()
        if batch_size is None and max_tokens is None:
            raise DataError("set data.batch_size or data.max_tokens (or both) so that batches have a size.")
        self.train_source, self.val_source = train, val
        self.tokenizer = tokenizer
        self.batch_size, self.max_tokens, self.buffer_size = batch_size, max_tokens, buffer_size
        self.num_workers, self.seed = num_workers, seed
        # set by the ResumeState callback before the loader is built: (epoch, batches consumed), every rank's state
        self.resume_at: tuple[int, int] | None = None
        self.resume_data: dict | None = None
        self._train_loader: StreamLoader | None = None
        self._val_loader: StreamLoader | None = None

    def __repr__(self) -> str:  # Lightning's default builds every dataloader just to print itself
        return f"{type(self).__name__}(train={self.train_source}, val={self.val_source})"

    __str__ = __repr__

    # --- what subclasses provide ------------------------------------------------------------------------------
    def columns(self) -> dict[str, str]:
        """Config key -> column name, e.g. ``{"data.text_column": "sentence"}``."""
        raise NotImplementedError

    def encode(self, record: dict, faults: FaultCounter) -> Any:
        raise NotImplementedError

    def collate(self, examples: list) -> dict:
        raise NotImplementedError

    def length(self, example: Any) -> int:
        raise NotImplementedError

    def encode_many(self, records: list[dict], faults: FaultCounter) -> list:
        """A buffer of records -> examples (None where skipped); override to encode in lists, not one by one."""
        return [self.encode(record, faults) for record in records]

    def tokenizer_texts(self, record: dict) -> list[str]:
        """The texts of a training record that the tokenizer is trained on."""
        return [record[c] for c in self.columns().values()]

    # --- shared machinery -------------------------------------------------------------------------------------
    def check(self) -> None:
        """Fail early, with one sentence, on a missing file, an empty file or a missing column."""
        for source in (self.train_source, self.val_source):
            if source is not None:
                source.require(self.columns())

    def prepare_tokenizer(self) -> Tokenizer:
        """Train (once, cached) or load the tokenizer; called when the CLI builds the model, on every rank."""
        assert self.tokenizer is not None
        if self.tokenizer._sp is None:
            self.check()
            cols = list(self.columns().values())

            def texts() -> Iterator[str]:
                for chunk in self.train_source.dataset(cols).iter(batch_size=1024):
                    for i, fault in enumerate(chunk["_fault"]):
                        if not fault:
                            yield from self.tokenizer_texts({c: chunk[c][i] for c in cols})

            key = repr(self.train_source) + repr(sorted(cols)) + self._source_fingerprint()
            self.tokenizer.prepare(texts, key)
        return self.tokenizer

    def _source_fingerprint(self) -> str:
        if self.train_source.hub:
            return f"{self.train_source.hub}/{self.train_source.name}/{self.train_source.split}"
        return ";".join(
            f"{f}:{os.path.getsize(f)}:{int(os.path.getmtime(f))}" for f in self.train_source.files()
        )

    @property
    def vocab_size(self) -> int:
        if (
            self.tokenizer is None
        ):  # tokenizer-free data (video frames): the CLI's vocab_size link finds nothing
            raise AttributeError("this data module has no tokenizer, so no vocab_size")
        return self.prepare_tokenizer().size

    def save_artifacts(self, run_dir: str) -> None:
        """Copy what a run needs to be used later (the tokenizer) into its directory."""
        if self.tokenizer is not None:
            self.prepare_tokenizer().save_to(run_dir)

    def _stream(self, source: Source, shuffle: bool) -> BatchStream:
        if self.tokenizer is not None:
            self.prepare_tokenizer()
        return BatchStream(
            dataset=source.reader(list(self.columns().values())),
            encode=self.encode,
            encode_many=self.encode_many,
            collate=self.collate,
            length=self.length,
            batch_size=self.batch_size,
            max_tokens=self.max_tokens,
            buffer_size=self.buffer_size,
            shuffle=shuffle,
            seed=self.seed,
        )

    def _epoch(self) -> int:
        trainer = getattr(self, "trainer", None)
        return trainer.current_epoch if trainer is not None else 0

    def train_dataloader(self) -> StreamLoader:
        if self._train_loader is None:
            self.check()
            self._train_loader = StreamLoader(
                self._stream(self.train_source, True), self.num_workers, self._epoch, True
            )
        self._train_loader.resume_at, self.resume_at = self.resume_at, None
        self._train_loader.resume_data, self.resume_data = self.resume_data, None
        return self._train_loader

    def val_dataloader(self) -> StreamLoader | list:
        if self.val_source is None:
            return []
        if self._val_loader is None:
            self.check()  # before Lightning's sanity check reads a batch: a wrong column is one error, not skips
            self._val_loader = StreamLoader(
                self._stream(self.val_source, False), self.num_workers, self._epoch, False
            )
        return self._val_loader

    def use_split(self, name: str) -> None:
        """Score ``name`` instead of the validation split (``pipeline.evaluate --split``): here a file path under the
        data root; task data modules may also accept split names."""
        self.val_source = Source(path=name)
        self.val_source.files()  # a clear error now if it does not exist
        self._val_loader = None

    def fault_counts(self) -> dict[str, int]:
        """Inputs skipped so far in the current epoch, by kind, training and validation together."""
        total: dict[str, int] = {}
        for loader in (self._train_loader, self._val_loader):
            for kind, n in (loader.fault_counts if loader else {}).items():
                total[kind] = total.get(kind, 0) + n
        return total
