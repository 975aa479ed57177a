"""Language-model data: a corpus read as one text, the first 90% of its characters for training, the rest for validation.

Tokens are characters by default: the exact text, newlines included, with the characters of the training part as
the vocabulary (id 0 is kept for a character that training never saw). With ``tokenizer`` set they are sentencepiece
subwords: each line is encoded and closed with EOS, which stands for the newline. Either way the split is one token
stream, laid out as B contiguous streams per rank and cut into ``bptt`` windows by :mod:`pipeline.data.windows`.

The whole corpus is held in memory as one int32 tensor (Tiny Shakespeare: 1.1M characters, 4 MB); this family does
not stream or bucket, so it keeps only the resume contract of :class:`~pipeline.data.module.StreamDataModule`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from pytorch_lightning.utilities import rank_zero_only

from pipeline.data.faults import DataError, FaultCounter
from pipeline.data.module import StreamDataModule
from pipeline.data.source import Source, data_root, read_records
from pipeline.data.tokenizer import EOS, Tokenizer
from pipeline.data.windows import WindowLoader


class CharVocab:
    """Characters <-> ids; id 0 is the unknown character. Saved as ``vocab.json`` (a list of characters)."""

    FILE = "vocab.json"

    def __init__(self, chars: list[str]) -> None:
        self.chars = ["\ufffd", *chars]  # id 0: a character not seen in training
        self.index = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> CharVocab:
        return cls(sorted(set(text)))

    @classmethod
    def load(cls, path: str | Path) -> CharVocab:
        return cls(json.loads(Path(path).read_text(encoding="utf-8"))["chars"])

    def save_to(self, folder: str | Path) -> Path:
        dest = Path(folder) / self.FILE
        dest.write_text(json.dumps({"chars": self.chars[1:]}, ensure_ascii=False), encoding="utf-8")
        return dest

    @property
    def size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        get = self.index.get
        return [get(c, 0) for c in text]

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def unknown(self, text: str) -> list[str]:
        return sorted({c for c in text if c not in self.index})


class LMStreamData(StreamDataModule):
    """A text corpus as contiguous token streams for language modelling (truncated BPTT).

    Args:
        corpus: The text: local file(s) under the data root (read line by line, blank lines kept), or a hub dataset
            whose ``text_column`` records are joined with newlines.
        val_fraction: The last this share of the characters is the validation split (0.1, as char-rnn and nanoGPT).
        text_column: Column that holds the text (plain .txt files: ``text``).
        tokenizer: null: characters (exact text; vocabulary: the characters of the training split). Or sentencepiece
            options for subwords, e.g. ``{model_type: bpe, vocab_size: 2000}``; each line ends with EOS (the newline).
        batch_size: B, parallel streams per rank for training.
        val_batch_size: Parallel streams per rank for validation (fewer: longer streams, less cold-start context).
        bptt: Window length in tokens: how far back backpropagation through time reaches.
        vocab_file: A saved character vocabulary (``<run>/vocab.json``) to use instead of building one from the corpus;
            ``pipeline.sample`` sets it so that sampling needs only the run directory.
        seed: Seed of the random per-epoch offset of the training layout.
    """

    def __init__(
        self,
        corpus: Source,
        val_fraction: float = 0.1,
        text_column: str = "text",
        tokenizer: Tokenizer | None = None,
        batch_size: int = 32,
        val_batch_size: int = 16,
        bptt: int = 128,
        vocab_file: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(corpus, None, tokenizer, batch_size, None, 0, 0, seed)
        if not 0.0 < val_fraction < 1.0:
            raise DataError(f"data.val_fraction is {val_fraction}; set it between 0 and 1 (e.g. 0.1).")
        self.val_fraction, self.text_column = val_fraction, text_column
        self.val_batch_size, self.bptt, self.vocab_file = val_batch_size, bptt, vocab_file
        self.faults = FaultCounter()
        self._texts: dict[str, str] = {}  # split -> text
        self._ids: dict[str, torch.Tensor] = {}  # split -> (N,) int32
        self._vocab: CharVocab | None = None

    # --- reading ----------------------------------------------------------------------------------------------
    def columns(self) -> dict[str, str]:
        return {"data.text_column": self.text_column}

    def read(self, source: Source) -> str:
        """The source as one text. Blank lines are text here, not faults; undecodable lines are skipped and counted."""
        lines: list[str] = []
        local_text = not source.hub and all(f.endswith((".txt", ".txt.gz")) for f in source.files())
        # plain text files: our own line reader, without the datasets machinery (40k lines: 50 ms instead of 3 s)
        if local_text:
            records = read_records(source.files(), "text", ("text",), None, str(data_root()))
            column = "text"
        else:
            source.require(self.columns())
            records = (
                {k: chunk[k][i] for k in chunk}
                for chunk in source.dataset([self.text_column]).iter(batch_size=1024)
                for i in range(len(chunk["_where"]))
            )
            column = self.text_column
        for record in records:
            fault = record["_fault"]
            if fault == "empty":
                lines.append("")
            elif fault:
                self.faults.skip(fault, record["_where"])
            else:
                lines.append(record[column])
        text = "\n".join(lines) + "\n"
        if not text.strip():
            raise DataError(f"{source} holds no text; point data.corpus at a file with text in it.")
        return text

    def texts(self) -> dict[str, str]:
        """``{"train": first (1 - val_fraction) of the characters, "val": the rest}``, read once."""
        if not self._texts:
            text = self.read(self.train_source)
            cut = int(len(text) * (1.0 - self.val_fraction))
            self._texts = {"train": text[:cut], "val": text[cut:]}
        return self._texts

    def use_split(self, name: str) -> None:
        """Score ``name`` instead of the validation split (``pipeline.evaluate --split``): ``train``, ``val`` or a
        file under the data root, read whole."""
        if name not in ("train", "val"):
            self._texts = {"train": self.texts()["train"], "val": self.read(Source(path=name))}
        elif name == "train":
            self._texts = {**self.texts(), "val": self.texts()["train"]}
        self._ids.pop("val", None)
        self._val_loader = None

    # --- tokens -----------------------------------------------------------------------------------------------
    def prepare_tokenizer(self) -> Tokenizer:
        assert self.tokenizer is not None
        # an already trained model: load it, without reading the corpus (sampling from a run directory)
        if self.tokenizer._sp is None and self.tokenizer.model_path:
            self.tokenizer.load(self.tokenizer.model_path)
        if self.tokenizer._sp is None:
            path = self.train_source.hub or ";".join(
                f"{f}:{os.path.getsize(f)}:{int(os.path.getmtime(f))}" for f in self.train_source.files()
            )
            key = f"lm:{path}:{self.val_fraction}"
            self.tokenizer.prepare(lambda: iter(self.texts()["train"].split("\n")), key)
        return self.tokenizer

    @property
    def vocab(self) -> CharVocab:
        if self._vocab is None:
            self._vocab = (
                CharVocab.load(self.vocab_file)
                if self.vocab_file
                else CharVocab.from_text(self.texts()["train"])
            )
        return self._vocab

    @property
    def vocab_size(self) -> int:
        return self.prepare_tokenizer().size if self.tokenizer is not None else self.vocab.size

    def encode_text(self, text: str) -> list[int]:
        if self.tokenizer is None:
            return self.vocab.encode(text)
        sp = self.prepare_tokenizer()
        lines = text.split("\n")
        ids: list[int] = []
        for i, line in enumerate(sp.sp.encode(lines)):
            ids += line if i == len(lines) - 1 else [*line, EOS]  # EOS = "\n"
        return ids

    def decode(self, ids) -> str:
        if self.tokenizer is None:
            return self.vocab.decode(ids)
        sp, out, line = self.prepare_tokenizer(), [], []
        for i in ids:
            if int(i) == EOS:
                out.append(sp.decode(line))
                line = []
            else:
                line.append(int(i))
        return "\n".join([*out, sp.decode(line)])

    def count_chars(self) -> Callable[[torch.Tensor, torch.Tensor], int] | None:
        """For subwords: ``(tokens, targets) -> characters`` the targets stand for (None for characters: 1 each).

        A piece counts its characters with the word-boundary mark as a space, except the mark sentencepiece puts
        before the first piece of a line (that target follows an EOS), which stands for nothing in the text.
        """
        if self.tokenizer is None:
            return None
        sp = self.prepare_tokenizer().sp
        pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
        lengths = torch.tensor(
            [
                0 if sp.is_control(i) else 1 if sp.is_unknown(i) else len(p.replace("\u2581", " "))
                for i, p in enumerate(pieces)
            ]
        )
        lengths[EOS] = 1  # the newline
        marked = torch.tensor([p.startswith("\u2581") for p in pieces])

        def count(tokens: torch.Tensor, targets: torch.Tensor) -> int:
            return int(lengths[targets].sum() - (marked[targets] & (tokens == EOS)).sum())

        return count

    def ids(self, split: str) -> torch.Tensor:
        if split not in self._ids:
            text = self.texts()[split]
            if self.tokenizer is None and split == "val" and self.vocab.unknown(text):
                unknown = self.vocab.unknown(text)
                say(
                    f"{len(unknown)} validation character(s) never occur in training; they are scored as unknown."
                )
            self._ids[split] = torch.tensor(self.encode_text(text), dtype=torch.int32)
        return self._ids[split]

    def save_artifacts(self, run_dir: str) -> None:
        """The vocabulary (characters) or tokenizer (subwords), so that a checkpoint can be sampled from later."""
        if self.tokenizer is None:
            self.vocab.save_to(run_dir)
        else:
            self.prepare_tokenizer().save_to(run_dir)

    # --- loaders ----------------------------------------------------------------------------------------------
    def check(self) -> None:
        self.texts()

    def _loader(self, split: str) -> WindowLoader:
        train = split == "train"
        loader = WindowLoader(
            self.ids(split),
            self.batch_size if train else self.val_batch_size,
            self.bptt,
            self._epoch,
            train=train,
            seed=self.seed,
            count_chars=self.count_chars(),
            name=split,
        )
        n = self.ids(split).numel()
        say(
            f"{split}: {n:,} tokens as {len(loader)} windows of {loader.batch_size} streams x {self.bptt}; "
            f"{loader.unused():,} tokens ({100 * loader.unused() / n:.1f}%) are not predicted per epoch"
            + (" (stream ends; the random offset moves them each epoch)" if train else " (stream starts)")
        )
        return loader

    def train_dataloader(self) -> WindowLoader:
        if self._train_loader is None:
            self._train_loader = self._loader("train")
        self._train_loader.resume_at, self.resume_at = self.resume_at, None
        return self._train_loader

    def val_dataloader(self) -> WindowLoader:
        if self._val_loader is None:
            self._val_loader = self._loader("val")
        return self._val_loader

    def fault_counts(self) -> dict[str, int]:
        return self.faults.snapshot()


@rank_zero_only
def say(message: str) -> None:
    """A line for the user on stderr, like :func:`pipeline.cli.say` (which this module cannot import: a cycle)."""
    print(f"[pipeline] {message}", file=sys.stderr, flush=True)
