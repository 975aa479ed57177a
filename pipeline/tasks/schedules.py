"""Learning-rate schedules, stepped once per optimizer step (see :mod:`pipeline.tasks.base`)."""

from __future__ import annotations

import math
from typing import Literal

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class Warmup(LambdaLR):
    """Linear warm-up for ``warmup_steps``, then constant, linear or cosine decay to ``min_factor`` at ``total_steps``.

    Args:
        optimizer: Filled in by the task.
        warmup_steps: Steps of linear warm-up from 0 to the optimizer's learning rate.
        decay: ``constant`` after warm-up, or ``linear`` / ``cosine`` down to ``min_factor`` x lr at ``total_steps``.
        total_steps: Where the decay ends (ignored for ``constant``).
        min_factor: Final learning rate as a fraction of the peak.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_steps: int = 100,
        decay: Literal["constant", "linear", "cosine"] = "constant",
        total_steps: int = 10_000,
        min_factor: float = 0.1,
    ) -> None:
        def factor(step: int) -> float:
            if step < warmup_steps:
                return (step + 1) / warmup_steps
            if decay == "constant":
                return 1.0
            progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
            shape = 1.0 - progress if decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
            return min_factor + (1.0 - min_factor) * shape

        super().__init__(optimizer, factor)
