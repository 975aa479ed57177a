"""The video task's losses and its hooks, on real generated clips."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.data import moving_digits as md
from pipeline.data.video import VideoData, VideoSource
from pipeline.models.video_classifier import VideoClassifier
from pipeline.tasks.video import VideoTask


def net(frame_classes: int = 4) -> VideoClassifier:
    torch.manual_seed(0)
    return VideoClassifier(
        40, frame_classes, frame_channels=1, widths=[4], embed_size=8, grid=2, hidden_size=8
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("md")
    md.main(["--out", str(out), "--clips", "4", "--val_clips", "1", "--test_clips", "1", "--frames", "6",
             "--size", "36"])  # fmt: skip
    dm = VideoData(
        train=VideoSource(path=str(out / "train" / "metadata.jsonl")), label_column="class", labels=md.class_names(),
        frame_label_column="frame_labels", frame_labels=list(md.DIRECTIONS), num_frames=6, size=16, channels=1,
        batch_size=4,
    )  # fmt: skip
    return out, dm, next(iter(dm.train_dataloader()))


def test_loss_weights(data):
    _, _, batch = data
    both = VideoTask(net(), clip_weight=1.0, frame_weight=0.5)
    clip_only = VideoTask(net(), clip_weight=1.0, frame_weight=0.0)
    loss, clip, frame, labels = both.losses(batch)
    ce_clip = F.cross_entropy(clip, batch["labels"])
    ce_frame = F.cross_entropy(frame.flatten(0, 1), labels.flatten(), ignore_index=-100)
    torch.testing.assert_close(loss, ce_clip + 0.5 * ce_frame)
    torch.testing.assert_close(clip_only.losses(batch)[0], ce_clip)


def test_no_loss_left_is_a_clear_error():
    with pytest.raises(ValueError, match="leave no loss"):
        VideoTask(net(frame_classes=0), clip_weight=0.0)


def test_predict_lines_reads_video_files(data):
    out, dm, _ = data
    lines = VideoTask(net()).predict_lines([str(out / "test" / "clips" / "000000.mp4")], dm)
    label, prob, frames = lines[0].split("\t")
    assert label in md.class_names() and 0 < float(prob) <= 1
    assert len(frames.split()) == 6 and set(frames.split()) <= set(md.DIRECTIONS)


def test_use_split_test_reads_the_generated_test_clips(data):
    out, dm, _ = data
    dm.use_split("test")
    (batch,) = list(dm.val_dataloader())
    assert batch["ids"] == [f"{out}/test/metadata.jsonl:1"]
