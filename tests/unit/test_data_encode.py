"""The list-encoding loader path gives exactly what one-by-one encoding gives, faults and padding included."""

from __future__ import annotations

import torch

from pipeline.data.faults import FaultCounter
from pipeline.data.sentiment import SentimentData, pad_batch
from pipeline.data.source import Source
from pipeline.data.tokenizer import PAD, Tokenizer


def test_encode_many_matches_encode_record_by_record(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_CACHE", str(tmp_path / "cache"))
    for overlength in ("truncate", "skip"):
        dm = SentimentData(
            train=Source(path="sst2/dev.tsv"),
            tokenizer=Tokenizer(vocab_size=400),
            max_length=12,
            overlength=overlength,
        )
        dm.prepare_tokenizer()
        reader = dm.train_source.reader(["sentence", "label"])
        records = [r for shard in reader.plan(1) for r, _ in reader.records(shard, None)]
        records += [
            {"sentence": "  ", "label": "1", "_where": "x:1", "_fault": ""},
            {"sentence": "fine", "label": "7", "_where": "x:2", "_fault": ""},
        ]
        one, many = FaultCounter(), FaultCounter()
        assert dm.encode_many(records, many) == [dm.encode(r, one) for r in records]
        assert many.snapshot() == one.snapshot() and many.snapshot()["bad_label"] == 1


def test_pad_batch_puts_every_id_in_its_row():
    tokens, lengths = pad_batch([[5, 6, 7], [8], [9, 10]])
    assert torch.equal(tokens, torch.tensor([[5, 6, 7], [8, PAD, PAD], [9, 10, PAD]]))
    assert lengths.tolist() == [3, 1, 2]
