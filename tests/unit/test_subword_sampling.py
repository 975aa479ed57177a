"""Subword regularization for sentiment: training sentences segmented by sampling before bucketing, validation by the
best segmentation, and a resumed loader rebuilding the same batches of the same pieces (real dev.tsv, real DataLoader
workers)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from pipeline.data.sentiment import SentimentData
from pipeline.data.source import Source, data_root
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


def test_training_sentences_are_sampled_and_bucketed_and_validation_is_not():
    plain, sampled = data(0.0), data(0.1)
    train_plain, train_sampled = list(plain.train_dataloader()), list(sampled.train_dataloader())
    # sampling changes the pieces, never which sentences are trained on or their text
    texts = sorted(t for b in train_plain for t in texts_of(b, plain))
    assert sorted(t for b in train_sampled for t in texts_of(b, sampled)) == texts
    assert sum(int(b["n_tokens"]) for b in train_sampled) > sum(int(b["n_tokens"]) for b in train_plain) * 1.2
    # bucketed by the sampled lengths: no more padding than without sampling (12% here, with a buffer of 128)
    pad = [sum(b["pad_fraction"] for b in batches) / len(batches) for batches in (train_plain, train_sampled)]
    assert pad[1] < pad[0] + 0.01
    for a, b in zip(plain.val_dataloader(), sampled.val_dataloader(), strict=True):
        assert torch.equal(a["tokens"], b["tokens"])


def test_each_epoch_draws_new_segmentations():
    dm = data(0.1)
    loader = dm.train_dataloader()
    epochs = []
    for epoch in (0, 1):
        loader.epoch_fn = lambda e=epoch: e
        pieces = {}
        for b in loader:
            for text, row, n in zip(texts_of(b, dm), b["tokens"], b["lengths"], strict=True):
                pieces[text] = row[:n].tolist()
        epochs.append(pieces)
    assert epochs[0].keys() == epochs[1].keys()
    changed = sum(epochs[0][t] != epochs[1][t] for t in epochs[0])
    assert changed > len(epochs[0]) * 0.5


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_loader_rebuilds_the_same_batches_of_the_same_pieces(workers):
    dm = data(0.1, workers)
    straight = list(dm.train_dataloader())
    at = len(straight) // 2
    loader = data(0.1, workers).train_dataloader()
    loader.resume_at = (0, at)
    loader.resume_data = {"layout": [1, max(1, workers)], "ranks": [straight[at - 1]["data_state"]]}
    rest = list(loader)
    assert [b["ids"] for b in rest] == [b["ids"] for b in straight[at:]]
    for a, b in zip(rest, straight[at:], strict=True):
        assert torch.equal(a["tokens"], b["tokens"])  # the same draws: sampled from the same seed


def test_sampling_needs_a_subword_model():
    with pytest.raises(ValueError, match="sample_alpha.*unigram or bpe.*char"):
        Tokenizer(model_type="char", sample_alpha=0.1)


def dev_texts() -> list[str]:
    return [line.split("\t")[0] for line in (data_root() / DEV).read_text().splitlines()[1:200]]


def trained(alpha: float) -> Tokenizer:
    dm = data(alpha)
    return dm.prepare_tokenizer()


def test_a_seed_draws_the_same_pieces_in_another_process():
    # sentencepiece's own sampler draws other pieces in every process for the same seed; ours must not
    tok = trained(0.1)
    texts = dev_texts()
    here = tok.encode_sampled(texts, seed=7)
    code = (
        "import json, sys; from pipeline.data.tokenizer import Tokenizer; "
        f"t = Tokenizer(vocab_size=1000, sample_alpha=0.1, model_path={tok.model_path!r}); "
        "print(json.dumps(t.encode_sampled(json.load(sys.stdin), seed=7)))"
    )
    there = subprocess.run(
        [sys.executable, "-c", code], input=json.dumps(texts), capture_output=True, text=True, check=True
    )
    assert json.loads(there.stdout) == here
    assert tok.encode_sampled(texts, seed=8) != here
    assert [tok.decode(ids) for ids in here] == [
        tok.decode(tok.encode(t)) for t in texts
    ]  # same text, other pieces


def test_a_large_alpha_samples_the_best_segmentation():
    # alpha sharpens the distribution: at 1000, a score gap of 0.05 ('▁your' against '▁you|r') leaves e^-50
    tok = Tokenizer(vocab_size=1000, sample_alpha=1000.0, model_path=trained(0.1).model_path)
    texts = dev_texts()
    assert tok.encode_sampled(texts, seed=0) == tok.encode_many(texts)
