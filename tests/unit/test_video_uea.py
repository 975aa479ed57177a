"""The .ts reader on the real NATOPS files: shapes, classes, a stratified holdout that never touches test."""

from __future__ import annotations

import collections

import pytest

from pipeline.data.faults import DataError
from pipeline.data.uea import UEAData, UEASource

TRAIN = "video/natops/NATOPS_TRAIN.ts"


def all_batches(dm, val=False):
    return list(dm.val_dataloader() if val else dm.train_dataloader())


def test_natops_holdout_is_stratified_and_disjoint():
    dm = UEAData(
        train=UEASource(path=TRAIN, part="rest"), val=UEASource(path=TRAIN, part="holdout"), batch_size=64
    )
    assert (
        dm.num_classes == 6
        and dm.labels == ["1.0", "2.0", "3.0", "4.0", "5.0", "6.0"]
        and dm.feature_size == 24
    )
    train, val = all_batches(dm), all_batches(dm, val=True)
    train_ids = {i for b in train for i in b["ids"]}
    val_ids = {i for b in val for i in b["ids"]}
    assert len(train_ids) == 144 and len(val_ids) == 36 and not train_ids & val_ids
    assert collections.Counter(int(y) for b in val for y in b["labels"]) == {c: 6 for c in range(6)}
    assert train[0]["frames"].shape[1:] == (51, 24)
    frames = [b["frames"] for b in train]
    mean = sum(f.sum((0, 1)) for f in frames) / sum(f.shape[0] * f.shape[1] for f in frames)
    assert mean.abs().max() < 1e-3  # standardized with statistics of the training part


def test_malformed_ts_lines_are_skipped_and_counted(tmp_path):
    path = tmp_path / "x.ts"
    path.write_text(
        "# comment\n@problemName X\n@dimensions 2\n@classLabel true a b\n@data\n"
        "1,2,3:4,5,6:a\n1,2:4,5,6:b\n1,2,3:b\n1,2,x:4,5,6:a\n7,8,9:1,2,3:b\n"
    )
    dm = UEAData(train=UEASource(path=str(path)), batch_size=8, standardize=False)
    (batch,) = all_batches(dm)
    assert dm.feature_size == 2 and batch["frames"].shape == (2, 3, 2)
    assert batch["frames"][0, :, 0].tolist() in ([1, 2, 3], [7, 8, 9])
    assert dm.fault_counts() == {"malformed": 3}


def test_not_a_ts_file(tmp_path):
    (tmp_path / "x.ts").write_text("1,2,3:a\n")
    with pytest.raises(DataError, match="has no @data line"):
        _ = UEAData(train=UEASource(path=str(tmp_path / "x.ts"))).feature_size


def test_test_split_is_the_uea_sibling_file():
    dm = UEAData(
        train=UEASource(path=TRAIN, part="rest"), val=UEASource(path=TRAIN, part="holdout"), batch_size=64
    )
    dm.use_split("test")
    ids = {i for b in all_batches(dm, val=True) for i in b["ids"]}
    assert len(ids) == 180 and all(i.startswith("video/natops/NATOPS_TEST.ts:") for i in ids)
