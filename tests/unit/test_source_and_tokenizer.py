"""Data tests over the real SST-2 files, through datasets streaming."""

from __future__ import annotations

import datasets
import pytest
from datasets.distributed import split_dataset_by_node

from pipeline.data.source import Source, data_root
from pipeline.data.tokenizer import BOS, EOS, PAD, UNK, Tokenizer


def test_sst2_dev_streams_every_example_with_its_line(monkeypatch):
    monkeypatch.delenv("PIPELINE_DATA", raising=False)
    ds = Source(path="sst2/dev.tsv").dataset(["sentence", "label"])
    assert isinstance(ds, datasets.IterableDataset)
    records = list(ds)
    assert len(records) == 872  # MANIFEST: 872 examples
    assert records[0]["_where"] == "sst2/dev.tsv:2"
    assert {r["label"] for r in records} == {"0", "1"}
    assert sum(r["label"] == "1" for r in records) == 444


def test_train_rows_that_are_bare_numbers_stay_strings():
    ds = Source(path="sst2/train.tsv").dataset(["sentence", "label"])
    wanted = {"sst2/train.tsv:17690", "sst2/train.tsv:48106"}
    found = {r["_where"]: r["sentence"] for r in ds if r["_where"] in wanted}
    assert all(isinstance(v, str) and v.strip().isdigit() for v in found.values()) and len(found) == 2


def test_data_root_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_DATA", str(tmp_path))
    assert data_root() == tmp_path.resolve()


def test_ranks_get_disjoint_examples_that_cover_the_split():
    ds = Source(path="sst2/dev.tsv").dataset(["sentence", "label"])
    parts = [{r["_where"] for r in split_dataset_by_node(ds, rank=r, world_size=3)} for r in range(3)]
    assert sum(len(p) for p in parts) == 872
    assert len(set.union(*parts)) == 872


def test_tokenizer_is_trained_once_then_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_CACHE", str(tmp_path))
    calls = []

    def texts():
        calls.append(1)
        return (r["sentence"] for r in Source(path="sst2/dev.tsv").dataset(["sentence", "label"]))

    first = Tokenizer(vocab_size=300).prepare(texts, "sst2-dev")
    again = Tokenizer(vocab_size=300).prepare(texts, "sst2-dev")
    other = Tokenizer(vocab_size=200).prepare(texts, "sst2-dev")  # other options: another model
    assert first == again != other
    assert len(calls) == 2
    tok = Tokenizer(vocab_size=300)
    tok.prepare(texts, "sst2-dev")
    assert (tok.sp.pad_id(), tok.sp.unk_id(), tok.sp.bos_id(), tok.sp.eos_id()) == (PAD, UNK, BOS, EOS)
    ids = tok.encode("a gorgeous , witty film")
    assert tok.decode(ids) == "a gorgeous , witty film"
    assert tok.size <= 300


@pytest.mark.parametrize("model_type", ["char", "bpe"])
def test_tokenizer_model_types(tmp_path, monkeypatch, model_type):
    monkeypatch.setenv("PIPELINE_CACHE", str(tmp_path))
    tok = Tokenizer(vocab_size=120, model_type=model_type)
    tok.prepare(lambda: (r["sentence"] for r in Source(path="sst2/dev.tsv").dataset(["sentence"])), "dev")
    ids = tok.encode("the film")
    if model_type == "char":
        assert tok.pieces(ids) == list(
            "\u2581the\u2581film"
        )  # one piece per character (+ sentencepiece's word marks)
    assert tok.decode(ids) == "the film"
