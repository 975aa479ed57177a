"""Resume without replay and elastic resume, at the level of the data loaders (real files, real DataLoader workers).

The end-to-end checks (weights bit-equal after a kill, under DDP too) are tests/integration/test_resume.py; here the
data accounting is checked directly: which examples a resumed loader yields, and how many records it reads first.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from pipeline.data.elastic import rank_states
from pipeline.data.faults import DataError
from pipeline.data.reader import ShardReader
from pipeline.data.sentiment import SentimentData
from pipeline.data.source import Source, data_root
from pipeline.data.tokenizer import Tokenizer

DEV = "sst2/dev.tsv"  # 872 sentences


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("PIPELINE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def data(path: str = DEV, workers: int = 0, buffer_size: int = 128) -> SentimentData:
    return SentimentData(
        train=Source(path=path),
        tokenizer=Tokenizer(vocab_size=400),
        batch_size=16,
        buffer_size=buffer_size,
        num_workers=workers,
    )


def rank_batches(
    workers: int, rank: int, world: int, state: dict | None = None, path: str = DEV
) -> list[dict]:
    """One rank's batches of epoch 0 (the rank-level stream, before the cross-rank equalizing)."""
    loader = data(path, workers).train_dataloader()
    loader.stream.epoch, loader.stream.rank, loader.stream.world = 0, rank, world
    return list(loader._batches(state))


def ids(batches: list[dict]) -> Counter:
    return Counter(i for b in batches for i in b["ids"])


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_loader_continues_exactly_where_it_stopped(workers):
    straight = list(data(workers=workers).train_dataloader())
    for at in (1, len(straight) // 2, len(straight) - 2):
        loader = data(workers=workers).train_dataloader()
        loader.resume_at = (0, at)
        loader.resume_data = {"layout": [1, max(1, workers)], "ranks": [straight[at - 1]["data_state"]]}
        rest = list(loader)
        assert [b["ids"] for b in rest] == [b["ids"] for b in straight[at:]]
        assert [b["position"] for b in rest] == [b["position"] for b in straight[at:]]


def test_the_records_read_on_resume_do_not_depend_on_the_position(tmp_path):
    corpus = tmp_path / "corpus.tsv"
    lines = (data_root() / "sst2/train.tsv").read_text().splitlines()[:6001]
    corpus.write_text("\n".join(lines) + "\n")
    straight = list(data(str(corpus)).train_dataloader())
    read = {}
    for at in (2, len(straight) // 2, len(straight) * 9 // 10):
        loader = data(str(corpus)).train_dataloader()
        loader.resume_at = (0, at)
        loader.resume_data = {"layout": [1, 1], "ranks": [straight[at - 1]["data_state"]]}
        before = ShardReader.records_read
        first = next(iter(loader))
        read[at] = ShardReader.records_read - before
        assert first["ids"] == straight[at]["ids"]
    # one buffer (128 records) whatever the position; a replay would read 16 records per batch consumed
    assert set(read.values()) == {128}, read


@pytest.mark.parametrize(("before", "after"), [((2, 2), (1, 2)), ((1, 2), (2, 2)), ((2, 1), (1, 3))])
def test_elastic_resume_sees_every_example_of_the_epoch_exactly_once(before, after):
    (world, workers), (world2, workers2) = before, after
    streams = [rank_batches(workers, r, world) for r in range(world)]
    at = min(len(s) for s in streams) // 2  # mid-epoch, the ranks in lockstep
    seen = sum((ids(s[:at]) for s in streams), Counter())
    state = {"layout": [world, workers], "ranks": [s[at - 1]["data_state"] for s in streams]}
    stream = data(workers=workers2).train_dataloader().stream
    resumed = rank_states(state, stream, world2, workers2, at)
    for r in range(world2):
        seen += ids(rank_batches(workers2, r, world2, resumed[r]))
    assert len(seen) == 872 and set(seen.values()) == {1}


def test_an_elastic_resume_can_itself_be_resumed_on_another_layout():
    streams = [rank_batches(2, r, 2) for r in range(2)]
    at = min(len(s) for s in streams) // 3
    seen = sum((ids(s[:at]) for s in streams), Counter())
    stream = data(workers=1).train_dataloader().stream
    state = {"layout": [2, 2], "ranks": [s[at - 1]["data_state"] for s in streams]}
    one = rank_batches(1, 0, 1, rank_states(state, stream, 1, 1, at)[0])
    seen += ids(one[:5])
    again = rank_states({"layout": [1, 1], "ranks": [one[4]["data_state"]]}, stream, 2, 1, at + 5)
    for r in range(2):
        seen += ids(rank_batches(1, r, 2, again[r]))
    assert len(seen) == 872 and set(seen.values()) == {1}


def test_a_checkpoint_missing_ranks_is_refused_with_both_layouts():
    stream = data().train_dataloader().stream
    with pytest.raises(DataError, match=r"2 ranks x 2 workers.*1 ranks x 1 workers"):
        rank_states({"layout": [2, 2], "ranks": [{}]}, stream, 1, 1, 3)


def test_shards_are_planned_the_same_in_every_process(tmp_path: Path):
    reader = Source(path=DEV).reader(["sentence", "label"])
    assert reader.plan(4) == Source(path=DEV).reader(["sentence", "label"]).plan(4)
    assert len(reader.plan(4)) == 4 and len(reader.plan(1)) == 1


def test_an_epoch_reads_each_parquet_row_group_once(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [line.split("\t") for line in (data_root() / "sst2/train.tsv").read_text().splitlines()[1:3001]]
    corpus = tmp_path / "corpus.parquet"
    table = pa.table({"sentence": [r[0] for r in rows], "label": [int(r[1]) for r in rows]})
    pq.write_table(table, corpus, row_group_size=3000)
    reads = []
    real = pq.ParquetFile.read_row_group
    monkeypatch.setattr(
        pq.ParquetFile, "read_row_group", lambda self, i, *a, **k: reads.append(i) or real(self, i, *a, **k)
    )
    batches = list(data(str(corpus)).train_dataloader())  # 24 buffers of 128 rows, one row group
    assert sum(len(b["ids"]) for b in batches) == 3000
    assert reads == [
        0
    ]  # a buffer that began its own pass would read and convert the whole group again: 24 times
