"""benchmarks/steps.py interleaved: the pipeline and the plain loop alternate batches in one process and still train
the same network on the same batches, so that their speed ratio measures Lightning's and the task's overhead only."""

from __future__ import annotations

from pathlib import Path

from benchmarks import steps


def test_interleaved_sides_see_the_same_losses_and_are_both_timed(tmp_path: Path) -> None:
    result = steps.compare(
        "configs/sentiment/sst2_bilstm.yaml",
        tmp_path,
        "--threads",
        "1",
        steps=12,
        warmup=2,
        rounds=1,
        interleave=True,
    )
    # the plain batch between two pipeline batches re-seeds on its own: dropout masks still agree step by step
    assert result["losses_compared"] == 12
    assert result["max_loss_diff"] <= 1e-6
    assert result["pipeline"]["steps_timed"] == result["plain"]["steps_timed"] == 10
    assert result["interleaved"] and len(result["paired_ratios"]) == 1
    assert result["ratio"] == result["paired_ratios"][0] > 0
