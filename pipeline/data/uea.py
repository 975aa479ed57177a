"""Per-frame feature sequences from sktime/UEA ``.ts`` files (NATOPS: 24 pose features x 51 frames, 6 classes).

The ``.ts`` format: ``#`` comment lines, ``@`` header lines (``@dimensions 24``, ``@classLabel true 1.0 2.0 ...``,
...), then after ``@data`` one sequence per line: the dimensions separated by ``:``, each a comma-separated list of
values over time (``?`` = missing), and the class label last::

    d1_t1,d1_t2,...,d1_tT:d2_t1,...,d2_tT: ... :dD_t1,...,dD_tT:label      ->  frames (T, D), label

The reader yields the same string records as every source (``series`` = the dimensions text, ``label``, ``_where``,
``_fault``) into the spine's stream; parsing to a (T, D) float tensor happens in the DataLoader worker
(:meth:`UEAData.encode`), like decoding does for video files. Only the training file exists for model selection: a
stratified ``holdout`` part of it is the validation split (``part: rest`` trains, ``part: holdout`` validates), so
the test file is never used for tuning.
"""

from __future__ import annotations

import os
import random
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import datasets
import numpy as np
import torch

from pipeline.data.clips import ClipData, Sampling, ShortClips
from pipeline.data.faults import DataError, FaultCounter
from pipeline.data.source import Source, data_root


def read_header(path: str) -> dict[str, str]:
    """The ``@key value`` lines of a .ts file (lower-cased keys), up to ``@data``."""
    header: dict[str, str] = {}
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            line = line.strip()
            if line.startswith("@"):
                key, _, value = line[1:].partition(" ")
                if key.lower() == "data":
                    return header
                header[key.lower()] = value.strip()
    raise DataError(f"{path} has no @data line; it is not a sktime/UEA .ts file.")


def holdout_lines(lines: list[tuple[int, str]], fraction: float, seed: int) -> set[int]:
    """Line numbers of a stratified random ``fraction`` of the sequences (same share of every class)."""
    by_class: dict[str, list[int]] = defaultdict(list)
    for lineno, text in lines:
        by_class[text.rsplit(":", 1)[-1].strip()].append(lineno)
    chosen: set[int] = set()
    for label in sorted(by_class):
        members = by_class[label]
        random.Random(f"{seed}/{label}").shuffle(members)
        chosen.update(members[: int(round(fraction * len(members)))])
    return chosen


