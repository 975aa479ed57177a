"""Video classification data: real video files in (any length, fps, resolution), clips of frames out.

The stream carries *file names*, not pixels: a ``datasets`` stream of records ``{file, label[, frame_labels]}`` from
a metadata file or a folder of class sub-folders goes through the spine's path (shuffle, split per rank and
DataLoader worker); each worker decodes its own clips with PyAV (FFmpeg), so decoding runs in parallel with training::

    metadata.jsonl / class folders ──► records (file name, labels) ──► per (rank, worker) share
        ──► encode: open with PyAV, count frames, pick frame indices (clips.frame_indices), decode up to the last
            picked frame, convert only the picked ones (swscale: resize + gray/RGB in one C call) ─► uint8 (T, C, H, W)
        ──► collate: pad to (B, T, C, H, W), normalise, lengths, labels, per-frame labels
    a file FFmpeg cannot open or decode: skipped and counted as bad_video (or a DataError naming it, bad_videos: error)

Decoding throughput is measured per worker (frames decoded / seconds spent in PyAV) and travels with each batch
(``decoded``, ``decode_s``); the task logs it as ``data/decode_fps``.
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import av
import datasets
import numpy as np
import torch

from pipeline.data.clips import ClipData, Sampling, ShortClips, parse_frame_labels, sort_labels
from pipeline.data.faults import DataError, FaultCounter
from pipeline.data.frame_scaler import FrameScaler
from pipeline.data.source import Source, data_root, read_records

VIDEO_EXTENSIONS = (
    ".mp4",
    ".m4v",
    ".mov",
    ".avi",
    ".mkv",
    ".webm",
    ".mpg",
    ".mpeg",
    ".ogv",
    ".wmv",
    ".flv",
    ".gif",
)


class BadVideo(Exception):
    """A video file that opens but has nothing to decode."""


def _where(path: str) -> str:
    root = str(data_root())
    return os.path.relpath(path, root) if path.startswith(root + os.sep) else path


def folder_records(files: list[str], root: str) -> Iterator[dict]:
    """Records of a class-folder corpus: ``root/<class>/<clip>`` -> ``{file, label=<class>}``."""
    for path in files:
        label = os.path.basename(os.path.dirname(path))
        yield {"file": path, "label": label, "_where": _where(path), "_fault": ""}


def metadata_records(
    files: list[str], fmt: str, columns: tuple[str, ...], header: tuple[str, ...] | None, file_column: str
) -> Iterator[dict]:
    """Records of metadata files; each clip's file name is resolved against its metadata file's folder."""
    root = str(data_root())
    for meta in files:
        folder = os.path.dirname(meta)
        for record in read_records([meta], fmt, columns, header, root):
            name = record.get(file_column)
            if name and not os.path.isabs(name) and "://" not in name:
                record[file_column] = os.path.join(folder, name)
            yield record


@dataclass(repr=False)
class VideoSource(Source):
    """Where one split of a video corpus comes from.

    Args:
        path: A metadata file (jsonl / csv / tsv; one row per clip naming its video file, relative to the metadata
            file's folder unless absolute, and its labels), or a folder with one sub-folder per class that holds the
            video files. Absolute; relative to the working directory when it starts with ``./`` or ``../``; else
            relative to the data root. Mutually exclusive with ``hub``.
        hub: A Hugging Face hub dataset id whose file column holds paths or URLs that FFmpeg can open.
        split: The hub split to read.
        name: The hub dataset configuration name.
        format: Metadata file format (``auto``: from the extension).
        header: Column names for a csv/tsv metadata file without a header row.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.path, str) and self.path.startswith(("./", "../")):
            self.path = os.path.abspath(self.path)

    def folder(self) -> Path | None:
        """The class-folder root, or None for metadata files and hub datasets."""
        if self.hub or not isinstance(self.path, str):
            return None
        full = Path(self.path) if os.path.isabs(self.path) else data_root() / self.path
        return full if full.is_dir() else None

    def classes(self) -> list[str]:
        root = self.folder()
        assert root is not None
        return sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))

    def files(self) -> list[str]:
        root = self.folder()
        if root is None and isinstance(self.path, str):
            pattern = self.path
            full = pattern if os.path.isabs(pattern) else str(data_root() / pattern)
            if not glob.glob(full):
                raise DataError(
                    f"video metadata or folder '{pattern}' not found; fix the path in the config, or make moving-digits "
                    f"clips there with `python -m pipeline.data.moving_digits --out <folder>`."
                )
        if root is None:
            return super().files()
        found = sorted(
            str(f)
            for f in root.glob("*/*")
            if f.suffix.lower() in VIDEO_EXTENSIONS and not f.name.startswith(".")
        )
        if not found:
            raise DataError(
                f"{root} holds no video files in class sub-folders ({root}/<class>/<clip>.mp4); check data paths."
            )
        return found

    def columns(self) -> list[str]:
        return ["file", "label"] if self.folder() is not None else super().columns()

    def dataset(self, columns: list[str], file_column: str = "file") -> datasets.IterableDataset:
        root = self.folder()
        features = datasets.Features({c: datasets.Value("string") for c in [*columns, "_where", "_fault"]})
        if root is not None:
            return datasets.IterableDataset.from_generator(
                folder_records, features=features, gen_kwargs={"files": self.files(), "root": str(root)}
            )
        if self.hub or self.format == "parquet":
            return super().dataset(columns)
        return datasets.IterableDataset.from_generator(
            metadata_records,
            features=features,
            gen_kwargs={
                "files": self.files(),
                "fmt": self.format,
                "columns": tuple(columns),
                "header": tuple(self.header) if self.header else None,
                "file_column": file_column,
            },
        )


