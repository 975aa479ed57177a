"""The task's ``loss.backward()`` in place of ``manual_backward``: the same weights, and the hooks still called where
a callback has them."""

from functools import partial

import pytorch_lightning as pl
import torch

from pipeline.models.classifier import SequenceClassifier
from pipeline.tasks.sentiment import SentimentTask
from tests.conftest import toy_sentiment_batches


class CountBackward(pl.Callback):
    """A user's callback with the backward hooks (gradient logging, for one): each must run once a step."""

    def __init__(self) -> None:
        self.before = self.after = 0

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self.before += 1

    def on_after_backward(self, trainer, pl_module) -> None:
        self.after += 1


class UseLightningPath(pl.Callback):
    """Forces ``manual_backward`` (as a callback with a backward hook would) without counting anything."""

    def on_train_start(self, trainer, pl_module) -> None:  # after the task's on_fit_start has chosen
        pl_module._direct_backward = False


def _fit(*callbacks: pl.Callback) -> SentimentTask:
    torch.manual_seed(0)
    net = SequenceClassifier(vocab_size=30, embedding_dim=8, hidden_size=6, dropout=0.0, packed=False)
    task = SentimentTask(net, optimizer=partial(torch.optim.Adam, lr=0.01), clip_norm=0.5)
    trainer = pl.Trainer(
        max_epochs=2,
        logger=False,
        callbacks=list(callbacks),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(task, train_dataloaders=torch.utils.data.DataLoader(toy_sentiment_batches(), batch_size=None))
    return task


def test_direct_backward_trains_the_same_weights_as_lightnings_manual_backward():
    direct = _fit()
    assert direct._direct_backward  # one device, no scaler, no hooks: the fast path was taken
    lightning = _fit(UseLightningPath())
    assert not lightning._direct_backward
    for (name, a), (_, b) in zip(direct.state_dict().items(), lightning.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_a_callback_with_backward_hooks_gets_them_at_every_step():
    counter = CountBackward()
    task = _fit(counter)
    assert not task._direct_backward
    assert counter.before == counter.after == 12  # 2 epochs of 6 batches, one backward each
