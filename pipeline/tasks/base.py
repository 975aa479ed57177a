"""What every task shares: the optimizer step (clipping, non-finite guard, scheduler) and what gets logged.

All tasks use manual optimization so that there is exactly one optimizer-step path, used by ordinary tasks
(one step per batch) and by truncated BPTT (one step per window, :mod:`pipeline.tasks.tbptt`). Consequences users can
rely on:

- ``trainer.global_step`` and ``max_steps`` count optimizer steps (windows under TBPTT, batches otherwise). The x-axis
  of the logged curves (Lightning's logging step) counts batches: the same unit when a batch is one step, and under
  TBPTT the task also logs ``train/optimizer_steps`` (see :mod:`pipeline.tasks.tbptt`);
- clipping is set here (``model.clip_norm``), not with ``trainer.gradient_clip_val``, which Lightning forbids with
  manual optimization; it reuses the norm that was logged. ``bf16-mixed`` and ``32-true`` are supported; fp16 with
  loss scaling (``16-mixed``) is refused at the start, since Lightning would unscale after the clip;
- a step whose loss or gradient norm is NaN/Inf is skipped: no parameter or optimizer state changes, it is counted
  (``train/nonfinite_steps``), and after ``max_nonfinite_steps`` in a row training stops with a clear message. Under DDP
  the decision is all-reduced, so every rank skips the same steps and weights never diverge;
- the learning-rate scheduler is stepped after every optimizer step that was taken;
- with ``ema_decay`` set, an exponential moving average of the weights is updated after every step taken; it is
  what validation scores and what checkpoints hold as ``state_dict`` (see :mod:`pipeline.tasks.ema`).
"""

from __future__ import annotations

import math
import time

import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable

from pipeline.data.faults import KINDS
from pipeline.tasks.direct_backward import direct_backward_ok
from pipeline.tasks.ema import WeightEMA


class NonFiniteError(RuntimeError):
    """Training produced too many non-finite steps in a row."""


