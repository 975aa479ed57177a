"""Atomic checkpoint writes: a process killed mid-write leaves the previous checkpoint loadable."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to ``<name>.tmp``, fsync, rename over the target, fsync the folder; load with ``weights_only=True``.

    ``os.replace`` is atomic on POSIX file systems, so readers see either the old file or the complete new one.
    Loading never unpickles arbitrary objects: checkpoints hold tensors, numbers, strings and plain containers only.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            torch.save(checkpoint, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def load_checkpoint(
        self, path, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)
