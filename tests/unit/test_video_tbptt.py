"""The video task through the shared truncated-BPTT loop: a window covering the clip is full BPTT, shorter windows
carry the state exactly (clips of different lengths included) and really truncate, and the settings TBPTT cannot
honour are clear errors."""

from __future__ import annotations

import pytest
import torch

from pipeline.data import moving_digits as md
from pipeline.data.clips import IGNORE
from pipeline.data.video import VideoData, VideoSource
from pipeline.models.video_classifier import VideoClassifier
from pipeline.tasks.tbptt import truncated_bptt
from pipeline.tasks.video import VideoTask

T = 6


def net(cell: str = "lstm", pooling: str = "last", bidirectional: bool = False) -> VideoClassifier:
    torch.manual_seed(0)
    return VideoClassifier(
        40, 4, frame_channels=1, widths=[4], embed_size=8, grid=2, hidden_size=8, cell=cell,
        bidirectional=bidirectional, pooling=pooling,
    )  # fmt: skip


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """A real batch of 4 generated clips; the second and third cut short (3 and 5 frames), padded as collate pads."""
    out = tmp_path_factory.mktemp("md")
    md.main(["--out", str(out), "--clips", "4", "--val_clips", "1", "--test_clips", "1", "--frames", str(T),
             "--size", "36"])  # fmt: skip
    dm = VideoData(
        train=VideoSource(path=str(out / "train" / "metadata.jsonl")), label_column="class", labels=md.class_names(),
        frame_label_column="frame_labels", frame_labels=list(md.DIRECTIONS), num_frames=T, size=16, channels=1,
        batch_size=4,
    )  # fmt: skip
    batch = dict(next(iter(dm.train_dataloader())))
    lengths = torch.tensor([T, 3, 5, T])
    pad = torch.arange(T)[None, :] >= lengths[:, None]  # (B, T)
    batch["frames"] = batch["frames"].masked_fill(pad[:, :, None, None, None], 0.0)
    batch["frame_labels"] = batch["frame_labels"].masked_fill(pad, IGNORE)
    batch["lengths"] = lengths
    return batch


def tbptt_grads(task: VideoTask, batch: dict, size: int | None) -> list[torch.Tensor]:
    """Accumulate every window's gradient through the shared loop (backward only, no optimizer step)."""
    task.zero_grad()

    def on_loss(loss, window):
        loss.backward()
        return True

    truncated_bptt(lambda w, s: task.window_loss(batch, w, s), T, size, None, on_loss)
    return [p.grad.clone() for p in task.parameters() if p.grad is not None]


def full_grads(task: VideoTask, batch: dict) -> list[torch.Tensor]:
    task.zero_grad()
    task.losses(batch)[0].backward()
    return [p.grad.clone() for p in task.parameters() if p.grad is not None]


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_a_window_covering_the_clip_gives_the_full_bptt_gradient(cell, batch):
    task = VideoTask(net(cell), tbptt_steps=T)
    full = full_grads(task, batch)
    for size in (T, 2 * T):
        got = tbptt_grads(task, batch, size)
        assert len(got) == len(full) > 0
        for a, b in zip(got, full, strict=True):
            torch.testing.assert_close(a, b)


def test_without_tbptt_the_loop_is_full_bptt_for_every_pooling_and_a_birnn(batch):
    for pooling in ("mean", "attention"):
        task = VideoTask(net("gru", pooling=pooling, bidirectional=True))  # tbptt_steps: null
        for a, b in zip(tbptt_grads(task, batch, None), full_grads(task, batch), strict=True):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_windows_carry_the_state_exactly_and_really_truncate(cell, batch):
    task = VideoTask(net(cell), tbptt_steps=2)
    recurrent = [i for i, (name, _) in enumerate(task.named_parameters()) if "weight_hh" in name]
    truncated, full = tbptt_grads(task, batch, 2), full_grads(task, batch)
    assert any(not torch.allclose(truncated[i], full[i]) for i in recurrent)
    with torch.no_grad():  # forward values: 3 windows of 2 frames read the clips like one pass
        clip, frame = task(batch["frames"], batch["lengths"])
        task._window_logits = []
        truncated_bptt(lambda w, s: task.window_loss(batch, w, s), T, 2, None, lambda loss, w: True)
    rows = torch.cat([ends for ends, _, _ in task._window_logits])
    # each clip's loss once, in the window it ends in (the second, frames 2-3, for the 3-frame clip)
    assert sorted(rows.tolist()) == [0, 1, 2, 3]
    assert task._window_logits[1][0].tolist() == [1] and task._window_logits[2][0].tolist() == [0, 2, 3]
    windowed_clip = torch.cat([c for _, c, _ in task._window_logits if c is not None])
    torch.testing.assert_close(windowed_clip, clip[rows], atol=1e-5, rtol=1e-4)
    windowed_frames = torch.cat([f for _, _, f in task._window_logits], dim=1)
    real = batch["frame_labels"] != IGNORE
    torch.testing.assert_close(windowed_frames[real], frame[real], atol=1e-5, rtol=1e-4)


def test_settings_tbptt_cannot_honour_are_clear_errors():
    with pytest.raises(ValueError, match=r"tbptt_steps needs model\.network\.bidirectional: false"):
        VideoTask(net(bidirectional=True), tbptt_steps=5)
    for pooling in ("mean", "attention"):
        with pytest.raises(ValueError, match=rf"needs model\.network\.pooling: last, not {pooling}"):
            VideoTask(net(pooling=pooling), tbptt_steps=5)
    VideoTask(net(pooling="mean"), clip_weight=0.0, tbptt_steps=5)  # no clip loss: any pooling
    with pytest.raises(ValueError, match="set it to 1 or more frames"):
        VideoTask(net(), tbptt_steps=0)
