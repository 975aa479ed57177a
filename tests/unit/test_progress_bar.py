"""The terminal's progress bar names the epoch the way a user reads it, whatever bounds the run."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichProgressBar

from pipeline.training.progress import EpochBar, use_epoch_bar


@pytest.mark.parametrize(
    ("bounds", "expected"),
    [({"max_steps": 5, "max_epochs": None}, "Epoch 0"), ({"max_epochs": 3}, "Epoch 0/2")],
)
def test_the_bar_shows_no_negative_epoch_count(bounds, expected):
    trainer = pl.Trainer(callbacks=[RichProgressBar()], logger=False, enable_checkpointing=False, **bounds)
    use_epoch_bar(trainer)
    bar = trainer.progress_bar_callback
    assert isinstance(bar, EpochBar)
    bar._trainer = trainer  # what Lightning sets when the run starts
    assert bar._get_train_description(0).strip() == expected