def ts_records(files: list[str], part: str, holdout: float, seed: int) -> Iterator[dict]:
    """One record ``{series, label}`` per sequence of the selected part of each file."""
    root = str(data_root())
    for path in files:
        rel = os.path.relpath(path, root) if path.startswith(root + os.sep) else path
        lines, in_data = [], False
        with open(path, "rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                try:
                    text = raw.decode("utf-8").strip()
                except UnicodeDecodeError:
                    if in_data:
                        yield {
                            "series": None,
                            "label": None,
                            "_where": f"{rel}:{lineno}",
                            "_fault": "undecodable",
                        }
                    continue
                if in_data and text and not text.startswith("#"):
                    lines.append((lineno, text))
                in_data = in_data or text.lower().startswith("@data")
        held = holdout_lines(lines, holdout, seed) if part != "all" else set()
        for lineno, text in lines:
            if part == "all" or (lineno in held) == (part == "holdout"):
                series, sep, label = text.rpartition(":")
                record = {"series": series, "label": label.strip(), "_where": f"{rel}:{lineno}", "_fault": ""}
                yield record if sep else record | {"_fault": "malformed"}


@dataclass
class UEASource(Source):
    """One sktime/UEA ``.ts`` file, or a stratified part of it.

    Args:
        path: The .ts file, relative to the data root unless absolute.
        hub: Not supported for .ts files (leave null).
        split: Unused.
        name: Unused.
        format: Unused.
        header: Unused.
        part: ``all`` sequences, the training ``rest`` or the ``holdout`` (validation) part.
        holdout: Fraction of every class that forms the holdout part.
        holdout_seed: Seed of the holdout choice (the same for the ``rest`` and ``holdout`` sources of a config).
    """

    part: Literal["all", "rest", "holdout"] = "all"
    holdout: float = 0.2
    holdout_seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hub:
            raise DataError("a .ts source reads local files: set 'path', not 'hub'.")

    def __repr__(self) -> str:
        return f"UEASource({self.path}{'' if self.part == 'all' else f', {self.part}'})"

    def columns(self) -> list[str]:
        read_header(self.files()[0])
        return ["series", "label"]

    def dataset(self, columns: list[str]) -> datasets.IterableDataset:
        features = datasets.Features(
            {c: datasets.Value("string") for c in ["series", "label", "_where", "_fault"]}
        )
        return datasets.IterableDataset.from_generator(
            ts_records,
            features=features,
            gen_kwargs={
                "files": self.files(),
                "part": self.part,
                "holdout": self.holdout,
                "seed": self.holdout_seed,
            },
        )


def parse_series(text: str, dims: int) -> np.ndarray | None:
    """``"d1 values:d2 values:..."`` -> (T, D) float32 (``?`` -> NaN), or None when it is malformed."""
    parts = text.split(":")
    if len(parts) != dims:
        return None
    try:
        rows = [
            np.array([float("nan") if v.strip() == "?" else float(v) for v in p.split(",")]) for p in parts
        ]
    except ValueError:
        return None
    if len({len(r) for r in rows}) != 1:
        return None
    return np.stack(rows, axis=1).astype(np.float32)  # (T, D)


class UEAData(ClipData):
    """Multivariate time series classification from .ts files: every frame is a feature vector.

    Args:
        train: Training sequences (e.g. ``{path: video/natops/NATOPS_TRAIN.ts, part: rest}``).
        val: Validation sequences (e.g. the ``holdout`` part of the same file).
        labels: The classes as written in the file; their order gives the class index. Null: the header's
            ``@classLabel`` list.
        num_frames: Frames per sequence after sampling (null: every frame).
        sampling: ``uniform`` or ``stride`` (see :class:`pipeline.data.video.VideoData`).
        stride: Step between sampled frames with ``sampling: stride``.
        short_clips: A sequence shorter than ``num_frames``: ``pad``, ``loop`` or ``skip`` (counted).
        standardize: Subtract each feature's mean and divide by its standard deviation, both measured on the
            training split; missing values (``?``) become 0 after that (the training mean).
        noise_std: Training-time augmentation: Gaussian noise of this standard deviation (in standardized units)
            added to every value (0: none).
        shuffle_frames: Shuffle each sequence's frames in time (the frame-shuffled control).
        batch_size: Sequences per batch.
        buffer_size: Shuffle buffer.
        num_workers: DataLoader worker processes per rank.
        seed: Seed of the shuffle.
    """

    def __init__(
        self,
        train: UEASource,
        val: UEASource | None = None,
        labels: list[str] | None = None,
        num_frames: int | None = None,
        sampling: Sampling = "uniform",
        stride: int = 1,
        short_clips: ShortClips = "pad",
        standardize: bool = True,
        noise_std: float = 0.0,
        shuffle_frames: bool = False,
        batch_size: int = 16,
        buffer_size: int = 1000,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(
            train, val, labels, None, num_frames, sampling, stride, short_clips, shuffle_frames,
            batch_size, buffer_size, num_workers, seed,
        )  # fmt: skip
        self.standardize, self.noise_std = standardize, noise_std
        self._stats: tuple[torch.Tensor, torch.Tensor] | None = None

    def columns(self) -> dict[str, str]:
        return {"data.series": "series", "data.label": "label"}

    def use_split(self, name: str) -> None:
        """Score ``name`` instead of the validation split (``pipeline.evaluate --split``): a .ts path, or ``test``
        for the UEA sibling of the training file (``X_TRAIN.ts`` -> ``X_TEST.ts``), read whole."""
        path = str(self.train_source.path).replace("_TRAIN", "_TEST") if name == "test" else name
        self.val_source = UEASource(path=path, part="all")
        self.val_source.files()  # a clear error now if it does not exist
        self._val_loader = None

    def header(self) -> dict[str, str]:
        return read_header(self.train_source.files()[0])

    @property
    def feature_size(self) -> int:
        try:
            return int(self.header()["dimensions"])
        except (KeyError, ValueError):
            raise DataError(
                f"{self.train_source.files()[0]} has no valid '@dimensions N' header line."
            ) from None

    def infer_labels(self) -> list[str]:
        values = self.header().get("classlabel", "").split()
        if not values or values[0].lower() != "true" or len(values) < 2:
            raise DataError(
                f"{self.train_source.files()[0]} declares no classes (@classLabel true ...); set data.labels."
            )
        return values[1:]

    def stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-feature mean and std (D,) over every frame of the training split (computed once)."""
        if self._stats is None:
            dims, frames = self.feature_size, []
            for chunk in self.train_source.dataset(["series", "label"]).iter(batch_size=256):
                frames += [x for s in chunk["series"] if s and (x := parse_series(s, dims)) is not None]
            if not frames:
                raise DataError(f"{self.train_source} holds no readable sequences.")
            stacked = np.concatenate(frames)  # (sum T, D)
            mean, std = np.nanmean(stacked, 0), np.nanstd(stacked, 0)
            self._stats = (
                torch.from_numpy(mean).float(),
                torch.from_numpy(np.where(std > 0, std, 1.0)).float(),
            )
        return self._stats

    def before_stream(self) -> None:
        if self.standardize:
            self.stats()  # in the main process, before the workers fork

    def encode(self, record: dict, faults: FaultCounter, train: bool = False) -> dict | None:
        where = record["_where"]
        label = self.clip_label(record["label"], where, faults)
        if label is None:
            return None
        series = parse_series(record["series"] or "", self.feature_size)
        if series is None:
            faults.skip(
                "malformed", where, f"not {self.feature_size} ':'-separated lists of numbers of one length"
            )
            return None
        indices = self.pick(len(series))
        if indices is None:
            faults.skip("short_clip", where, f"{len(series)} frames < data.num_frames {self.num_frames}")
            return None
        frames = torch.from_numpy(series[indices])  # (T, D)
        if self.standardize:
            mean, std = self.stats()
            frames = (frames - mean) / std
        frames = torch.nan_to_num(frames, nan=0.0)
        if self.noise_std and train:
            frames = frames + self.noise_std * torch.randn_like(frames)
        return self.finish(frames, label, None, where)
