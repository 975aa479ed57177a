"""What every clip source shares (video files, per-frame feature files): labels, temporal sampling, batches.

A clip is a sequence of frames, each either an image (C, H, W) or a feature vector (F,), with one clip label and
optionally one label per frame. Subclasses (:class:`pipeline.data.video.VideoData`,
:class:`pipeline.data.uea.UEAData`) turn a record into frames; this base picks which frames, applies the
short-clip policy and the frame-shuffled control, and pads clips into batches::

    source frames   0 1 2 3 4 5 6 7 8 9       n = 10, num_frames = 4
    uniform           1   3     6   8         centre of each of 4 equal segments: floor((i + 0.5) * n / 4)
    stride = 3      0     3     6     9       every 3rd frame from the start, the first num_frames of them
    too short (n < num_frames):  pad -> keep what there is (shorter clip, padded in the batch, masked by lengths)
                                 loop -> 0 1 2 0 1 2 ... up to num_frames;  skip -> dropped, counted (short_clip)
"""

from __future__ import annotations

import functools
import random
from typing import Literal

import datasets
import numpy as np
import torch

from pipeline.data.faults import DataError, FaultCounter
from pipeline.data.module import StreamDataModule
from pipeline.data.source import Source
from pipeline.data.stream import BatchStream

Sampling = Literal["uniform", "stride"]
ShortClips = Literal["pad", "loop", "skip"]
IGNORE = -100  # per-frame label of padded frames (cross-entropy's ignore_index)


def frame_indices(
    n: int, num_frames: int | None, sampling: Sampling = "uniform", stride: int = 1, short: ShortClips = "pad"
) -> list[int] | None:
    """Indices of the source frames to use out of ``n``; None when the clip is too short and ``short`` is skip."""
    if sampling == "stride":
        available = list(range(0, n, max(1, stride)))
    elif num_frames is None or n <= num_frames:
        available = list(range(n))
    else:  # centre of each of num_frames equal segments: covers the whole clip, first and last parts alike
        return [int((i + 0.5) * n / num_frames) for i in range(num_frames)]
    if num_frames is None or len(available) >= num_frames:
        return available[:num_frames] if num_frames else available
    if short == "skip" or not available:
        return None
    if short == "loop":
        return [available[i % len(available)] for i in range(num_frames)]
    return available


def parse_frame_labels(text: str, names: list[str]) -> list[int] | None:
    """``"2 2 0 1"`` or ``"right-down right-down ..."`` (names or indices into ``names``) -> indices, or None."""
    index = {name: i for i, name in enumerate(names)}
    out = []
    for token in text.replace(",", " ").split():
        if token in index:
            out.append(index[token])
        elif token.lstrip("-").isdigit() and 0 <= int(token) < len(names):
            out.append(int(token))
        else:
            return None
    return out


def sort_labels(values: set[str]) -> list[str]:
    """Class names in a stable order: numerically when they are all numbers, else alphabetically."""
    try:
        return sorted(values, key=float)
    except ValueError:
        return sorted(values)


