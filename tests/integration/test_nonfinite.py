"""A poisoned batch (NaN loss) skips its optimizer step, is counted, and training goes on with finite weights."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from pipeline.cli import PipelineCLI
from pipeline.tasks.base import NonFiniteError

DEBUG = "configs/debug/sentiment.yaml"


class Poison(pl.Callback):
    """Turns the loss of the chosen batches (1-based index in the epoch) into NaN through the batch weight."""

    def __init__(self, batches: set[int] | None = None, from_batch: int | None = None) -> None:
        self.batches, self.from_batch = batches or set(), from_batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        index = batch["position"][1]
        if index in self.batches or (self.from_batch is not None and index >= self.from_batch):
            batch["weight"] = float("nan")


@pytest.fixture
def cli_factory(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(
        "PIPELINE_RUN_DIR", ""
    )  # the CLI exports these for DDP children; keep them out of other tests
    monkeypatch.setenv("PIPELINE_CKPT", "")

    def make(*extra: str) -> PipelineCLI:
        args = [
            "--config",
            DEBUG,
            "--runs_dir",
            str(tmp_path / "runs"),
            "--trainer.logger",
            "false",
            "--trainer.enable_progress_bar",
            "false",
            *extra,
        ]
        return PipelineCLI(args=args, mode="fit")

    return make


def test_poisoned_batch_is_skipped_counted_and_training_continues(cli_factory):
    cli = cli_factory("--trainer.max_steps", "8")
    cli.trainer.callbacks.append(Poison(batches={3}))
    cli.fit()
    assert cli.model.nonfinite_total == 1
    assert cli.trainer.global_step == 8  # 9 batches were consumed: the poisoned one did not step
    assert all(torch.isfinite(p).all() for p in cli.model.parameters())
    last = torch.load(cli.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values())
    assert last["nonfinite_total"] == 1


def test_too_many_nonfinite_steps_in_a_row_stop_with_a_clear_message(cli_factory):
    cli = cli_factory("--trainer.max_steps", "20", "--model.init_args.max_nonfinite_steps", "3")
    cli.trainer.callbacks.append(Poison(from_batch=2))
    with pytest.raises(
        NonFiniteError, match="3 optimizer steps in a row had a NaN/Inf loss or gradient; stopping"
    ):
        cli.fit()
    assert all(torch.isfinite(p).all() for p in cli.model.parameters())


def test_a_checkpoint_is_never_written_with_nonfinite_weights(cli_factory, tmp_path):
    cli = cli_factory("--trainer.max_steps", "1")
    cli.fit()
    with torch.no_grad():
        next(cli.model.parameters()).fill_(float("nan"))
    with pytest.raises(NonFiniteError, match="is not finite; refusing to write a checkpoint"):
        cli.trainer.save_checkpoint(tmp_path / "bad.ckpt")
    assert not (tmp_path / "bad.ckpt").exists()
