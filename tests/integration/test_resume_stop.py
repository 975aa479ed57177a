"""A run that stops by itself mid-epoch (``max_steps``, ``max_time``) and is continued with ``--ckpt_path last`` ends
bit-identical to one straight run: the checkpoint holds where training stopped, not "epoch over"."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.integration.test_resume import DEBUG, assert_same_weights, consumed, fit


def saved(runs: Path) -> tuple[int, tuple[int, int]]:
    """(global step, data position (epoch, batches consumed)) of the experiment's last.ckpt."""
    ckpt = torch.load(max(runs.glob("sentiment/*/checkpoints/last.ckpt")), weights_only=False)
    state = next(v for k, v in ckpt["callbacks"].items() if k.startswith("ResumeState"))
    return ckpt["global_step"], (state["epoch"], state["consumed"])


def batches_per_epoch(tmp_path: Path, monkeypatch) -> int:
    from pipeline.cli import PipelineCLI

    monkeypatch.setenv("PIPELINE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIPELINE_RUN_DIR", "")
    dm = PipelineCLI(args=["--config", DEBUG, "--trainer.logger", "false"], mode="evaluate").datamodule
    return sum(1 for _ in dm.train_dataloader())


def check_continued(tmp_path: Path, runs: Path, first: Path, step: int, more: int) -> None:
    """Continue the stopped run in ``runs`` to ``step + more`` steps and compare with a straight run."""
    total = str(step + more)
    fit(tmp_path, tmp_path / "runs-straight", tmp_path / "straight", "--trainer.max_steps", total)
    rest = tmp_path / "rest"
    fit(tmp_path, runs, rest, "--trainer.max_steps", total, "--trainer.max_time", "null", resume=True)
    assert consumed(first, 0) + consumed(rest, 0) == consumed(tmp_path / "straight", 0)
    assert_same_weights(tmp_path / "straight" / "weights-rank0.pt", rest / "weights-rank0.pt")


def test_stopped_by_max_steps_mid_epoch_continues_where_it_stopped(tmp_path, monkeypatch):
    per_epoch = batches_per_epoch(tmp_path, monkeypatch)
    stop = per_epoch + 5  # mid-epoch 1, between two checkpoints (every 4 steps)
    runs, first = tmp_path / "runs", tmp_path / "first"
    fit(tmp_path, runs, first, "--trainer.max_steps", str(stop))
    assert saved(runs) == (stop, (1, 5))
    check_continued(tmp_path, runs, first, stop, more=per_epoch)


def test_stopped_by_max_time_records_where_it_stopped(tmp_path, monkeypatch):
    per_epoch = batches_per_epoch(tmp_path, monkeypatch)
    runs, first = tmp_path / "runs", tmp_path / "first"
    fit(tmp_path, runs, first, "--trainer.max_steps", "100000", "--trainer.max_time", "00:00:00:03")
    step, (epoch, done) = saved(runs)
    assert step > 0 and epoch * per_epoch + done == step, (step, epoch, done, per_epoch)
    check_continued(tmp_path, runs, first, step, more=8)