class SequenceTask(pl.LightningModule):
    """Base LightningModule: subclasses compute a loss and call :meth:`optimizer_step_on`.

    Args:
        optimizer: Optimizer class and its arguments, e.g. ``{class_path: torch.optim.AdamW, init_args: {lr: 0.002}}``.
        scheduler: Learning-rate scheduler, stepped after every optimizer step (e.g. ``pipeline.tasks.schedules.Warmup``).
        clip_norm: Clip the global gradient norm to this value (null: no clipping). The norm before clipping is logged
            as ``train/grad_norm``.
        max_nonfinite_steps: Stop after this many consecutive steps with a NaN/Inf loss or gradient norm.
        ema_decay: Keep an exponential moving average of the weights with this decay (e.g. 0.999; null: none); the
            average is validated and saved as the checkpoint's weights (:mod:`pipeline.tasks.ema`).
    """

    def __init__(
        self,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        clip_norm: float | None = 1.0,
        max_nonfinite_steps: int = 10,
        ema_decay: float | None = None,
    ) -> None:
        super().__init__()
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise ValueError(f"model.ema_decay is {ema_decay}; set it between 0 and 1 (e.g. 0.999), or null.")
        self.ema_decay = ema_decay
        self.ema: WeightEMA | None = None  # made when fit starts
        self._step_params: list[torch.nn.Parameter] | None = None  # set when fit starts
        # loss.backward() in place of manual_backward where the two do the same (direct_backward.py); fit sets it
        self._direct_backward = False
        self._ema_resume: tuple[dict, int] | None = None  # (average, updates) of the checkpoint a fit resumes
        self.automatic_optimization = False
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.clip_norm, self.max_nonfinite_steps = clip_norm, max_nonfinite_steps
        self.nonfinite_total = 0
        self.nonfinite_in_a_row = 0
        self._tick: float | None = None
        self._window = [0.0, 0, 0]  # seconds, tokens, examples since the last logged throughput
        self._pad = [0.0, 0]  # sum and count of the padding fraction this epoch
        self._loss_sum, self._loss_n = torch.zeros(()), 0  # n-weighted training loss this epoch
        # training accuracies (log_train_accuracy): hits and labels this epoch, per name; subclasses list the names
        self.train_accuracy_names: tuple[str, ...] = ()
        self._hits: dict[str, torch.Tensor] = {}
        self._seen: dict[str, torch.Tensor | int] = {}

    def on_fit_start(self) -> None:
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            # Lightning unscales fp16 gradients inside optimizer.step(), after this task has already taken their
            # norm, checked them and clipped them: all three would see scaled values.
            raise ValueError(
                "trainer.precision 16-mixed (fp16 with loss scaling) is not supported by the training step; "
                "use bf16-mixed (Ampere or newer GPUs, recent CPUs) or 32-true."
            )
        # the parameters the step checks and clips: the same objects for the whole fit, once on their device (.to()
        # and load_state_dict change their data in place); walking the module tree twice a step cost ~0.3% of a
        # small model's step
        self._step_params = list(self.parameters())
        self._direct_backward = direct_backward_ok(self.trainer, self)
        if self.ema_decay is not None:
            average, updates = self._ema_resume or (None, 0)
            self.ema = WeightEMA(self, self.ema_decay, start=average)
            self.ema.updates = updates

    def transfer_batch_to_device(self, batch: dict, device: torch.device, dataloader_idx: int) -> dict:
        """Batches are flat dicts of tensors and plain values (ids, texts, positions). Lightning's default walks every
        element of every list recursively, about a millisecond per batch on a CPU, where nothing needs to move."""
        if device.type == "cpu":
            return batch
        return {
            k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
        }

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        if hasattr(scheduler, "attach"):  # a schedule on the trainer's clock (schedules.WallClock)
            scheduler.attach(self.trainer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # --- the one optimizer-step path --------------------------------------------------------------------------
    def optimizer_step_on(self, loss: torch.Tensor, accumulate: bool = False) -> bool:
        """Backpropagate ``loss``, check, clip and step. Returns False when the step was skipped as non-finite.

        ``accumulate``: keep the gradients of a ``manual_backward`` the caller ran since the last step and add this
        loss's to them (two passes, one step: ``SentimentTask.adversarial_eps``)."""
        opt = self.optimizers()
        if not accumulate:
            opt.zero_grad(set_to_none=True)
        self.backward_pass(loss)
        # outside fit (a test), the module's own parameters
        params = self._step_params if self._step_params is not None else self.parameters()
        with_grad = [p for p in params if p.grad is not None]
        grads = [p.grad for p in with_grad]
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=loss.device)
        # one number checks both (and, summed, every rank): a sum is finite exactly when its terms are, short of
        # float32 overflow past 1e38, a step no clipping would rescue either. One op, where six cost ~0.4% of a step
        check = norm + loss.detach().float()
        if self.trainer.world_size > 1:
            check = self.trainer.strategy.reduce(check, reduce_op="sum")
        if self.logging_step():
            self.log("train/grad_norm", norm, on_step=True, on_epoch=False, batch_size=1)
        if not math.isfinite(check.item()):
            opt.zero_grad(set_to_none=True)
            self.nonfinite_total += 1
            self.nonfinite_in_a_row += 1
            self.log(
                "train/nonfinite_steps",
                float(self.nonfinite_total),
                on_step=True,
                on_epoch=False,
                batch_size=1,
            )
            if self.nonfinite_in_a_row >= self.max_nonfinite_steps:
                raise NonFiniteError(
                    f"{self.nonfinite_in_a_row} optimizer steps in a row had a NaN/Inf loss or gradient; stopping. "
                    f"Lower the learning rate (model.optimizer), set model.clip_norm, or check the data."
                )
            return False
        self.nonfinite_in_a_row = 0
        if self.clip_norm is not None and grads:
            # the norm is already known: scale by clip_norm / norm without a second pass over the gradients
            torch.nn.utils.clip_grads_with_norm_(with_grad, self.clip_norm, norm)
        opt.step()
        if self.ema is not None:
            self.ema.update(self)
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()
        if self.logging_step():
            self.log("train/lr", opt.param_groups[0]["lr"], on_step=True, on_epoch=False, batch_size=1)
        return True

    def backward_pass(self, loss: torch.Tensor) -> None:
        """``manual_backward(loss)``, or ``loss.backward()`` where the two do the same (``direct_backward.py``)."""
        if self._direct_backward:
            loss.backward()
        else:
            self.manual_backward(loss)

    def logging_step(self) -> bool:
        """Whether this batch's step metrics reach the logger (every ``trainer.log_every_n_steps`` batches).

        Lightning drops step values logged in between, yet each ``self.log`` call still costs about 0.2 ms of
        bookkeeping; at 30 steps/s that is several percent of a small model's step, so step-only metrics are
        logged on these batches only.
        """
        try:
            return self.trainer._logger_connector.should_update_logs
        except (AttributeError, RuntimeError):  # no trainer attached (a bare module in a test)
            return True

    # --- shared logging ---------------------------------------------------------------------------------------
    def log_train_accuracy(
        self, name: str, logits: torch.Tensor, labels: torch.Tensor, ignore: int | None = None
    ) -> None:
        """Training accuracy of ``logits`` (N, K) against ``labels`` (N,): ``{name}_step`` on the logged batches, and
        ``{name}_epoch`` (hits over the whole epoch, summed across ranks) at its end. ``ignore``: a label to leave out.

        A hit count and a label count per name, four tensor ops a batch: a torchmetrics update with ``self.log`` of
        the metric cost ~0.5% of a small model's step on a CPU (roofline.py's sentiment row). ``name`` must be in
        ``train_accuracy_names``, so that every DDP rank reduces and logs the same keys at the epoch end."""
        hit = logits.detach().argmax(-1) == labels  # (N,)
        if ignore is None:
            hits, count = hit.sum(), labels.numel()
        else:
            keep = labels != ignore
            hits, count = (hit & keep).sum(), keep.sum()
        self._hits[name] = self._hits.get(name, 0) + hits
        self._seen[name] = self._seen.get(name, 0) + count
        if self.logging_step():  # int(count) syncs a device count: on the logged batches only
            acc = hits / max(int(count), 1)
            self.log(f"{name}_step", acc.float(), on_step=True, on_epoch=False, batch_size=len(labels))

    def _log_train_accuracy_epoch(self) -> None:
        if not self.train_accuracy_names:
            return
        tally = torch.tensor(  # (names, 2): hits, labels; one reduction for all of them
            [[float(self._hits.get(n, 0)), float(self._seen.get(n, 0))] for n in self.train_accuracy_names],
            device=self.device,
        )
        if self.trainer.world_size > 1:
            tally = self.trainer.strategy.reduce(tally, reduce_op="sum")
        for name, (hits, seen) in zip(self.train_accuracy_names, tally.tolist(), strict=True):
            if seen:
                self.log(f"{name}_epoch", hits / seen, on_step=False, on_epoch=True)

    def on_train_batch_end(self, outputs, batch: dict, batch_idx: int) -> None:
        # Throughput over the batches since the last logged one: the wall time of each step, data wait included,
        # from the end of the previous batch (or of a validation) to the end of this one.
        now = time.perf_counter()
        if self._tick is not None:
            self._window[0] += max(now - self._tick, 1e-9)
            self._window[1] += batch.get("n_tokens", 0)
            self._window[2] += len(batch.get("ids") or ())
        self._tick = now
        seconds, tokens, examples = self._window
        if self.logging_step() and seconds > 0:
            if "n_tokens" in batch:
                self.log("train/tokens_per_s", tokens / seconds, on_step=True, on_epoch=False, batch_size=1)
            if batch.get("ids"):
                self.log(
                    "train/examples_per_s", examples / seconds, on_step=True, on_epoch=False, batch_size=1
                )
            self._window = [0.0, 0, 0]
        if "pad_fraction" in batch:  # the epoch mean is ours (on_train_epoch_end): one self.log less per step
            self._pad[0] += float(batch["pad_fraction"])
            self._pad[1] += 1
            if self.logging_step():
                self.log(
                    "train/pad_fraction_step", float(batch["pad_fraction"]), on_step=True, on_epoch=False
                )

    def log_train_loss(self, loss: torch.Tensor, n: int) -> None:
        """``train/loss_step`` on the batches that reach the logger (and the progress bar), and ``train/loss_epoch``,
        the mean over the epoch weighted by ``n``, at its end: the keys ``self.log(on_step=True, on_epoch=True)``
        makes, without its bookkeeping on every batch (about 5% of a small model's step on a CPU)."""
        loss = loss.detach()
        self._loss_sum = self._loss_sum + loss.float() * n  # a tensor: no device sync per step
        self._loss_n += n
        if self.logging_step():
            self.log("train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=n)

    def on_train_epoch_start(self) -> None:
        self._hits, self._seen = {}, {}
        self._tick = None  # the first batch of an epoch waits for the stream to start: not counted
        self._window, self._pad = [0.0, 0, 0], [0.0, 0]
        self._loss_sum, self._loss_n = torch.zeros(()), 0

    def on_validation_model_eval(self) -> None:
        super().on_validation_model_eval()
        if self.ema is not None and not self.ema.swapped:
            self.ema.swap(self)  # validate the average; swapped back in on_validation_end, after checkpoints

    def on_validation_end(self) -> None:
        if self.ema is not None and self.ema.swapped:
            self.ema.swap(self)
        if self._tick is not None:
            self._tick = time.perf_counter()  # validation time is not training throughput

    def on_train_epoch_end(self) -> None:
        self._log_train_accuracy_epoch()
        if self._loss_n:
            mean = self._loss_sum / self._loss_n
            self.log("train/loss_epoch", mean, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        if self._pad[1]:
            pad = self._pad[0] / self._pad[1]
            self.log("train/pad_fraction_epoch", pad, on_step=False, on_epoch=True, sync_dist=True)
        counts = self.trainer.datamodule.fault_counts() if self.trainer.datamodule is not None else {}
        for kind in KINDS:  # every kind, zeros included, so that all DDP ranks log the same keys
            self.log(
                f"data/skipped_{kind}",
                float(counts.get(kind, 0)),
                reduce_fx="sum",
                sync_dist=True,
                batch_size=1,
            )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        for name, p in self.state_dict().items():
            if p.is_floating_point() and not torch.isfinite(p).all():
                raise NonFiniteError(
                    f"parameter {name} is not finite; refusing to write a checkpoint with it."
                )
        checkpoint["nonfinite_total"] = self.nonfinite_total
        if (
            self.ema is not None
        ):  # the average is the checkpoint's weights; the live ones ride along for resuming
            average, live = self.ema.average_and_live(self)
            state = checkpoint["state_dict"]
            state.update({n: t.to(state[n].dtype) for n, t in average.items()})
            checkpoint["ema"] = {"live": live, "updates": self.ema.updates, "decay": self.ema.decay}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.nonfinite_total = checkpoint.get("nonfinite_total", 0)
        ema = checkpoint.get("ema")
        if ema is not None and self._trainer is not None and self.trainer.state.fn == "fit":
            # a resumed fit trains on the live weights (loaded right after this hook) and carries the average on
            state = checkpoint["state_dict"]
            self._ema_resume = ({n: state[n].clone() for n in ema["live"]}, int(ema["updates"]))
            state.update({n: t.to(state[n].dtype) for n, t in ema["live"].items()})