def read_clip(
    path: str,
    pick: Callable[[int], list[int] | None],
    size: tuple[int, int] | None,
    channels: int,
    n: int = 0,
) -> tuple[np.ndarray | None, int, list[int] | None, int]:
    """Decode the frames ``pick(n)`` selects out of the clip's ``n`` frames.

    Returns ``(frames (T, C, H, W) uint8 or None when pick refused, n, indices, frames decoded)``. ``n`` comes from the
    container's header, or from counting packets when the header has none; a file that decodes fewer frames than it
    declares is read again with the true count.
    """
    with av.open(path) as container:
        if not container.streams.video:
            raise BadVideo("it has no video stream")
        stream = container.streams.video[0]
        stream.thread_count = 1  # one decoding thread per DataLoader worker: workers are the parallelism
        n = n or stream.frames
        if n <= 0:
            n = sum(1 for packet in container.demux(stream) if packet.size)
            if n == 0:
                raise BadVideo("it has no frames")
            return read_clip(path, pick, size, channels, n)
        indices = pick(n)
        if indices is None:
            return None, n, None, 0
        wanted, last, got, decoded = set(indices), max(indices), {}, 0
        scale = FrameScaler(size, channels)
        for i, frame in enumerate(container.decode(stream)):
            decoded += 1
            if i in wanted:
                got[i] = scale(frame)  # (C, H, W) uint8
            if i >= last:
                break
    if decoded <= last:
        if decoded == 0:
            raise BadVideo("it has no decodable frames")
        return read_clip(path, pick, size, channels, decoded)
    return np.stack([got[i] for i in indices]), n, indices, decoded


