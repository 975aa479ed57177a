"""The LRCN model: shapes, padding invariance, every pooling and cell; the frame encoders."""

from __future__ import annotations

import pytest
import torch

from pipeline.models.frame_encoder import FrameCNN
from pipeline.models.video_classifier import VideoClassifier


@pytest.mark.parametrize("pooling", ["last", "mean", "attention"])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_padding_does_not_change_a_clip(cell, pooling):
    torch.manual_seed(0)
    net = VideoClassifier(
        40,
        4,
        frame_channels=1,
        widths=[4, 8],
        embed_size=16,
        grid=2,
        hidden_size=8,
        cell=cell,
        pooling=pooling,
    ).eval()
    short = torch.randn(1, 5, 1, 24, 24)
    padded = torch.cat([short, torch.randn(1, 3, 1, 24, 24)], 1)  # garbage where the batch pads
    batch = torch.cat([padded, torch.randn(1, 8, 1, 24, 24)])
    with torch.no_grad():
        alone_clip, alone_frames = net(short, torch.tensor([5]))
        clip, frames = net(batch, torch.tensor([5, 8]))
    assert clip.shape == (2, 40) and frames.shape == (2, 8, 4)
    torch.testing.assert_close(clip[0], alone_clip[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(frames[0, :5], alone_frames[0], atol=1e-5, rtol=1e-4)


def test_feature_frames_and_no_frame_head():
    net = VideoClassifier(6, feature_size=24, encoder="identity", embed_size=None, cell="gru", hidden_size=8)
    clip, frames = net(torch.randn(3, 51, 24), torch.tensor([51, 51, 40]))
    assert clip.shape == (3, 6) and frames is None


def test_cnn_keeps_position():
    """Moving a digit changes the frame vector: the grid keeps where things are (a direction needs that)."""
    torch.manual_seed(0)
    cnn = FrameCNN(1, [8, 16], out_size=32, grid=4).eval()
    a, b = torch.zeros(2, 1, 32, 32), torch.zeros(2, 1, 32, 32)
    a[:, :, 4:12, 4:12] = 1
    b[:, :, 4:12, 20:28] = 1
    assert (cnn(a) - cnn(b)).abs().max() > 1e-3


def test_wrong_encoder_for_the_frames_is_a_clear_error():
    with pytest.raises(ValueError, match="cnn encoder needs image frames"):
        VideoClassifier(6, feature_size=24, encoder="cnn")
