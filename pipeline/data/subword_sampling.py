"""Subword regularization (Kudo, 2018) drawn from our own seeded generator, one word at a time.

A unigram model scores a segmentation by the sum of its pieces' log-probabilities, and sampling draws a segmentation
with probability proportional to ``exp(alpha * score)``. sentencepiece's pieces never cross whitespace (its default
``split_by_whitespace``), so the lattice of a text is the product of its words' lattices, and sampling a text is
sampling each word on its own:

    "a wonderfully odd film"
       a        wonderfully                     odd        film
       ▁a       ▁wonder|fully   p=.61           ▁odd       ▁film
                ▁wonderful|ly   p=.22
                ▁w|onder|fully  p=.05 ...       (made-up p; each word: its n best segmentations, cached, one draw)

Each distinct word's ``nbest`` best segmentations and their cumulative probabilities are computed once and cached, and
the draws come from a numpy generator seeded by the caller. Why not sentencepiece's own sampler: with the same
``set_random_generator_seed`` it draws other pieces in every new process (sentencepiece 0.2.3), so a resumed run,
or a DataLoader worker, could not draw again what it drew before. Words with more than ``nbest`` segmentations lose
their least likely ones (at alpha 0.3, the best 16 segmentations of SST-2's three longest words already hold 94-100% of
the mass of their best 64).
"""

from __future__ import annotations

import bisect
import math
from itertools import accumulate

import numpy as np
import sentencepiece as spm


class WordSampler:
    """Sampled segmentations of texts, word by word, for a unigram sentencepiece model."""

    def __init__(
        self, sp: spm.SentencePieceProcessor, alpha: float, nbest: int = 64, cache: int = 500_000
    ) -> None:
        self.sp, self.alpha, self.nbest, self.cache_size = sp, alpha, nbest, cache
        self.scores = [sp.get_score(i) for i in range(sp.get_piece_size())]  # log-probability of each piece
        self.cache: dict[str, tuple[list[list[int]], list[float]]] = {}

    def choices(self, word: str) -> tuple[list[list[int]], list[float]]:
        """The word's ``nbest`` best segmentations and their cumulative sampling probabilities."""
        hit = self.cache.get(word)
        if hit is not None:
            return hit
        segs = self.sp.nbest_encode_as_ids(word, self.nbest) or [self.sp.encode(word)]
        scores = [self.alpha * sum(self.scores[i] for i in seg) for seg in segs]
        top = max(scores)
        weights = [math.exp(s - top) for s in scores]  # exp(alpha * score), scaled for range
        total = sum(weights)
        cumulative = [w / total for w in accumulate(weights)]
        if len(self.cache) >= self.cache_size:  # a corpus of many distinct words: start the cache again
            self.cache.clear()
        self.cache[word] = (segs, cumulative)
        return segs, cumulative

    def encode(self, texts: list[str], seed: int) -> list[list[int]]:
        """One sampled segmentation per text; the same ``seed`` draws the same pieces in any process."""
        rng = np.random.default_rng(seed)
        out = []
        for text in texts:
            words = text.split()
            ids: list[int] = []
            for word, u in zip(words, rng.random(len(words)).tolist(), strict=True):
                segs, cumulative = self.choices(word)
                ids.extend(segs[min(bisect.bisect_right(cumulative, u), len(segs) - 1)])
            out.append(ids)
        return out
