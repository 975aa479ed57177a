"""Training accuracy: ``train/acc_epoch`` is the share of the epoch's training predictions that were right."""

import csv
from functools import partial

import pytest
import pytorch_lightning as pl
import torch

from pipeline.models.classifier import SequenceClassifier
from pipeline.tasks.sentiment import SentimentTask
from tests.conftest import toy_sentiment_batches


def _task() -> SentimentTask:
    torch.manual_seed(0)
    net = SequenceClassifier(vocab_size=30, embedding_dim=8, hidden_size=6, dropout=0.0, packed=False)
    # learning rate 0: the weights the epoch trained with are the weights checked after it
    return SentimentTask(net, optimizer=partial(torch.optim.SGD, lr=0.0), clip_norm=None)


def test_epoch_accuracy_counts_every_training_prediction_not_only_the_logged_steps(tmp_path):
    task, data = _task(), toy_sentiment_batches()
    trainer = pl.Trainer(
        max_epochs=1,
        logger=pl.loggers.CSVLogger(tmp_path),
        log_every_n_steps=4,  # one logged step of six: the epoch value must not be read off the logged ones
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(task, train_dataloaders=torch.utils.data.DataLoader(data, batch_size=None))
    with torch.no_grad():
        hits = sum(int((task(b["tokens"], b["lengths"]).argmax(-1) == b["labels"]).sum()) for b in data)
    rows = list(csv.DictReader(next(tmp_path.rglob("metrics.csv")).open()))
    epoch = [float(r["train/acc_epoch"]) for r in rows if r.get("train/acc_epoch")]
    assert epoch == [pytest.approx(hits / 48)]
    assert len([r for r in rows if r.get("train/acc_step")]) == 1


def test_an_ignored_label_is_neither_a_hit_nor_counted():
    task = _task()
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [2.0, 0.0]])  # predicts 0, 1, 0, 0
    labels = torch.tensor([0, 0, -100, -100])  # one right, one wrong, two padded frames
    with pytest.warns(UserWarning, match="self.log"):  # no trainer here: the step value has nowhere to go
        task.log_train_accuracy("train/frame_acc", logits, labels, ignore=-100)
    assert (int(task._hits["train/frame_acc"]), int(task._seen["train/frame_acc"])) == (1, 2)
