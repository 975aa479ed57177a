"""Sources split without reading everything: byte ranges of one text file, whole files, parquet row groups, gzip
read whole (and said once), and a local folder laid out as a hub dataset repository streamed through datasets."""

from __future__ import annotations

import gzip
import logging
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data.sentiment import SentimentData
from pipeline.data.shards import CountingFile, plan_files, text_lines
from pipeline.data.source import Source, data_root
from pipeline.data.tokenizer import Tokenizer

TRAIN = data_root() / "sst2/train.tsv"


def sample(tmp_path: Path, rows: int = 5000) -> tuple[Path, list[str]]:
    lines = TRAIN.read_text().splitlines()[: rows + 1]  # header + rows
    path = tmp_path / "sample.tsv"
    path.write_text("\n".join(lines) + "\n")
    return path, lines


def test_a_4_node_split_reads_disjoint_byte_ranges_that_cover_the_file(tmp_path):
    path, lines = sample(tmp_path)
    size = path.stat().st_size
    shards = plan_files([str(path)], nodes=4)
    assert len(shards) == 4
    before = CountingFile.total
    spans = [(byte, after[0]) for shard in shards for _, byte, _, after in text_lines(shard, None)]
    read = CountingFile.total - before
    spans.sort()
    assert spans[0][0] == 0 and spans[-1][1] == size
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))  # disjoint and no gap
    assert len(spans) == len(lines)
    longest = max(len(line) + 1 for line in lines)
    assert size <= read <= size + 3 * longest  # each range but the first re-reads at most one line's tail


def test_ranges_of_a_tsv_give_every_record_once_with_its_columns(tmp_path):
    path, lines = sample(tmp_path)
    reader = Source(path=str(path)).reader(["sentence", "label"])
    records = [r for shard in reader.plan(4) for r, _ in reader.records(shard, None)]
    assert sorted(r["sentence"] for r in records) == sorted(line.split("\t")[0] for line in lines[1:])
    assert {r["label"] for r in records} == {"0", "1"} and not any(r["_fault"] for r in records)


def test_many_files_are_shards_of_their_own_and_parquet_splits_by_row_group(tmp_path):
    path, lines = sample(tmp_path, 3000)
    table = pa.table(
        {
            "sentence": [ln.split("\t")[0] for ln in lines[1:]],
            "label": [ln.split("\t")[1] for ln in lines[1:]],
        }
    )
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=1000)
    shards = plan_files([str(tmp_path / "a.parquet"), str(path)], nodes=2)
    assert [s[0] for s in shards] == ["rowgroup"] * 3 + ["text"]
    reader = Source(path=[str(tmp_path / "a.parquet")]).reader(["sentence", "label"])
    rows = [r for shard in reader.plan(3) for r, _ in reader.records(shard, None)]
    assert len(rows) == 3000 and rows[1500]["_where"].endswith("a.parquet#1500")
    resumed = [r["_where"] for r, _ in reader.records(reader.plan(3)[1], 400)]
    assert resumed[0].endswith("#1400") and len(resumed) == 600


def test_a_gzip_file_is_read_whole_and_said_once(tmp_path, caplog):
    path, lines = sample(tmp_path, 500)
    gz = tmp_path / "sample.tsv.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    with caplog.at_level(logging.WARNING, logger="pipeline.data"):
        assert plan_files([str(gz)], nodes=4) == [("gzip", str(gz))]
        plan_files([str(gz)], nodes=4)
    said = [r.getMessage() for r in caplog.records if "gzip" in r.getMessage()]
    assert len(said) == 1 and str(gz) in said[0] and "decompress" in said[0]
    reader = Source(path=str(gz)).reader(["sentence", "label"])
    assert len([r for r, _ in reader.records(reader.plan(4)[0], None)]) == 500


def hub_folder(tmp_path: Path) -> Path:
    """A folder laid out as a hub dataset repository: parquet shards under data/, a README with ``configs:``."""
    folder = tmp_path / "sst2-hub"
    (folder / "data").mkdir(parents=True)
    _, lines = sample(tmp_path, 4000)
    rows = [ln.split("\t") for ln in lines[1:]]
    for i in range(4):
        part = rows[i::4]
        table = pa.table({"sentence": [r[0] for r in part], "label": [int(r[1]) for r in part]})
        pq.write_table(table, folder / "data" / f"train-0000{i}-of-00004.parquet")
    (folder / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*\n---\n# sst2\n"
    )
    return folder


def test_a_local_hub_layout_streams_through_load_dataset_sharded_by_file(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_CACHE", str(tmp_path / "cache"))
    folder = hub_folder(tmp_path)
    source = Source(hub=str(folder), split="train")
    source.require({"data.text_column": "sentence", "data.label_column": "label"})
    reader = source.reader(["sentence", "label"])
    shards = reader.plan(2)
    assert len(shards) == 4  # one per parquet file, dealt out whole
    dm = SentimentData(train=source, tokenizer=Tokenizer(vocab_size=400), batch_size=64, buffer_size=500)
    per_node = []
    for rank in range(2):
        loader = dm.train_dataloader()
        loader.stream.epoch, loader.stream.rank, loader.stream.world = 0, rank, 2
        per_node.append(Counter(i for b in loader._batches(None) for i in b["ids"]))
    assert sum(len(c) for c in per_node) == 4000 and not set(per_node[0]) & set(per_node[1])


def test_the_shard_reader_gives_the_records_and_faults_of_the_plain_reader():
    """Every file of the fault corpus, read by ranges (1 and 3 nodes), against the whole-file reader."""
    folder = Path(__file__).resolve().parents[1] / "data" / "faults"
    for path in sorted(folder.glob("*.tsv")):
        if path.stat().st_size == 0:
            continue
        source = Source(path=str(path))
        columns = ["sentence", "label"] if "sentence" in (source.columns() or []) else source.columns()[:1]
        plain = list(source.dataset(columns))
        reader = source.reader(columns)
        whole = [r for shard in reader.plan(1) for r, _ in reader.records(shard, None)]
        assert whole == plain, path.name
        split = [r for shard in reader.plan(3) for r, _ in reader.records(shard, None)]
        key = [(r["_fault"], *(r[c] for c in columns)) for r in plain]
        assert sorted(map(str, key)) == sorted(str((r["_fault"], *(r[c] for c in columns))) for r in split), (
            path.name
        )
