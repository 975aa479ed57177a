"""The bad-input policy on a corpus of real faulty files (tests/data/faults): exact skip counts or exact messages."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import pytest

from pipeline.data.faults import DataError
from pipeline.data.sentiment import SentimentData
from pipeline.data.source import Source
from pipeline.data.tokenizer import Tokenizer

FAULTS = Path(__file__).resolve().parents[1] / "data" / "faults"


@pytest.fixture(autouse=True)
def scratch_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_CACHE", str(tmp_path / "cache"))


def read_all(name: str, **kwargs) -> tuple[list[str], dict[str, int], list[str]]:
    """Stream one epoch of a fault file; returns (example ids, skip counts, texts' first tokens)."""
    dm = SentimentData(
        train=Source(path=str(FAULTS / name)),
        tokenizer=Tokenizer(vocab_size=60, model_type="char"),
        batch_size=4,
        buffer_size=8,
        **kwargs,
    )
    loader = dm.train_dataloader()
    ids = [i for batch in loader for i in batch["ids"]]
    return ids, dm.fault_counts(), ids


def lines(ids: list[str]) -> list[int]:
    return sorted(int(i.rsplit(":", 1)[1]) for i in ids)


def test_empty_and_whitespace_lines_are_skipped_and_counted():
    ids, counts, _ = read_all("empty_lines.tsv")
    assert counts == {"empty": 3}
    assert lines(ids) == [2, 3, 5, 7, 9]


def test_undecodable_lines_are_skipped_and_counted():
    ids, counts, _ = read_all("undecodable.tsv")
    assert counts == {"undecodable": 2}
    assert lines(ids) == [2, 3, 5, 7]


def test_overlength_truncated_by_default_and_counted():
    ids, counts, _ = read_all("overlength.tsv", max_length=50)
    assert counts == {"truncated": 2}
    assert len(ids) == 5


def test_overlength_skipped_when_configured():
    ids, counts, _ = read_all("overlength.tsv", max_length=50, overlength="skip")
    assert counts == {"too_long": 2}
    assert lines(ids) == [2, 3, 5]


def test_labels_outside_the_declared_classes_are_skipped_and_counted():
    ids, counts, _ = read_all("bad_label.tsv")
    assert counts == {"bad_label": 2}
    assert lines(ids) == [2, 3, 5]


def test_rows_with_the_wrong_number_of_fields_are_skipped_and_counted():
    ids, counts, _ = read_all("malformed.tsv")
    assert counts == {"malformed": 2}
    assert lines(ids) == [2, 5]


def test_jsonl_with_invalid_json_and_missing_keys():
    ids, counts, _ = read_all("records.jsonl")
    assert counts == {"malformed": 3}
    assert lines(ids) == [1, 2]


def test_byte_order_mark_and_crlf_are_not_faults():
    ids, counts, _ = read_all("bom_crlf.tsv")
    assert counts == {}
    assert lines(ids) == [2, 3]


def test_bare_numbers_stay_text():
    ds = Source(path=str(FAULTS / "numbers.tsv")).dataset(["sentence", "label"])
    assert [r["sentence"] for r in ds] == ["10", "1987", "3000"]


def test_missing_column_names_the_key_the_columns_and_the_fix():
    with pytest.raises(DataError) as err:
        read_all("missing_column.tsv")
    assert str(err.value) == (
        f"data.text_column: 'sentence' is not a column of Source({FAULTS / 'missing_column.tsv'}) "
        "(its columns: text, label); set data.text_column to one of those."
    )


def test_empty_file_is_an_error_naming_it():
    with pytest.raises(DataError) as err:
        read_all("empty.tsv")
    assert str(err.value) == f"data file {FAULTS / 'empty.tsv'} is empty; it has no examples to read."


def test_header_only_file_is_an_error():
    with pytest.raises(DataError, match="has no usable text to train the tokenizer on"):
        read_all("header_only.tsv")


def test_truncated_gzip_is_an_error_naming_file_and_line():
    raw = (FAULTS / "truncated.tsv.gz").read_bytes()
    complete = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(raw).count(b"\n")
    with pytest.raises(DataError) as err:
        list(Source(path=str(FAULTS / "truncated.tsv.gz")).dataset(["sentence", "label"]))
    message = str(err.value)
    assert message.startswith(
        f"{FAULTS / 'truncated.tsv.gz'} is truncated or corrupt after line {complete} ("
    )
    assert message.endswith("); re-download or re-compress the file.")


def test_missing_file_is_an_error_naming_path_and_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_DATA", str(tmp_path))
    with pytest.raises(DataError) as err:
        Source(path="sst2/train.tsv").files()
    assert str(err.value) == (
        f"data file 'sst2/train.tsv' not found (looked for {tmp_path / 'sst2/train.tsv'}); check the path in the "
        "config, or point PIPELINE_DATA at the folder that holds it."
    )


def test_every_record_is_accounted_for():
    """Zero silent drops: kept + skipped == data lines, for every fault file that streams."""
    for name in ["empty_lines.tsv", "undecodable.tsv", "bad_label.tsv", "malformed.tsv", "records.jsonl"]:
        ids, counts, _ = read_all(name)
        raw = (FAULTS / name).read_bytes().splitlines()
        header = 0 if name.endswith(".jsonl") else 1
        assert len(ids) + sum(counts.values()) == len(raw) - header, name


def test_gzip_is_read_transparently(tmp_path):
    path = tmp_path / "small.tsv.gz"
    path.write_bytes(gzip.compress(b"sentence\tlabel\nhello\t1\nworld\t0\n"))
    assert [r["_where"].rsplit(":", 1)[1] for r in Source(path=str(path)).dataset(["sentence", "label"])] == [
        "2",
        "3",
    ]
