"""Subword regularization for sentiment: training batches segmented by sampling, validation by the best segmentation,
and a resumed loader rebuilding the same batches of the same texts (real dev.tsv, real DataLoader workers)."""

from __future__ import annotations

import pytest
import torch

from pipeline.data.sentiment import SentimentData
from pipeline.data.source import Source
from pipeline.data.tokenizer import Tokenizer

DEV = "sst2/dev.tsv"  # 872 sentences


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("PIPELINE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def data(alpha: float, workers: int = 0) -> SentimentData:
    return SentimentData(
        train=Source(path=DEV),
        val=Source(path=DEV),
        tokenizer=Tokenizer(vocab_size=1000, sample_alpha=alpha),
        batch_size=16,
        buffer_size=128,
        num_workers=workers,
    )


def texts_of(batch: dict, dm: SentimentData) -> list[str]:
    tok = dm.prepare_tokenizer()
    return [tok.decode(row[:n].tolist()) for row, n in zip(batch["tokens"], batch["lengths"], strict=True)]


def test_training_batches_are_sampled_and_validation_is_not():
    plain, sampled = data(0.0), data(0.1)
    train_plain, train_sampled = list(plain.train_dataloader()), list(sampled.train_dataloader())
    # the same sentences in the same batches: sampling changes the pieces, never which examples or the text
    assert [b["ids"] for b in train_plain] == [b["ids"] for b in train_sampled]
    assert [texts_of(b, plain) for b in train_plain] == [texts_of(b, sampled) for b in train_sampled]
    changed = sum(
        not torch.equal(a["tokens"], b["tokens"]) for a, b in zip(train_plain, train_sampled, strict=True)
    )
    assert changed >= len(train_plain) * 0.9  # alpha 0.1 re-segments nearly every batch
    assert sum(int(b["n_tokens"]) for b in train_sampled) > sum(int(b["n_tokens"]) for b in train_plain)
    for a, b in zip(plain.val_dataloader(), sampled.val_dataloader(), strict=True):
        assert torch.equal(a["tokens"], b["tokens"])


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_loader_rebuilds_the_same_batches_of_the_same_texts(workers):
    # the examples, their batches and their text are the same; the sampled pieces need not be (sentencepiece's
    # generators cannot be re-seeded reliably in forked workers)
    dm = data(0.1, workers)
    straight = list(dm.train_dataloader())
    at = len(straight) // 2
    loader = data(0.1, workers).train_dataloader()
    loader.resume_at = (0, at)
    loader.resume_data = {"layout": [1, max(1, workers)], "ranks": [straight[at - 1]["data_state"]]}
    rest = list(loader)
    assert [b["ids"] for b in rest] == [b["ids"] for b in straight[at:]]
    assert [texts_of(b, dm) for b in rest] == [texts_of(b, dm) for b in straight[at:]]


def test_sampling_needs_a_subword_model():
    with pytest.raises(ValueError, match="sample_alpha.*unigram or bpe.*char"):
        Tokenizer(model_type="char", sample_alpha=0.1)
