"""The fast gray path gives the frames swscale gives, within one grey level, and steps aside where it cannot."""

from __future__ import annotations

import av
import numpy as np
import pytest

from pipeline.data.frame_scaler import FrameScaler
from tests.unit.test_video_data import clip, write_rgb_mp4


def frames_of(path) -> list:
    with av.open(str(path)) as container:
        return list(container.decode(container.streams.video[0]))


def swscale(frame, size, channels: int) -> np.ndarray:
    scaler = FrameScaler(size, channels)
    scaler._factor = 0  # force the general path
    return scaler(frame)


@pytest.mark.parametrize("size", [(32, 40), (16, 20), (8, 10), None])
def test_gray_from_yuv_matches_swscale_within_one_level(tmp_path, size):
    path = tmp_path / "clip.mp4"
    frames = clip(6, size=(32, 40)) + 20  # a bright square over a grey background
    write_rgb_mp4(path, frames, fps=10)
    decoded = frames_of(path)
    fast = FrameScaler(size, 1)
    got = np.stack([fast(f) for f in decoded])
    assert fast._factor == (32 // size[0] if size else 1)  # the luma path was taken
    want = np.stack([swscale(f, size, 1) for f in decoded])
    assert got.shape == want.shape == (6, 1, *(size or (32, 40)))
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    assert got.max() > 200 and got.min() < 40  # the square and the background, not a blank image


@pytest.mark.parametrize(("size", "channels"), [((24, 30), 1), ((16, 20), 3)])
def test_rgb_and_uneven_sizes_use_swscale(tmp_path, size, channels):
    path = tmp_path / "clip.mp4"
    write_rgb_mp4(path, clip(3, size=(32, 40)), fps=10)
    scaler = FrameScaler(size, channels)
    out = [scaler(f) for f in frames_of(path)]
    assert scaler._factor == 0 and out[0].shape == (channels, *size)
