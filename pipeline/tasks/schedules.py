"""Learning-rate schedules, stepped once per optimizer step (see :mod:`pipeline.tasks.base`): :class:`Warmup` over
optimizer steps, :class:`WallClock` over the wall-clock budget (``trainer.max_time``)."""

from __future__ import annotations

import math
import time
from typing import Any, Literal

from pytorch_lightning.callbacks import Timer
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler


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


def seconds_of(budget: float | str | None) -> float | None:
    """A wall-clock budget in seconds, from seconds or Lightning's ``DD:HH:MM:SS`` (as ``trainer.max_time``)."""
    if budget is None:
        return None
    try:
        parts = [float(p) for p in str(budget).split(":")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        return parts[0]
    if len(parts) != 4:
        raise ValueError(f"scheduler budget {budget!r}: give seconds or DD:HH:MM:SS, e.g. 00:00:25:00.")
    days, hours, minutes, secs = parts
    return ((days * 24 + hours) * 60 + minutes) * 60 + secs


class WallClock(LRScheduler):
    """Linear warm-up for ``warmup_steps`` optimizer steps, then decay to ``min_factor`` x lr at the end of a
    wall-clock budget (default: ``trainer.max_time``), whatever the machine's speed.

    A step-based decay sized to one machine's step rate ends too early on a faster machine and is cut short by
    ``max_time`` on a slower or busier one; this one reaches its minimum when the budget runs out. Time is the
    training time of Lightning's ``Timer`` (the one behind ``trainer.max_time``: validation included, and carried
    across resumes in the checkpoint); without ``max_time`` a clock of its own starts at the first optimizer step
    (and restarts on resume)::

        lr  ▲   peak
            │   /‾‾‾‾--.._
            │  /           ‾‾--.._
            │ /                   ‾‾--..___  min_factor x peak
            └─────────────────────────────────► training seconds
            0 warm-up (steps)             budget (trainer.max_time)

    Args:
        optimizer: Filled in by the task.
        warmup_steps: Steps of linear warm-up from 0 to the optimizer's learning rate.
        decay: ``cosine`` or ``linear`` down to ``min_factor`` x lr at the end of the budget.
        min_factor: Final learning rate as a fraction of the peak.
        budget: Seconds, or ``DD:HH:MM:SS``, to decay over (null: ``trainer.max_time``, which must then be set).
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_steps: int = 100,
        decay: Literal["linear", "cosine"] = "cosine",
        min_factor: float = 0.1,
        budget: float | str | None = None,
    ) -> None:
        self.warmup_steps, self.decay, self.min_factor = warmup_steps, decay, min_factor
        self.budget_s = seconds_of(budget)
        self._timer: Timer | None = None
        self._t0: float | None = None
        super().__init__(optimizer)

    def attach(self, trainer: Any) -> None:
        """Take the clock (and, without ``budget``, the budget) from the trainer's ``max_time`` Timer."""
        timer = next((cb for cb in trainer.callbacks if isinstance(cb, Timer)), None)
        self._timer = timer
        if self.budget_s is None:
            if timer is None or timer._duration is None:
                raise ValueError(
                    "model.scheduler WallClock decays over trainer.max_time, which is not set; set "
                    "--trainer.max_time DD:HH:MM:SS, or the scheduler's budget."
                )
            self.budget_s = float(timer._duration)

    def elapsed(self) -> float:
        """Seconds of training so far on the schedule's clock."""
        if self._timer is not None:
            return self._timer.time_elapsed("train")
        return 0.0 if self._t0 is None else time.monotonic() - self._t0

    def factor(self) -> float:
        step = self.last_epoch  # optimizer steps taken (the scheduler is stepped once per optimizer step)
        if self._timer is None and self._t0 is None and step >= 1:
            self._t0 = time.monotonic()  # a clock of its own starts with the first step, not at construction
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if not self.budget_s:
            return 1.0
        progress = min(1.0, self.elapsed() / self.budget_s)
        shape = 1.0 - progress if self.decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_factor + (1.0 - self.min_factor) * shape

    def get_lr(self) -> list[float]:
        factor = self.factor()
        return [base * factor for base in self.base_lrs]

    def state_dict(self) -> dict[str, Any]:
        # the clock is the trainer's (its Timer saves the elapsed time itself), not part of the schedule's state
        return {k: v for k, v in super().state_dict().items() if k not in ("_timer", "_t0")}
