"""WallClock with a budget of its own (as the char-LM benchmark uses it): the clock starts at the first step, and
the rate is at its minimum once the budget has passed."""

from __future__ import annotations

import time

import pytest
import torch

from pipeline.tasks.schedules import WallClock, seconds_of


def test_budget_in_seconds_or_lightning_duration() -> None:
    assert seconds_of(900) == seconds_of("900.0") == seconds_of("00:00:15:00") == 900.0
    assert seconds_of(None) is None
    with pytest.raises(ValueError, match="DD:HH:MM:SS"):
        seconds_of("15m")


def test_own_clock_decays_to_the_minimum_at_the_budget() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    time.sleep(0.3)  # time before the first step does not count
    sched = WallClock(opt, warmup_steps=2, decay="linear", min_factor=0.1, budget=0.5)
    rates = []
    start = time.monotonic()
    while time.monotonic() - start < 0.7:
        opt.step()
        sched.step()
        rates.append(opt.param_groups[0]["lr"])
        time.sleep(0.01)
    assert rates[0] == 1.0  # end of the 2-step warm-up
    assert rates[1] > 0.8  # the clock started at the first step, not when the schedule was made
    assert rates == sorted(rates, reverse=True)
    assert rates[-1] == pytest.approx(0.1)  # past the budget: the minimum, and it stays there
