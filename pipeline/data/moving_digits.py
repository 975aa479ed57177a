"""Moving-MNIST-style clips from real MNIST digits, written as real mp4 files plus a metadata file.

``python -m pipeline.data.moving_digits --out DIR [--clips N --frames 20 --size 64 --seed S]``

How a clip is made (Srivastava et al., 2015 built Moving MNIST the same way)::

    10,000 MNIST digits ──► disjoint pools: train 80% | val 10% | test 10%   (fixed --pool_seed: every
                                                                             generation uses the same pools)
    one digit from the split's pool ─► random start (x, y), velocity (vx, vy), |v| in --speed px/frame
    frame t: draw the digit at (x, y) on a black size x size canvas
             if (x + vx, y + vy) would leave the canvas: flip that velocity component (the bounce), then move

Labels (written to ``DIR/<split>/metadata.jsonl``, one JSON object per clip):

- ``frame_labels``: the direction at every frame, i.e. the sign of the velocity that moves the digit from frame t to
  t + 1 (after a bounce at t), as 4 classes in alphabetical order of their names (:data:`DIRECTIONS`); it changes
  when the digit bounces. One frame shows a position, not a direction: the model must compare frames.
- ``class``: ``"<digit>-<direction of frame 0>"``; ``label`` is its index, ``digit * 4 + direction``, which is also its
  position in the sorted list of the 40 class names (:func:`class_names`).
- ``digit_index``: the digit's index in the MNIST file, so tests can check that the splits share no image;
  ``positions``: the digit's top-left (x, y) in every frame, so a clip can be re-rendered and compared.

Videos are H.264 in mp4 (libx264, ``crf 0``, yuv444p: lossless in YUV; decoding back to gray differs from the written
pixels by at most 1 grey level, from the limited-range conversion).
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

import av
import numpy as np

from pipeline.data.faults import DataError
from pipeline.data.source import data_root

#: Directions by index; alphabetical, so ``sorted(class_names())`` lists classes in label order. y grows downwards.
DIRECTIONS = ("left-down", "left-up", "right-down", "right-up")
SPLITS = ("train", "val", "test")
POOL_FRACTIONS = (0.8, 0.1, 0.1)
MNIST_IMAGES = "video/mnist/t10k-images-idx3-ubyte.gz"
MNIST_LABELS = "video/mnist/t10k-labels-idx1-ubyte.gz"


def direction_of(vx: float, vy: float) -> int:
    """Index into :data:`DIRECTIONS` of a velocity (image coordinates: ``vy > 0`` moves down)."""
    return 2 * int(vx > 0) + int(vy < 0)


def class_names() -> list[str]:
    """The 40 clip classes ``"<digit>-<direction>"``, in label order (``digit * 4 + direction``)."""
    return [f"{d}-{name}" for d in range(10) for name in DIRECTIONS]


def load_mnist(root: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 MNIST digits (N, 28, 28) uint8 and their labels (N,), read from the gzip IDX files."""
    root = root or data_root()
    paths = [root / MNIST_IMAGES, root / MNIST_LABELS]
    for p in paths:
        if not p.is_file():
            raise DataError(
                f"MNIST file {p} not found; point PIPELINE_DATA at the folder that holds video/mnist/."
            )
    with gzip.open(paths[0], "rb") as fh:
        raw = fh.read()
    magic, n, rows, cols = np.frombuffer(raw[:16], dtype=">u4")
    if magic != 0x803:
        raise DataError(f"{paths[0]} is not an IDX image file (magic {magic:#x}, expected 0x803).")
    images = np.frombuffer(raw[16:], dtype=np.uint8).reshape(int(n), int(rows), int(cols))
    with gzip.open(paths[1], "rb") as fh:
        raw = fh.read()
    magic, n_labels = np.frombuffer(raw[:8], dtype=">u4")
    if magic != 0x801 or n_labels != n:
        raise DataError(
            f"{paths[1]} is not the IDX label file for {paths[0]} (magic {magic:#x}, {n_labels} labels)."
        )
    return images, np.frombuffer(raw[8:], dtype=np.uint8).astype(np.int64)