class VideoData(ClipData):
    """Folders or metadata files of video clips with a clip label and, optionally, one label per frame.

    Args:
        train: Training split (a metadata file, a class-folder root, or a hub id; see VideoSource).
        val: Validation split.
        file_column: Metadata column with the video file (path relative to the metadata file, absolute, or a URL).
        label_column: Metadata column with the clip label (class folders: the folder name).
        frame_label_column: Metadata column with per-frame labels (one per source frame, space-separated names or
            indices into ``frame_labels``), or null when there are none.
        labels: The clip classes; their order gives the class index. Null: the class folders, or the distinct values
            of the label column in the training split (numeric order when they are numbers, else alphabetical).
            A clip whose label is not one of them is skipped and counted (``bad_label``).
        frame_labels: Names of the per-frame classes (needed with ``frame_label_column``).
        num_frames: Frames per clip after sampling (null: every frame, or every ``stride``-th).
        sampling: ``uniform``: ``num_frames`` frames spread evenly over the whole clip; ``stride``: every
            ``stride``-th frame from the start, the first ``num_frames`` of them.
        stride: Step between sampled frames with ``sampling: stride``.
        short_clips: A clip with fewer frames than ``num_frames``: ``pad`` (keep it shorter; padded and masked in
            the batch), ``loop`` (repeat its frames up to ``num_frames``) or ``skip`` (counted as ``short_clip``).
        size: Resize every frame to ``size`` x ``size`` or ``[height, width]``; null keeps the native size (then
            every clip must have the same one).
        channels: 1 (gray) or 3 (RGB).
        mean: Per-channel mean subtracted after scaling pixels to [0, 1] (one value: every channel).
        std: Per-channel standard deviation divided by after that.
        bad_videos: A file FFmpeg cannot open or decode, or one without frames: ``skip`` (counted as ``bad_video``)
            or ``error`` (stop with a message naming the file).
        shuffle_frames: Shuffle each clip's frames in time (fixed per clip), labels travelling with their frames: a
            control that removes temporal order, so that what the model learns from time becomes visible.
        batch_size: Clips per batch.
        buffer_size: Clips per shuffle buffer. A buffer is decoded before its first batch (the next one while
            the current one trains), so it holds decoded clips, and the first batch of an epoch waits for one
            buffer (one worker decoded 536 20-frame 64x64 clips/s on a 2-core EPYC: 4,000 clips, ~7.5 s).
        num_workers: DataLoader worker processes per rank that decode clips (0: decode in the training process).
        seed: Seed of the shuffle.
    """

    def __init__(
        self,
        train: VideoSource,
        val: VideoSource | None = None,
        file_column: str = "file",
        label_column: str = "label",
        frame_label_column: str | None = None,
        labels: list[str] | None = None,
        frame_labels: list[str] | None = None,
        num_frames: int | None = 16,
        sampling: Sampling = "uniform",
        stride: int = 1,
        short_clips: ShortClips = "pad",
        size: int | list[int] | None = 64,
        channels: Literal[1, 3] = 3,
        mean: list[float] = [0.5],  # noqa: B006  (jsonargparse needs a literal default for --help)
        std: list[float] = [0.5],  # noqa: B006
        bad_videos: Literal["skip", "error"] = "skip",
        shuffle_frames: bool = False,
        batch_size: int = 16,
        buffer_size: int = 1000,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(
            train, val, labels, frame_labels, num_frames, sampling, stride, short_clips, shuffle_frames,
            batch_size, buffer_size, num_workers, seed,
        )  # fmt: skip
        if frame_label_column and not frame_labels:
            raise DataError(
                "data.frame_label_column is set: list the per-frame classes in data.frame_labels."
            )
        self.file_column, self.label_column, self.frame_label_column = (
            file_column,
            label_column,
            frame_label_column,
        )
        self.size = (size, size) if isinstance(size, int) else tuple(size) if size else None
        self.channels, self.bad_videos = channels, bad_videos
        if len(mean) not in (1, channels) or len(std) not in (1, channels):
            raise DataError(f"data.mean and data.std need 1 or {channels} values (one per channel).")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)  # (C or 1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    @property
    def frame_channels(self) -> int:
        return self.channels

    def columns(self) -> dict[str, str]:
        cols = {"data.file_column": self.file_column, "data.label_column": self.label_column}
        if self.frame_label_column:
            cols["data.frame_label_column"] = self.frame_label_column
        return cols

    def infer_labels(self) -> list[str]:
        if self.train_source.folder() is not None:
            return self.train_source.classes()
        self.check()
        values: set[str] = set()
        for chunk in self.train_source.dataset([self.label_column]).iter(batch_size=1024):
            values.update(
                v.strip()
                for v, f in zip(chunk[self.label_column], chunk["_fault"], strict=True)
                if not f and v
            )
        if not values:
            raise DataError(
                f"{self.train_source} has no labelled clips; set data.labels or check the label column."
            )
        return sort_labels(values)

    def source_dataset(self, source: VideoSource) -> datasets.IterableDataset:
        return source.dataset(list(self.columns().values()), file_column=self.file_column)

    def encode(self, record: dict, faults: FaultCounter, train: bool = False) -> dict | None:
        where, path = record["_where"], record[self.file_column]
        label = self.clip_label(record[self.label_column], where, faults)
        if label is None:
            return None
        source_labels = None
        if self.frame_label_column:
            source_labels = parse_frame_labels(record[self.frame_label_column] or "", self.frame_label_names)
            if not source_labels:
                faults.skip("bad_label", where, f"frame labels are not among {self.frame_label_names}")
                return None
        start = time.perf_counter()
        try:
            frames, n, indices, decoded = read_clip(path, self.pick, self.size, self.channels)
        except (av.FFmpegError, OSError, BadVideo) as exc:
            if self.bad_videos == "error":
                raise DataError(
                    f"video {path} ({where}) cannot be decoded ({exc}); re-encode or remove it, or set "
                    f"data.bad_videos: skip to skip and count such files."
                ) from None
            faults.skip("bad_video", where, f"{path}: {exc}")
            return None
        seconds = time.perf_counter() - start
        if indices is None:
            faults.skip(
                "short_clip", where, f"{path} has {n} frames, fewer than data.num_frames {self.num_frames}"
            )
            return None
        if source_labels is not None and len(source_labels) != n:
            faults.skip("malformed", where, f"{len(source_labels)} frame labels for {n} frames in {path}")
            return None
        picked = [source_labels[i] for i in indices] if source_labels is not None else None
        return self.finish(torch.from_numpy(frames), label, picked, where, (decoded, seconds))

    def use_split(self, name: str) -> None:
        """Score ``name`` instead of the validation split (``pipeline.evaluate --split``): a metadata file or class
        folder, or a split name (``test``) that sits beside the training split (``<out>/train/metadata.jsonl`` ->
        ``<out>/test/metadata.jsonl``, the generator's layout)."""
        train = self.train_source.path
        path = name
        if "/" not in name and isinstance(train, str):
            sibling = Path(train).parent.parent / name / Path(train).name
            path = str(sibling) if self.train_source.folder() is None else str(Path(train).parent / name)
        self.val_source = VideoSource(path=path)
        self.val_source.files()  # a clear error now if it does not exist
        self._val_loader = None

    def load_clip(self, path: str) -> tuple[torch.Tensor, torch.Tensor]:
        """One video file -> network input frames (1, T, C, H, W) and lengths (1,), for prediction."""
        try:
            frames, n, indices, _ = read_clip(path, self.pick, self.size, self.channels)
        except (av.FFmpegError, OSError, BadVideo) as exc:
            raise DataError(f"video {path} cannot be decoded ({exc}); check the file.") from None
        if indices is None:
            raise DataError(f"video {path} has {n} frames, fewer than data.num_frames {self.num_frames}.")
        return self.normalize(torch.from_numpy(frames)[None]), torch.tensor([len(frames)])

    def normalize(self, frames: torch.Tensor) -> torch.Tensor:
        return (frames.float() / 255.0 - self.mean) / self.std  # (..., C, H, W)

    def denormalize(self, frames: torch.Tensor) -> np.ndarray:
        pixels = (frames.detach().cpu().float() * self.std + self.mean) * 255.0
        return pixels.clamp(0, 255).round().to(torch.uint8).numpy()
