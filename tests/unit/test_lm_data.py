"""The LM data module on the real Tiny Shakespeare file: exact text, the 90/10 character split, vocabularies."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.data.faults import DataError
from pipeline.data.lm_stream import CharVocab, LMStreamData
from pipeline.data.source import Source, data_root
from pipeline.data.tokenizer import Tokenizer

FILE = "tinyshakespeare/input.txt"


@pytest.fixture(scope="module")
def chars() -> LMStreamData:
    return LMStreamData(Source(path=FILE), batch_size=4, bptt=16)


def test_the_first_90_percent_of_characters_train_and_the_rest_validate(chars):
    raw = (data_root() / FILE).read_text(encoding="utf-8")
    texts = chars.texts()
    assert texts["train"] + texts["val"] == raw  # newlines and blank lines included, nothing lost
    assert len(texts["train"]) == int(len(raw) * 0.9)
    assert chars.vocab_size == 66  # 65 characters + the unknown id
    assert chars.decode(chars.ids("val")[:500].tolist()) == texts["val"][:500]


def test_the_saved_vocabulary_rebuilds_the_same_ids_without_the_corpus(chars, tmp_path):
    chars.save_artifacts(str(tmp_path))
    again = LMStreamData(Source(path="no/such/file.txt"), vocab_file=str(tmp_path / CharVocab.FILE))
    assert again.vocab_size == chars.vocab_size
    assert again.encode_text("ROMEO:\nO!") == chars.encode_text("ROMEO:\nO!")


def test_train_batches_are_windows_of_the_training_text(chars):
    batch = next(iter(chars.train_dataloader()))
    assert batch["tokens"].shape == (4, 16) and batch["n_chars"] == 64
    assert chars.decode(batch["tokens"][0].tolist()) in chars.texts()["train"]


def test_subword_tokens_keep_newlines_and_count_characters(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_CACHE", str(tmp_path / "cache"))
    data = LMStreamData(
        Source(path=FILE), tokenizer=Tokenizer(vocab_size=300, model_type="bpe", sample_size=5000), bptt=16
    )
    text = "ROMEO:\nWhat light through yonder window breaks?\n\nJULIET:\nAy me!"
    assert data.decode(data.encode_text(text)) == text
    ids = data.ids("val").long()
    covered = data.count_chars()(ids[:-1], ids[1:])
    assert abs(covered - len(data.texts()["val"])) / len(data.texts()["val"]) < 0.002  # bits per *character*
    data.save_artifacts(str(tmp_path))
    assert (tmp_path / "tokenizer.model").is_file()


def test_an_empty_or_missing_corpus_is_one_sentence(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="holds no text"):
        LMStreamData(Source(path=str(empty))).texts()
    with pytest.raises(DataError, match="not found"):
        LMStreamData(Source(path=str(tmp_path / "missing.txt"))).texts()


def test_undecodable_lines_are_skipped_and_counted(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"good line\n\xff\xfe broken\nanother good line\n" * 20)
    data = LMStreamData(Source(path=str(bad)))
    assert "broken" not in data.texts()["train"] + data.texts()["val"]
    assert data.fault_counts() == {"undecodable": 20}
    assert isinstance(data.ids("train"), torch.Tensor)


def test_use_split_scores_another_file(chars, tmp_path):
    other = LMStreamData(Source(path=FILE), batch_size=4, bptt=16)
    extra = tmp_path / "extra.txt"
    extra.write_text("To be, or not to be, that is the question.\n" * 10)
    other.use_split(str(extra))
    assert other.texts()["val"] == Path(extra).read_text()
