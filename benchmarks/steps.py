"""Timed training steps of a shipped config, through the pipeline and through a plain PyTorch loop.

Shared by ``roofline.py``, ``threads.py`` and ``gpu.py``. Both paths train the same network from the same initial
weights on the same batches (a fresh data module of the same config, so the same order), with the same optimizer,
scheduler, clipping and autocast, and re-seed torch before every batch so that dropout masks agree too; their first
losses then agree to float precision, which is checked, and the tokens/s ratio measures what Lightning and the
task's bookkeeping cost.

    batch k:  [data wait: next(loader)] [compute: forward, backward, clip, optimizer step] ...
              timed from step ``warmup`` on; tokens are real (non-pad) tokens, frames for video
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from pipeline.cli import PipelineCLI
from pipeline.tasks.ema import WeightEMA
from pipeline.tasks.tbptt import TBPTTTask, truncated_bptt
from pipeline.training.resume import reseed

ROOT = Path(__file__).resolve().parents[1]
SEED_BASE = 1234


def build(config: str, runs: Path, *overrides: str, steps: int = 60) -> PipelineCLI:
    """The CLI of ``config`` in fit mode, ``steps`` optimizer steps, no validation, no logger."""
    args = [
        "--config", str(ROOT / config), "--runs_dir", str(runs), "--trainer.max_steps", str(steps),
        "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0", "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false", "--checkpoint.save_last", "false", *overrides,
    ]  # fmt: skip
    return PipelineCLI(args=args, mode="fit")


def batch_examples(batch: dict) -> int:
    """Sequences (sentences, clips, streams) in a batch."""
    for key in ("labels", "src", "tokens", "frames"):
        if key in batch:
            return int(batch[key].size(0))
    return 0


def batch_units(batch: dict) -> int:
    """Real tokens of a batch (frames for video)."""
    if "n_tokens" in batch:
        return int(batch["n_tokens"])
    return int(batch["lengths"].sum())


class StepTimer(pl.Callback):
    """Per-batch data wait and compute time in the Lightning run, and the same re-seeding as the plain loop."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.rows = warmup, []  # rows: (wait s, compute s, units, examples)
        self._end: float | None = None
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        reseed(SEED_BASE + batch_idx)
        self._start = time.perf_counter()
        self._wait = self._start - self._end if self._end is not None else 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        sync(pl_module.device)
        self._end = time.perf_counter()
        if batch_idx >= self.warmup:
            self.rows.append((self._wait, self._end - self._start, batch_units(batch), batch_examples(batch)))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def record_losses(task: pl.LightningModule, limit: int) -> list[float]:
    """Wrap the task's one optimizer-step path to record the first ``limit`` losses."""
    losses: list[float] = []
    inner = task.optimizer_step_on

    def step(loss: torch.Tensor) -> bool:
        if len(losses) < limit:
            losses.append(float(loss.detach()))
        return inner(loss)

    task.optimizer_step_on = step
    return losses


def run_pipeline(cli: PipelineCLI, warmup: int, n_losses: int = 50) -> dict:
    timer = StepTimer(warmup)
    cli.trainer.callbacks.append(timer)
    losses = record_losses(cli.model, n_losses)
    cli.trainer.fit(cli.model, cli.datamodule)
    return summarize(timer.rows) | {"losses": losses}


def summarize(rows: list[tuple[float, float, int, int]]) -> dict:
    wait = sum(r[0] for r in rows)
    compute = sum(r[1] for r in rows)
    units, examples = sum(r[2] for r in rows), sum(r[3] for r in rows)
    return {
        "steps_timed": len(rows),
        "units_per_s": units / (wait + compute) if rows else 0.0,
        "examples_per_s": examples / (wait + compute) if rows else 0.0,
        "data_wait_share": wait / (wait + compute) if rows else 0.0,
        "median_step_ms": 1000 * statistics.median(r[0] + r[1] for r in rows) if rows else 0.0,
    }


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def plain_loss(task: pl.LightningModule, batch: dict) -> torch.Tensor:
    """The loss of one non-TBPTT batch, computed the way the task's training_step does, without Lightning."""
    name = type(task).__name__
    if name == "SentimentTask":
        return (
            F.cross_entropy(task.network(batch["tokens"], batch["lengths"]), batch["labels"])
            * batch["weight"]
        )
    if name == "TranslationTask":
        return task.train_loss(batch)  # the model's own loss (output layer fused with it)
    raise NotImplementedError(f"no plain loop for {name}")