def split_pools(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Disjoint index pools ``{"train", "val", "test"}`` covering ``range(n)`` (80/10/10)."""
    order = np.random.default_rng(seed).permutation(n)
    cut1 = int(round(POOL_FRACTIONS[0] * n))
    cut2 = cut1 + int(round(POOL_FRACTIONS[1] * n))
    return {"train": order[:cut1], "val": order[cut1:cut2], "test": order[cut2:]}


def trajectory(
    rng: np.random.Generator, frames: int, room: int, speed: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Top-left positions (T, 2) and velocities (T, 2) of one bouncing digit; ``room`` = canvas - digit size.

    ``velocity[t]`` moves the digit from frame t to t + 1; it is flipped at t (the bounce) when the move would leave
    the canvas, so every step moves by exactly ``velocity[t]`` and the direction is visible between frames t, t + 1.
    """
    pos = rng.integers(0, room + 1, size=2)
    vel = rng.integers(speed[0], speed[1] + 1, size=2) * rng.choice([-1, 1], size=2)
    positions, velocities = [], []
    for _ in range(frames):
        for axis in range(2):
            if not 0 <= pos[axis] + vel[axis] <= room:
                vel[axis] = -vel[axis]
        positions.append(pos.copy())
        velocities.append(vel.copy())
        pos = pos + vel
    return np.array(positions), np.array(velocities)


def render(digit: np.ndarray, positions: np.ndarray, size: int) -> np.ndarray:
    """Frames (T, size, size) uint8 with ``digit`` (h, w) drawn at each (x, y) top-left position."""
    h, w = digit.shape
    out = np.zeros((len(positions), size, size), dtype=np.uint8)
    for t, (x, y) in enumerate(positions):
        out[t, y : y + h, x : x + w] = digit
    return out


def write_mp4(path: Path, frames: np.ndarray, fps: int = 10) -> None:
    """Encode gray frames (T, H, W) uint8 as lossless H.264 (libx264 crf 0, yuv444p) in an mp4 container."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv444p"
        stream.options = {"crf": "0", "preset": "veryfast"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="gray")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def generate_split(
    out: Path,
    split: str,
    clips: int,
    images: np.ndarray,
    labels: np.ndarray,
    pool: np.ndarray,
    frames: int = 20,
    size: int = 64,
    seed: int = 0,
    speed: tuple[int, int] = (2, 4),
    fps: int = 10,
) -> Path:
    """Write ``clips`` clips of one split into ``out/<split>/clips/`` and return its ``metadata.jsonl``."""
    folder = out / split
    (folder / "clips").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    room = size - images.shape[1]
    if room < speed[1]:
        raise DataError(
            f"--size {size} leaves no room for a {images.shape[1]}px digit to move; use --size >= 36."
        )
    # walk through the pool in a shuffled order, reshuffled on every pass, so every digit is used about equally
    order = np.concatenate([rng.permutation(pool) for _ in range(clips // len(pool) + 1)])[:clips]
    meta = folder / "metadata.jsonl"
    with open(meta, "w") as fh:
        for i, index in enumerate(order):
            positions, velocities = trajectory(rng, frames, room, speed)
            name = f"clips/{i:06d}.mp4"
            write_mp4(folder / name, render(images[index], positions, size), fps)
            dirs = [direction_of(vx, vy) for vx, vy in velocities]
            digit = int(labels[index])
            row = {
                "file": name,
                "class": f"{digit}-{DIRECTIONS[dirs[0]]}",
                "label": digit * 4 + dirs[0],
                "digit": digit,
                "direction": dirs[0],
                "frame_labels": " ".join(map(str, dirs)),
                "digit_index": int(index),
                "positions": positions.tolist(),  # top-left (x, y) of the digit in every frame
                "frames": frames,
                "size": size,
                "fps": fps,
            }
            fh.write(json.dumps(row) + "\n")
    return meta


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="Output folder: <out>/{train,val,test}/")
    parser.add_argument("--clips", type=int, default=2000, help="Training clips (default 2000).")
    parser.add_argument("--val_clips", type=int, default=None, help="Validation clips (default clips / 5).")
    parser.add_argument("--test_clips", type=int, default=None, help="Test clips (default clips / 5).")
    parser.add_argument("--frames", type=int, default=20, help="Frames per clip.")
    parser.add_argument("--size", type=int, default=64, help="Canvas width and height in pixels.")
    parser.add_argument(
        "--speed", type=int, nargs=2, default=(2, 4), help="Min and max |vx|, |vy| in px/frame."
    )
    parser.add_argument("--fps", type=int, default=10, help="Frame rate written into the mp4 files.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the clips (trajectories, digit order).")
    parser.add_argument(
        "--pool_seed", type=int, default=0, help="Seed of the train/val/test digit pools (keep it fixed)."
    )
    args = parser.parse_args(argv)
    images, labels = load_mnist()
    pools = split_pools(len(images), args.pool_seed)
    counts = {
        "train": args.clips,
        "val": args.val_clips if args.val_clips is not None else max(1, args.clips // 5),
        "test": args.test_clips if args.test_clips is not None else max(1, args.clips // 5),
    }
    for split in SPLITS:
        meta = generate_split(
            args.out, split, counts[split], images, labels, pools[split],
            args.frames, args.size, args.seed, tuple(args.speed), args.fps,
        )  # fmt: skip
        print(f"{split}: {counts[split]} clips from {len(pools[split])} digits -> {meta}", file=sys.stderr)
    info = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "classes": class_names(),
    }
    (args.out / "generation.json").write_text(json.dumps(info, indent=1) + "\n")


if __name__ == "__main__":
    try:
        main()
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