class ClipData(StreamDataModule):
    """Base of the clip DataModules; see :class:`pipeline.data.video.VideoData` for the arguments."""

    def __init__(
        self,
        train: Source,
        val: Source | None,
        labels: list[str] | None,
        frame_labels: list[str] | None,
        num_frames: int | None,
        sampling: Sampling,
        stride: int,
        short_clips: ShortClips,
        shuffle_frames: bool,
        batch_size: int,
        buffer_size: int,
        num_workers: int,
        seed: int,
    ) -> None:
        super().__init__(train, val, None, batch_size, None, buffer_size, num_workers, seed)
        if sampling == "uniform" and num_frames is not None and num_frames < 1:
            raise DataError(f"data.num_frames is {num_frames}; set it to 1 or more, or null for every frame.")
        self._labels = [str(x) for x in labels] if labels is not None else None
        self.frame_label_names = [str(x) for x in frame_labels] if frame_labels else []
        self.num_frames, self.sampling, self.stride = num_frames, sampling, stride
        self.short_clips, self.shuffle_frames = short_clips, shuffle_frames

    # --- labels -----------------------------------------------------------------------------------------------
    def infer_labels(self) -> list[str]:
        """The clip classes when ``labels`` is not given; subclasses read them from the training source."""
        raise DataError("set data.labels to the list of clip classes.")

    @property
    def labels(self) -> list[str]:
        if self._labels is None:
            self._labels = self.infer_labels()
        return self._labels

    @property
    def label_index(self) -> dict[str, int]:
        if not hasattr(self, "_label_index"):
            self._label_index = {name: i for i, name in enumerate(self.labels)}
        return self._label_index

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def vocab_size(self) -> int:
        # clips have no tokenizer; AttributeError makes the CLI's link (getattr with a default) pass None
        raise AttributeError("clip data has no vocabulary")

    @property
    def num_frame_classes(self) -> int:
        """Per-frame classes (0: the data has no per-frame labels)."""
        return len(self.frame_label_names)

    def clip_label(self, value: str | None, where: str, faults: FaultCounter) -> int | None:
        label = self.label_index.get(str(value).strip()) if value is not None else None
        if label is None:
            faults.skip(
                "bad_label", where, f"label {value!r} is not one of the {self.num_classes} declared classes"
            )
        return label

    # --- the stream -------------------------------------------------------------------------------------------
    def source_dataset(self, source: Source) -> datasets.IterableDataset:
        return source.dataset(list(self.columns().values()))

    def before_stream(self) -> None:
        """Work to do in the main process before DataLoader workers fork (e.g. statistics of the training split)."""

    def _stream(self, source: Source, shuffle: bool) -> BatchStream:
        self.before_stream()
        return BatchStream(
            dataset=self.source_dataset(source),
            encode=functools.partial(self.encode, train=shuffle),  # training clips may be augmented
            collate=self.collate,
            length=self.length,
            batch_size=self.batch_size,
            max_tokens=None,
            buffer_size=self.buffer_size,
            shuffle=shuffle,
            seed=self.seed,
        )

    def encode(self, record: dict, faults: FaultCounter, train: bool = False) -> dict | None:
        raise NotImplementedError

    # --- frames -----------------------------------------------------------------------------------------------
    def pick(self, n: int) -> list[int] | None:
        return frame_indices(n, self.num_frames, self.sampling, self.stride, self.short_clips)

    def finish(
        self,
        frames: torch.Tensor,
        label: int,
        frame_labels: list[int] | None,
        where: str,
        stats: tuple[int, float] = (0, 0.0),
    ) -> dict:
        """An example from selected frames (T, ...) and source-aligned per-frame labels (already selected)."""
        if self.shuffle_frames:  # the control: same frames, order destroyed; labels stay with their frames
            order = list(range(len(frames)))
            random.Random(f"{self.seed}/{where}").shuffle(order)
            frames = frames[order]
            frame_labels = [frame_labels[i] for i in order] if frame_labels is not None else None
        return {
            "frames": frames,
            "label": label,
            "frame_labels": frame_labels,
            "decoded": stats[0],
            "decode_s": stats[1],
        }

    def length(self, example: dict) -> int:
        return len(example["frames"])

    def collate(self, examples: list[dict]) -> dict:
        lengths = torch.tensor([len(e["frames"]) for e in examples], dtype=torch.long)
        clips = [self.normalize(e["frames"]) for e in examples]  # each (T_i, *frame)
        first = clips[0]
        frames = first.new_zeros((len(clips), int(lengths.max()), *first.shape[1:]))  # padding stays 0
        for i, c in enumerate(clips):
            if c.shape[1:] != first.shape[1:]:
                raise DataError(
                    f"clips of one batch have frames of shape {tuple(first.shape[1:])} and {tuple(c.shape[1:])}; "
                    f"set data.size so that every clip is resized to one size."
                )
            frames[i, : len(c)] = c
        batch = {
            "frames": frames,  # (B, T, C, H, W) images or (B, T, F) features, normalised
            "lengths": lengths,  # (B,)
            "labels": torch.tensor([e["label"] for e in examples], dtype=torch.long),  # (B,)
            "n_frames": int(lengths.sum()),
            "pad_fraction": 1.0 - int(lengths.sum()) / (len(examples) * int(lengths.max())),
            "decoded": sum(e["decoded"] for e in examples),
            "decode_s": sum(e["decode_s"] for e in examples),
        }
        if self.num_frame_classes:
            frame_labels = torch.full((len(examples), int(lengths.max())), IGNORE, dtype=torch.long)
            for i, e in enumerate(examples):
                if e["frame_labels"] is not None:
                    frame_labels[i, : len(e["frame_labels"])] = torch.tensor(e["frame_labels"])
            batch["frame_labels"] = frame_labels  # (B, T), IGNORE at padded frames
        return batch

    def normalize(self, frames: torch.Tensor) -> torch.Tensor:
        """Stored frames -> network input; subclasses scale pixels or standardize features."""
        return frames.float()

    def denormalize(self, frames: torch.Tensor) -> np.ndarray:
        """Network input -> something to look at (uint8 images for video); used for logged samples."""
        return frames.detach().cpu().numpy()
