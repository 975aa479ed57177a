"""Pictures for the tracking run, drawn with PIL."""

from __future__ import annotations

import numpy as np
from PIL import Image

from pipeline.tasks import video_media


def test_confusion_image_and_gif(tmp_path):
    matrix = np.eye(40, dtype=int) * 5
    img = video_media.confusion_image(matrix, [f"c{i}" for i in range(40)])
    assert img.width > 40 * 6 and img.height > 40 * 6
    frames = np.zeros((6, 1, 24, 24), dtype=np.uint8)
    frames[:, :, 5:10, 5:10] = 255
    pics = video_media.annotated_frames(
        frames, "3-left-up", "3-left-up", ["left-up"] * 6, ["left-up"] * 5 + ["x"]
    )
    gif = video_media.save_gif(pics, tmp_path / "s" / "clip.gif")
    with Image.open(gif) as im:
        assert im.n_frames == 6
    strip = video_media.filmstrip(pics, per_row=4)
    assert strip.width == 4 * pics[0].width and strip.height == 2 * pics[0].height
