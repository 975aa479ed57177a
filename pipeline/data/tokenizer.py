"""The one tokenizer module: sentencepiece (unigram / bpe / char / word), trained once and cached.

The model is trained on a bounded sample (the first ``sample_size`` texts) of the training stream and cached under
``$PIPELINE_CACHE`` (default ``~/.cache/pipeline``) by a hash of the source and every option, so the next start reuses
it; each run also gets a copy in its own directory (``<run>/tokenizer.model``) so that a checkpoint never depends on a
cache. A file lock makes concurrent starts (DDP ranks under SLURM, parallel tests) train it once.

Special ids are fixed so that code can rely on them: pad 0, unk 1, bos 2, eos 3.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import sentencepiece as spm

from pipeline.data.faults import DataError
from pipeline.data.subword_sampling import WordSampler

log = logging.getLogger("pipeline.data")

PAD, UNK, BOS, EOS = 0, 1, 2, 3


def cache_dir() -> Path:
    return Path(os.environ.get("PIPELINE_CACHE", Path.home() / ".cache" / "pipeline")).expanduser()


@dataclass
class Tokenizer:
    """A sentencepiece tokenizer trained on the training stream (or loaded from ``model_path``).

    Args:
        vocab_size: Number of pieces, specials included (a soft limit: a tiny corpus may yield fewer).
        model_type: ``unigram`` or ``bpe`` subwords, ``char`` for character level, ``word`` for whitespace words.
        sample_size: How many training texts (from the start of the stream) the model is trained on.
        character_coverage: Share of characters covered by the vocabulary; rarer ones map to ``unk``.
        model_path: Use this trained ``.model`` file instead of training one.
        sample_alpha: Subword regularization (Kudo, 2018) for data modules that support it (sentiment): training texts
            are segmented anew each time they are read (every epoch), sampled from their segmentations. unigram: the
            smoothing of the lattice's probabilities, 0.1-0.5 usual, lower is more varied; the draws are reproducible
            from the seed. bpe: the BPE-dropout rate, by sentencepiece's own sampler, whose draws differ from process
            to process. 0: off, the one best segmentation everywhere. Validation and prediction always use the best
            segmentation.
    """

    vocab_size: int = 8000
    model_type: Literal["unigram", "bpe", "char", "word"] = "unigram"
    sample_size: int = 200_000
    character_coverage: float = 1.0
    model_path: str | None = None
    sample_alpha: float = 0.0
    _sp: spm.SentencePieceProcessor | None = field(default=None, init=False, repr=False, compare=False)
    _sampler: WordSampler | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.sample_alpha < 0 or (self.sample_alpha and self.model_type not in ("unigram", "bpe")):
            raise ValueError(
                f"data.tokenizer.sample_alpha={self.sample_alpha}: subword sampling needs model_type unigram or bpe "
                f"(this one is {self.model_type}) and a value >= 0; set it to 0 to turn it off."
            )

    # --- training / caching -------------------------------------------------------------------------------------
    def options(self) -> dict:
        return {
            "vocab_size": self.vocab_size,
            "model_type": self.model_type,
            "sample_size": self.sample_size,
            "character_coverage": self.character_coverage,
        }

    def prepare(self, texts: Callable[[], Iterable[str]], source_key: str) -> Path:
        """Load the cached model for ``source_key`` + options, training it first if there is none."""
        if self.model_path:
            return self.load(self.model_path)
        digest = hashlib.sha256(
            json.dumps([source_key, self.options()], sort_keys=True).encode()
        ).hexdigest()[:16]
        folder = cache_dir() / "tokenizers"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{digest}.model"
        with open(folder / f"{digest}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one trainer at a time; the others then find the file
            if not target.exists():
                self._train(texts(), target, source_key.split("[")[0])
        return self.load(target)

    def _train(self, texts: Iterable[str], target: Path, source: str) -> None:
        seen = 0

        def sample():
            nonlocal seen
            for text in texts:
                if seen >= self.sample_size:
                    break
                seen += 1
                yield text

        log.info(
            "training a %s tokenizer (%d pieces) on up to %d texts",
            self.model_type,
            self.vocab_size,
            self.sample_size,
        )
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=sample(),
                model_writer=model,
                vocab_size=self.vocab_size,
                model_type=self.model_type,
                character_coverage=self.character_coverage,
                pad_id=PAD,
                unk_id=UNK,
                bos_id=BOS,
                eos_id=EOS,
                hard_vocab_limit=False,
                num_threads=max(1, os.cpu_count() or 1),
                minloglevel=2,
            )
        except RuntimeError as exc:
            if seen == 0:
                raise DataError(
                    f"{source} has no usable text to train the tokenizer on; check the file and the column names."
                ) from None
            raise DataError(
                f"sentencepiece could not train on {source} ({exc}); lower data.tokenizer.vocab_size or check the data."
            ) from None
        if seen == 0 or not model.getvalue():
            raise DataError(
                f"{source} has no usable text to train the tokenizer on; check the file and the column names."
            )
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(model.getvalue())
        os.replace(tmp, target)

    def load(self, path: str | Path) -> Path:
        self.model_path = str(path)
        self._sp = spm.SentencePieceProcessor(model_file=str(path))
        self._sampler = None
        return Path(path)

    def save_to(self, folder: str | Path) -> Path:
        """Copy the trained model into a run directory (``<folder>/tokenizer.model``)."""
        dest = Path(folder) / "tokenizer.model"
        if self.model_path and Path(self.model_path).resolve() != dest.resolve():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.model_path, dest)
        return dest

    # --- use ----------------------------------------------------------------------------------------------------
    @property
    def sp(self) -> spm.SentencePieceProcessor:
        if self._sp is None:
            if not self.model_path:
                raise RuntimeError("the tokenizer is not trained yet: call prepare() first")
            self._sp = spm.SentencePieceProcessor(model_file=self.model_path)
        return self._sp

    @property
    def size(self) -> int:
        """The number of pieces the trained model really has (``vocab_size`` is what was asked for)."""
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def encode_many(self, texts: list[str]) -> list[list[int]]:
        """One sentencepiece call for a list (about twice the rate of one call per text)."""
        return self.sp.encode(texts) if texts else []

    def encode_sampled(self, texts: list[str], seed: int) -> list[list[int]]:
        """Texts -> one sampled segmentation each (``sample_alpha``), drawn from ``seed``.

        unigram: word by word from our own generator (:mod:`pipeline.data.subword_sampling`), so a seed draws the
        same pieces in any process and a resumed run draws again what it drew before. bpe (BPE-dropout):
        sentencepiece's own sampler, whose draws differ from process to process even with the same seed."""
        if not texts:
            return []
        if self.model_type == "unigram":
            if self._sampler is None:
                self._sampler = WordSampler(self.sp, self.sample_alpha)
            return self._sampler.encode(texts, seed)
        spm.set_random_generator_seed(seed)
        return self.sp.encode(
            texts, enable_sampling=True, alpha=self.sample_alpha, nbest_size=-1, num_threads=1
        )

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode([i for i in ids if i > EOS])

    def pieces(self, ids: Iterable[int]) -> list[str]:
        return [self.sp.id_to_piece(int(i)) for i in ids]

    def __getstate__(self) -> dict:  # DataLoader workers get the path, not the C++ object
        return {**self.__dict__, "_sp": None, "_sampler": None}
