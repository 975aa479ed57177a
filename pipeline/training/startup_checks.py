"""What every CLI run shows at start: Lightning's noise removed, and a warning when validation would never run.

* Lightning prints a "Tip: ... litlogger" advert on every Trainer, and its model summary ends with "Total Flops: 0"
  (and a FLOPs column of zeros): it counts FLOPs only for modules with an ``example_input_array``, which ours have
  not. :func:`quiet_lightning` drops the advert; :class:`SummaryWithoutFlops` prints the summary without FLOPs.
  It also silences two Lightning warnings about what this pipeline does on purpose (:data:`BY_DESIGN`), which every
  command printed as a wall of text when Python warnings are on (the tests run with them off, users do not).
* ``trainer.val_check_interval: 50`` counts batches *within* an epoch (unless ``check_val_every_n_epoch`` is null),
  so with 7 batches per epoch validation never runs and no best checkpoint is kept. Lightning refuses this for data
  of known length, not for streams (ours have no length). :class:`ValidationSchedule` says so in one line with the
  fix: at the start of training when an upper bound of the epoch length is cheap to get (counting training records
  for a few seconds at most), else at the end of the first epoch, when the length is known exactly. Where the
  epoch length is known (the LM's windows), Lightning refuses the interval with a traceback; :func:`interval_error`
  gives the CLI the same one sentence instead.
"""

from __future__ import annotations

import logging
import math
import re
import sys
import time
import warnings
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelSummary, RichModelSummary
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.model_summary.model_summary import _format_summary_table

#: Logger that Lightning's ``rank_zero_info`` writes to.
RANK_ZERO_LOGGER = "pytorch_lightning.utilities.rank_zero"
#: Lightning warnings about choices this pipeline makes on purpose: the CLI passes its (rewritten) command line as
#: ``args``; tasks move flat batch dicts to the device themselves (see ``SequenceTask.transfer_batch_to_device``).
BY_DESIGN = (
    "LightningCLI's args parameter is intended to run from within Python",
    "You have overridden `transfer_batch_to_device` in `LightningModule` but have passed in a `LightningDataModule`",
)
#: Seconds spent at most counting training records for the epoch-length estimate.
COUNT_BUDGET_S = 3.0


class _NoAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def quiet_lightning() -> None:
    """Drop Lightning's LitLogger advert and its warnings about :data:`BY_DESIGN` choices from every run."""
    for message in BY_DESIGN:
        warnings.filterwarnings("ignore", message=message)
    logger = logging.getLogger(RANK_ZERO_LOGGER)
    if not any(isinstance(f, _NoAdverts) for f in logger.filters):
        logger.addFilter(_NoAdverts())


class SummaryWithoutFlops(ModelSummary):
    """Lightning's model summary without the FLOPs column and the "Total Flops" line (always 0 here)."""

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        columns = [col for col in summary_data if col[0] != "FLOPs"]
        table = _format_summary_table(
            total_parameters, trainable_parameters, model_size, total_training_modes, 0, *columns
        )
        lines = table.splitlines()
        if lines and lines[-1].rstrip().endswith("Total Flops"):
            lines.pop()
        logging.getLogger("pytorch_lightning.callbacks.model_summary").info("\n" + "\n".join(lines))


#: Lightning's own refusal of an interval longer than an epoch of known length (the LM's windows): a traceback.
_LONGER_THAN_EPOCH = re.compile(
    r"`val_check_interval` \((\d+)\) must be less than or equal to the number of the training batches \((\d+)\)"
)
_SHORT_EPOCH_FIX = (
    "set a smaller --trainer.val_check_interval, or --trainer.check_val_every_n_epoch null to count batches across "
    "epochs"
)


def interval_error(exc: BaseException) -> ValueError | None:
    """Lightning's refusal of ``val_check_interval`` as the pipeline's one sentence (for the CLI), else None."""
    found = _LONGER_THAN_EPOCH.search(str(exc)) if isinstance(exc, ValueError) else None
    if found is None:
        return None
    interval, batches = found.groups()
    return ValueError(
        f"trainer.val_check_interval {interval} is never reached: it counts batches within an epoch and an epoch "
        f"has {batches} batches; {_SHORT_EPOCH_FIX}."
    )


@rank_zero_only
def _say(message: str) -> None:
    # the CLI's own say() lives in pipeline.cli, which imports this module
    print(f"[pipeline] {message}", file=sys.stderr, flush=True)


