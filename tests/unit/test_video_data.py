"""Video data through the real streaming path: bad files, short clips, any size and fps, sampling."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.data import moving_digits as md
from pipeline.data.clips import IGNORE, frame_indices
from pipeline.data.faults import DataError
from pipeline.data.video import VideoData, VideoSource

DIRS = list(md.DIRECTIONS)


def clip(n: int, size: tuple[int, int] = (36, 40), seed: int = 0) -> np.ndarray:
    """n gray frames (n, H, W) with a bright square moving right."""
    frames = np.zeros((n, *size), dtype=np.uint8)
    for t in range(n):
        frames[t, 5:15, 2 + 2 * t : 12 + 2 * t] = 200 + seed
    return frames


def write_rgb_mp4(path, frames: np.ndarray, fps: int) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for f in frames:
            rgb = np.repeat(f[:, :, None], 3, axis=2)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def drain(dm: VideoData) -> list[dict]:
    return list(dm.train_dataloader())


@pytest.fixture
def folder(tmp_path):
    """Class folders with 3 good clips and 3 bad files: empty, garbage, and an mp4 cut in half."""
    for name, label in [("a1", "a"), ("a2", "a"), ("b1", "b")]:
        (tmp_path / label).mkdir(exist_ok=True)
        md.write_mp4(tmp_path / label / f"{name}.mp4", clip(10))
    (tmp_path / "a" / "empty.mp4").write_bytes(b"")
    (tmp_path / "b" / "garbage.mp4").write_bytes(b"not a video at all " * 50)
    whole = (tmp_path / "a" / "a1.mp4").read_bytes()
    (tmp_path / "b" / "cut.mp4").write_bytes(whole[: len(whole) // 2])
    return tmp_path


def test_corrupted_and_empty_videos_are_skipped_and_counted(folder):
    dm = VideoData(train=VideoSource(path=str(folder)), num_frames=4, size=16, channels=1, batch_size=2)
    batches = drain(dm)
    assert dm.labels == ["a", "b"]
    assert sum(len(b["labels"]) for b in batches) == 3
    assert dm.fault_counts() == {"bad_video": 3}
    assert batches[0]["frames"].shape[1:] == (4, 1, 16, 16)


def test_corrupted_video_error_names_the_file(folder):
    (folder / "a" / "empty.mp4").unlink()  # leave garbage.mp4 as the one bad file
    (folder / "b" / "cut.mp4").unlink()
    dm = VideoData(train=VideoSource(path=str(folder)), num_frames=4, size=16, channels=1, bad_videos="error")
    with pytest.raises(DataError, match=r"video .*garbage\.mp4 .* cannot be decoded .*data.bad_videos: skip"):
        drain(dm)


@pytest.fixture
def short_clips(tmp_path):
    """A metadata file with a 6-frame and a 10-frame clip, per-frame labels included."""
    rows = []
    for i, n in enumerate([6, 10]):
        md.write_mp4(tmp_path / f"c{i}.mp4", clip(n, seed=i))
        rows.append(
            f'{{"file": "c{i}.mp4", "label": "x", "frames": "{" ".join(str(t % 4) for t in range(n))}"}}'
        )
    (tmp_path / "meta.jsonl").write_text("\n".join(rows) + "\n")
    return tmp_path / "meta.jsonl"


def short_data(meta, policy: str) -> VideoData:
    return VideoData(
        train=VideoSource(path=str(meta)), frame_label_column="frames", frame_labels=DIRS, num_frames=8,
        short_clips=policy, size=None, channels=1, batch_size=4, buffer_size=4,
    )  # fmt: skip


def test_short_clip_padded(short_clips):
    dm = short_data(short_clips, "pad")
    (batch,) = drain(dm)
    assert sorted(batch["lengths"].tolist()) == [6, 8]
    short = int(batch["lengths"].argmin())
    assert batch["frame_labels"][short].tolist() == [0, 1, 2, 3, 0, 1, IGNORE, IGNORE]
    assert batch["frames"].shape == (2, 8, 1, 36, 40)  # native size kept with size: null
    assert batch["frames"][short, 6:].abs().sum() == 0


def test_short_clip_looped(short_clips):
    (batch,) = drain(short_data(short_clips, "loop"))
    assert batch["lengths"].tolist() == [8, 8]
    short = [i for i in range(2) if batch["frame_labels"][i].tolist() == [0, 1, 2, 3, 0, 1, 0, 1]]
    assert len(short) == 1
    frames = batch["frames"][short[0]]
    assert (frames[6] == frames[0]).all() and (frames[7] == frames[1]).all()


def test_short_clip_skipped_and_counted(short_clips):
    dm = short_data(short_clips, "skip")
    (batch,) = drain(dm)
    assert batch["lengths"].tolist() == [8] and dm.fault_counts() == {"short_clip": 1}


def test_any_size_and_fps_resized_to_config(tmp_path):
    write_rgb_mp4(tmp_path / "wide.mp4", clip(12, (48, 80)), fps=25)
    md.write_mp4(tmp_path / "small.mp4", clip(30, (36, 40)), fps=5)
    (tmp_path / "m.csv").write_text("file,label\nwide.mp4,w\nsmall.mp4,s\n")
    dm = VideoData(train=VideoSource(path=str(tmp_path / "m.csv")), num_frames=5, size=[24, 32], channels=3)
    (batch,) = drain(dm)
    assert dm.labels == ["s", "w"]
    assert batch["frames"].shape == (2, 5, 3, 24, 32)
    assert batch["decoded"] >= 10 and batch["decode_s"] > 0  # throughput bookkeeping travels with the batch


def test_frame_indices():
    assert frame_indices(10, 4) == [1, 3, 6, 8]  # centres of 4 equal segments
    assert frame_indices(20, 20) == list(range(20))
    assert frame_indices(10, 3, "stride", 3) == [0, 3, 6]
    assert frame_indices(10, None, "stride", 4) == [0, 4, 8]
    assert frame_indices(3, 5, short="pad") == [0, 1, 2]
    assert frame_indices(3, 5, short="loop") == [0, 1, 2, 0, 1]
    assert frame_indices(3, 5, short="skip") is None
    assert frame_indices(10, 4, "stride", 3, short="skip") == [0, 3, 6, 9]
    assert frame_indices(10, 5, "stride", 3, short="skip") is None  # only 4 frames at stride 3


def test_missing_metadata_says_how_to_make_clips(tmp_path):
    dm = VideoData(train=VideoSource(path=str(tmp_path / "nope" / "metadata.jsonl")), labels=["a"])
    with pytest.raises(
        DataError, match=r"'.*nope/metadata.jsonl' not found; .*python -m pipeline.data.moving_digits"
    ):
        dm.check()
