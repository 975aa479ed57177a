"""Decoded video frames to uint8 arrays of the training size, at a cost small beside the decoding itself.

FFmpeg's swscale does any conversion (pixel format, range, size), at about 90 us per small frame: 20 frames cost
three times the decoding of their clip. Gray frames from planar 8-bit YUV, the common case, need none of its
generality: the luma plane is the gray image (up to the range), and shrinking by a whole factor is a block mean::

    Y plane (H, W) uint8 ──► sum of f x f blocks (H/f, W/f) ──► lookup table: mean, limited range 16..235 -> 0..255
                                                                 (full-range "yuvj" sources: mean only)

Every other case (RGB, packed or 10-bit formats, sizes that are not a whole factor) goes to swscale, one context
per clip. The two paths differ by at most one grey level (rounding).
"""

from __future__ import annotations

import av
import numpy as np
from av.video.reformatter import VideoReformatter

FULL_RANGE = 2  # AVCOL_RANGE_JPEG


class FrameScaler:
    """Turns the frames of one clip into (C, H, W) uint8 arrays; build one per clip."""

    def __init__(self, size: tuple[int, int] | None, channels: int) -> None:
        self.height, self.width = size if size else (None, None)
        self.channels = channels
        self.swscale = VideoReformatter()
        self._factor: int | None = None  # the luma path's block size, decided on the first frame (0: swscale)
        self._table: np.ndarray | None = None

    def _plan(self, frame: av.VideoFrame) -> int:
        name = frame.format.name
        planar_8bit = name.startswith(("yuv", "yuvj")) and name.endswith("p")
        if self.channels != 1 or not planar_8bit:
            return 0
        h, w = frame.height, frame.width
        f = h // self.height if self.height else 1
        if f < 1 or (self.height and (h % self.height or self.width * f != w or self.height * f != h)):
            return 0
        full = name.startswith("yuvj") or getattr(frame, "color_range", 0) == FULL_RANGE
        mean = np.arange(255 * f * f + 1, dtype=np.float64) / (f * f)  # block sum -> mean
        gray = mean if full else (mean - 16.0) * (255.0 / 219.0)
        self._table = np.clip(np.rint(gray), 0, 255).astype(np.uint8)
        return f

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        """One frame -> (C, H, W) uint8."""
        if self._factor is None:
            self._factor = self._plan(frame)
        if not self._factor:
            fmt = "gray" if self.channels == 1 else "rgb24"
            array = self.swscale.reformat(
                frame, width=self.width, height=self.height, format=fmt, interpolation="AREA"
            ).to_ndarray()
            return array[None] if self.channels == 1 else array.transpose(2, 0, 1)
        plane = frame.planes[0]
        luma = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, : plane.width]
        f = self._factor
        if f > 1:
            h, w = luma.shape
            sums = luma.reshape(h // f, f, w // f, f).sum(axis=(1, 3), dtype=np.uint32)  # (H/f, W/f)
        else:
            sums = luma
        return self._table[sums][None]  # (1, H, W)
