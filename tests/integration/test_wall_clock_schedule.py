"""The wall-clock schedule from the real CLI: warm-up, then the learning rate reaches its minimum at max_time."""

from __future__ import annotations

import csv

from tests.conftest import run_cli, run_dir_of


def test_wall_clock_schedule_reaches_its_minimum_at_max_time(tmp_path):
    peak, min_factor, budget_s = 0.01, 0.1, 12
    proc = run_cli(
        "pipeline.fit", "--config", "configs/debug/sentiment.yaml", "--runs_dir", str(tmp_path / "runs"),
        "--trainer.logger", "CSVLogger", "--trainer.max_steps", "-1", "--trainer.max_time", f"00:00:00:{budget_s}",
        "--model.init_args.scheduler", "pipeline.tasks.schedules.WallClock",
        "--model.init_args.scheduler.warmup_steps", "5", "--model.init_args.scheduler.min_factor", str(min_factor),
        tmp_path=tmp_path,
    )  # fmt: skip
    assert "Time limit reached" in proc.stderr  # max_time ended the run, not max_steps or the data
    metrics = next(run_dir_of(proc).rglob("metrics.csv"))
    lrs = [float(r["train/lr"]) for r in csv.DictReader(metrics.open()) if r.get("train/lr")]
    assert len(lrs) > 20, lrs  # enough steps to see the shape
    # train/lr is the rate for the next step: 0.4, 0.6, 0.8, 1.0 x peak after steps 1-4 of a 5-step warm-up
    assert [round(lr / peak, 4) for lr in lrs[:4]] == [0.4, 0.6, 0.8, 1.0]
    after = lrs[4:]
    assert after == sorted(after, reverse=True)  # then only down, with the clock
    assert abs(lrs[-1] - min_factor * peak) < 0.02 * peak  # at max_time: the minimum, not before, not after
    assert after[len(after) // 2] > 2 * min_factor * peak  # half-way through it was still well above it
