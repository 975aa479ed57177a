"""Elastic resume through the real CLI: a run killed mid-epoch on W ranks resumes on W' ranks (DataLoader workers
on both sides) and trains on every example of the epoch exactly once: none lost, none repeated."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.integration.test_resume import consumed, fit, last_step

DDP = ("--trainer.accelerator", "cpu", "--trainer.strategy", "ddp")
ONE_EPOCH = ("--trainer.max_steps", "-1", "--trainer.max_epochs", "1", "--data.init_args.num_workers", "2")


@pytest.mark.parametrize(("ranks", "then", "kill"), [(2, 1, "10"), (1, 2, "14")])
def test_elastic_resume_trains_on_every_example_of_the_epoch_exactly_once(tmp_path, ranks, then, kill):
    runs = tmp_path / "runs"
    first = tmp_path / "first"
    fit(tmp_path, runs, first, *DDP, "--trainer.devices", str(ranks), *ONE_EPOCH, kill_at=kill)
    saved = last_step(runs)
    assert 0 < saved < int(kill)
    rest = tmp_path / "rest"
    proc = fit(tmp_path, runs, rest, *DDP, "--trainer.devices", str(then), *ONE_EPOCH, resume=True)
    assert "resuming from" in proc.stderr
    seen = Counter()
    for rank in range(ranks):
        seen += consumed(first, rank, upto=saved)
    for rank in range(then):
        seen += consumed(rest, rank)
    assert len(seen) == 872, f"{872 - len(seen)} examples of the epoch were never trained on"
    assert set(seen.values()) == {1}, f"{sum(v > 1 for v in seen.values())} examples were trained on twice"