def count_records(datamodule: Any, cap: int, budget_s: float = COUNT_BUDGET_S) -> int | None:
    """Good training records of a stream DataModule, or None when there are ``cap`` or more, counting takes longer
    than ``budget_s``, or the data module has no record source to count."""
    source, columns = getattr(datamodule, "train_source", None), getattr(datamodule, "columns", None)
    if source is None or columns is None or not hasattr(source, "dataset"):
        return None
    start, n = time.monotonic(), 0
    for chunk in source.dataset(list(columns().values())).iter(batch_size=256):
        n += sum(1 for fault in chunk["_fault"] if not fault)
        if n >= cap or time.monotonic() - start > budget_s:
            return None
    return n


class ValidationSchedule(pl.Callback):
    """Warn, once, when an integer ``val_check_interval`` is never reached (see the module docstring)."""

    def __init__(self) -> None:
        self.warned = False
        self._batches = 0

    @staticmethod
    def interval(trainer: pl.Trainer) -> int | None:
        """The batch interval of validation, or None when validation is off, time-based or a fraction of an epoch."""
        no_val_split = hasattr(trainer.datamodule, "val_source") and trainer.datamodule.val_source is None
        if not trainer.enable_validation or no_val_split:
            return None
        if trainer._val_check_time_interval is not None or not isinstance(trainer.val_check_interval, int):
            return None
        return int(trainer.val_check_interval)

    def _warn(self, interval: int, why: str, fix: str) -> None:
        self.warned = True
        outcome = "so no validation will run and no best checkpoint will be kept"
        _say(f"trainer.val_check_interval {interval} is never reached: {why}, {outcome}; {fix}.")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        interval = self.interval(trainer)
        if interval is None:
            return
        steps = trainer.max_steps
        if trainer.check_val_every_n_epoch is None:  # counts across epochs: only max_steps can cut it short
            if 0 < steps < interval:
                stop, fix = f"training stops at trainer.max_steps {steps}", f"set it to {steps} or less"
                self._warn(interval, stop, fix)
            return
        if math.isfinite(trainer.num_training_batches) or isinstance(trainer.limit_train_batches, int):
            return  # a known epoch length: Lightning refuses it itself (interval_error words it for the CLI)
        most = self.most_batches(trainer, interval)
        if most is not None and most < interval:
            self.epoch_too_short(interval, f"at most {most}")

    @staticmethod
    def most_batches(trainer: pl.Trainer, interval: int) -> int | None:
        """An upper bound of the batches per epoch on each rank, from a bounded count of the training records
        (None: too many to count, or nothing to count). Full batches of ``batch_size``, plus one partial batch per
        bucketing buffer and per DataLoader worker; a token-budget batch holds at least one record."""
        dm, world = trainer.datamodule, trainer.world_size
        size = getattr(dm, "batch_size", None) or 1
        n = count_records(dm, cap=interval * size * world)
        if n is None:
            return None
        if size == 1:
            return math.ceil(n / world)
        buffer = max(int(getattr(dm, "buffer_size", 0) or 0), size)
        return (
            math.ceil(n / (size * world))
            + math.ceil(n / (buffer * world))
            + int(getattr(dm, "num_workers", 0))
        )

    def epoch_too_short(self, interval: int, batches: str) -> None:
        self._warn(
            interval,
            f"it counts batches within an epoch and an epoch has {batches} batches",
            _SHORT_EPOCH_FIX,
        )

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self._batches += 1

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        batches, self._batches = self._batches, 0
        interval = self.interval(trainer)
        if self.warned or interval is None or trainer.check_val_every_n_epoch is None or trainer.should_stop:
            return
        # the data ran out (not max_steps), in an epoch that was not resumed part-way
        ran_out = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        whole_epoch = ran_out and trainer.current_epoch == 0 and trainer.ckpt_path is None
        if whole_epoch and 0 < batches < interval:
            self.epoch_too_short(interval, f"{batches}")


def install(trainer: pl.Trainer, mode: str) -> None:
    """Swap in the (plain text) summary without FLOPs and, for ``fit``, add the validation-schedule check."""
    for i, callback in enumerate(trainer.callbacks):
        if type(callback) in (ModelSummary, RichModelSummary):  # the rich one hard-codes its FLOPs column
            trainer.callbacks[i] = SummaryWithoutFlops(callback._max_depth, **callback._summarize_kwargs)
    if mode == "fit":
        trainer.callbacks.append(ValidationSchedule())
