"""The moving-digits generator: real mp4 files that decode back to the frames written, disjoint digit pools."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.data import moving_digits as md
from pipeline.data.clips import frame_indices
from pipeline.data.video import read_clip


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("clips")
    md.main(
        [
            "--out",
            str(out),
            "--clips",
            "12",
            "--val_clips",
            "4",
            "--test_clips",
            "4",
            "--frames",
            "12",
            "--size",
            "40",
            "--seed",
            "3",
        ]
    )
    rows = {s: [json.loads(line) for line in open(out / s / "metadata.jsonl")] for s in md.SPLITS}
    return out, rows


def test_mp4_decodes_back_to_the_written_frames(generated):
    out, rows = generated
    images, _ = md.load_mnist()
    for row in rows["train"][:4] + rows["test"][:2]:
        split = "train" if row in rows["train"] else "test"
        written = md.render(images[row["digit_index"]], np.array(row["positions"]), row["size"])  # (T, H, W)
        frames, n, indices, _ = read_clip(
            str(out / split / row["file"]), lambda n: frame_indices(n, None), None, 1
        )
        assert n == len(written) == 12 and indices == list(range(12))
        assert frames.shape == (12, 1, 40, 40)
        # lossless H.264 in YUV; gray -> limited-range YUV -> gray rounds by at most one grey level
        assert np.abs(frames[:, 0].astype(int) - written.astype(int)).max() <= 2
        assert written.max() > 100  # the digit is there, so the comparison is not between black frames


def test_generated_splits_share_no_digit_image(generated):
    _, rows = generated
    used = {s: {r["digit_index"] for r in rows[s]} for s in md.SPLITS}
    assert (
        not used["train"] & used["val"]
        and not used["train"] & used["test"]
        and not used["val"] & used["test"]
    )
    pools = md.split_pools(10_000)
    assert sum(len(p) for p in pools.values()) == len(set(np.concatenate(list(pools.values())))) == 10_000
    for split in md.SPLITS:  # every clip's digit comes from its own split's pool
        assert used[split] <= set(pools[split].tolist())


def test_labels_follow_the_motion(generated):
    _, rows = generated
    bounces = 0
    for row in rows["train"]:
        pos = np.array(row["positions"])
        dirs = [int(d) for d in row["frame_labels"].split()]
        for t in range(len(pos) - 1):  # the direction at t is the sign of the move from t to t + 1
            dx, dy = pos[t + 1] - pos[t]
            assert dirs[t] == md.direction_of(dx, dy)
        bounces += sum(a != b for a, b in zip(dirs, dirs[1:], strict=False))
        assert row["label"] == row["digit"] * 4 + dirs[0]
        assert row["class"] == md.class_names()[row["label"]] == f"{row['digit']}-{md.DIRECTIONS[dirs[0]]}"
    assert bounces > 0  # labels change when the digit bounces
    assert md.class_names() == sorted(
        md.class_names()
    )  # sorted names = label order (labels: null infers this)


def test_too_small_canvas_is_a_clear_error(tmp_path):
    images, labels = md.load_mnist()
    with pytest.raises(md.DataError, match="--size 30 leaves no room"):
        md.generate_split(tmp_path, "train", 1, images, labels, np.arange(10), size=30)