def run_plain(cli: PipelineCLI, steps: int, warmup: int, precision: str, n_losses: int = 50) -> dict:
    """The same training as ``run_pipeline`` in a plain loop: one batch, forward, backward, clip, step."""
    task, device = cli.model, torch.device("cuda" if torch.cuda.is_available() and _on_gpu(cli) else "cpu")
    task.to(device).train()
    optimizer = task.optimizer_factory(task.parameters())
    scheduler = task.scheduler_factory(optimizer) if task.scheduler_factory else None
    if task.ema_decay is not None:  # the task makes its EMA when fit starts; the plain loop keeps one as well
        task.ema = WeightEMA(task, task.ema_decay)
    # as Lightning does: no cache of bf16 weight copies. With the cache, a weight used at every step of a decoder
    # loop is cast once, and its gradient is summed over time steps in bf16 before it reaches the fp32 weight; here
    # each step's gradient reaches the fp32 weight on its own (translation's first gradients differed by up to 1e-3).
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
        if precision.startswith("bf16")
        else nullcontext()
    )
    losses: list[float] = []
    taken = [0]  # optimizer steps, the unit of trainer.max_steps

    def optimizer_step(loss: torch.Tensor) -> bool:
        taken[0] += 1
        if len(losses) < n_losses:
            losses.append(float(loss.detach()))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in task.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads)
        if task.clip_norm is not None:
            torch.nn.utils.clip_grads_with_norm_(task.parameters(), task.clip_norm, norm)
        optimizer.step()
        if task.ema is not None:  # as the task does: part of the training the config asks for
            task.ema.update(task)
        if scheduler is not None:
            scheduler.step()
        return True

    rows, state = [], None
    epoch = [0]
    train_loader = cli.datamodule.train_dataloader()
    train_loader.epoch_fn = lambda: epoch[0]  # as the Trainer's current_epoch: each epoch its own order
    loader: Iterator[dict] = iter(train_loader)
    end = time.perf_counter()
    for batch_idx in range(10**9):
        if taken[0] >= steps:
            break
        batch = next(loader, None)
        if batch is None:  # a new epoch, as Lightning starts one, so that both sides pay its start alike
            epoch[0] += 1
            loader, state = iter(train_loader), None
            batch = next(loader, None)
            if batch is None:
                break
        batch = to_device(batch, device)
        reseed(SEED_BASE + batch_idx)
        start = time.perf_counter()
        with autocast:
            if isinstance(task, TBPTTTask):
                task._window_logits = []  # the video task collects window logits for its accuracy
                state = truncated_bptt(
                    lambda window, s, b=batch: task.window_loss(b, window, s),
                    task.time_steps(batch),
                    task.tbptt_steps,
                    task.start_state(batch, state),
                    lambda loss, window, b=batch: optimizer_step(loss * b["weight"]),
                )
                state = state if task.carry_state else None
            else:
                optimizer_step(plain_loss(task, batch))
        sync(device)
        now = time.perf_counter()
        if batch_idx >= warmup:
            rows.append((start - end, now - start, batch_units(batch), batch_examples(batch)))
        end = now
    return summarize(rows) | {"losses": losses}


def _on_gpu(cli: PipelineCLI) -> bool:
    return cli.trainer.accelerator.__class__.__name__ == "CUDAAccelerator"


def initial_state(cli: PipelineCLI) -> dict:
    return {k: v.detach().clone() for k, v in cli.model.state_dict().items()}


def compare(
    cfg: str, runs: Path, *overrides: str, steps: int = 60, warmup: int = 10, rounds: int = 2
) -> dict:
    """Pipeline and plain loop back to back on the same config, ``rounds`` times in alternating order (AB, BA, ...)
    so that a machine whose speed drifts favours neither; each side's speed is the median over its runs."""
    # --threads auto times the first steps at several counts and keeps the fastest: do that once, untimed, and
    # run both sides at the count it chose, so that they compare at one thread count
    probe = build(cfg, runs / "probe", *overrides, steps=30)
    probe.trainer.fit(probe.model, probe.datamodule)
    overrides = (*overrides, "--threads", str(torch.get_num_threads()))
    runs_of: dict[str, list[dict]] = {"pipeline": [], "plain": []}
    start = None
    cli = None
    for r in range(rounds):
        for side in ("pipeline", "plain") if r % 2 == 0 else ("plain", "pipeline"):
            c = build(cfg, runs / f"{side}{r}", *overrides, steps=steps)
            if start is None:
                start, precision = initial_state(c), str(c.trainer.precision)
            c.model.load_state_dict(start)
            if side == "pipeline":
                runs_of[side].append(run_pipeline(c, warmup))
                cli = c
            else:
                runs_of[side].append(run_plain(c, steps, warmup, precision))
    pipe, plain = runs_of["pipeline"][0], runs_of["plain"][0]
    n = min(len(pipe["losses"]), len(plain["losses"]))
    diff = max(
        (abs(x - y) for x, y in zip(pipe["losses"][:n], plain["losses"][:n], strict=True)), default=None
    )
    speed = {side: statistics.median(x["units_per_s"] for x in v) for side, v in runs_of.items()}
    return {
        "precision": precision,
        "threads": torch.get_num_threads(),
        "pipeline": {k: v for k, v in pipe.items() if k != "losses"} | {"units_per_s": speed["pipeline"]},
        "plain": {k: v for k, v in plain.items() if k != "losses"} | {"units_per_s": speed["plain"]},
        "runs_units_per_s": {side: [x["units_per_s"] for x in v] for side, v in runs_of.items()},
        "ratio": speed["pipeline"] / speed["plain"] if speed["plain"] else None,
        "losses_compared": n,
        "max_loss_diff": diff,
        "cli": cli,
    }
