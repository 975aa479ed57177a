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


class PlainLoop:
    """The same training as ``run_pipeline``, one batch per ``step()``: forward, backward, clip, optimizer step."""

    def __init__(self, cli: PipelineCLI, precision: str, n_losses: int = 50) -> None:
        task = cli.model
        self.task = task
        self.device = torch.device("cuda" if torch.cuda.is_available() and _on_gpu(cli) else "cpu")
        task.to(self.device).train()
        self.optimizer = task.optimizer_factory(task.parameters())
        self.scheduler = task.scheduler_factory(self.optimizer) if task.scheduler_factory else None
        # the task makes its EMA when fit starts; the plain loop keeps one as well
        if task.ema_decay is not None:
            task.ema = WeightEMA(task, task.ema_decay)
        # as Lightning does: no cache of bf16 weight copies. With the cache, a weight used at every step of a decoder
        # loop is cast once, and its gradient is summed over time steps in bf16 before it reaches the fp32 weight;
        # here each step's gradient reaches the fp32 weight on its own (translation's first gradients differed by up
        # to 1e-3).
        self.autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=False)
            if precision.startswith("bf16")
            else nullcontext()
        )
        self.losses: list[float] = []
        self.n_losses = n_losses
        self.taken = 0  # optimizer steps, the unit of trainer.max_steps
        self.batch_idx, self.epoch, self.state = 0, 0, None
        self.train_loader = cli.datamodule.train_dataloader()
        # as the Trainer's current_epoch: each epoch its own order
        self.train_loader.epoch_fn = lambda: self.epoch
        self.loader: Iterator[dict] = iter(self.train_loader)

    def close(self) -> None:
        """Stop the loader's workers now, in this process: a forked worker of a later run that inherited this
        iterator would otherwise try to at its exit ("AssertionError: can only test a child process")."""
        self.loader = iter(())

    def optimizer_step(self, loss: torch.Tensor) -> bool:
        task = self.task
        self.taken += 1
        if len(self.losses) < self.n_losses:
            self.losses.append(float(loss.detach()))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in task.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads)
        if task.clip_norm is not None:
            torch.nn.utils.clip_grads_with_norm_(task.parameters(), task.clip_norm, norm)
        self.optimizer.step()
        if task.ema is not None:  # as the task does: part of the training the config asks for
            task.ema.update(task)
        if self.scheduler is not None:
            self.scheduler.step()
        return True

    def step(self) -> tuple[float, float, int, int] | None:
        """One batch: (data wait s, compute s, units, examples), or None when the data has run out."""
        task, device = self.task, self.device
        begin = time.perf_counter()
        batch = next(self.loader, None)
        if batch is None:  # a new epoch, as Lightning starts one, so that both sides pay its start alike
            self.epoch += 1
            self.loader, self.state = iter(self.train_loader), None
            batch = next(self.loader, None)
            if batch is None:
                return None
        batch = to_device(batch, device)
        reseed(SEED_BASE + self.batch_idx)
        self.batch_idx += 1
        start = time.perf_counter()
        with self.autocast:
            if isinstance(task, TBPTTTask):
                task._window_logits = []  # the video task collects window logits for its accuracy
                self.state = truncated_bptt(
                    lambda window, s, b=batch: task.window_loss(b, window, s),
                    task.time_steps(batch),
                    task.tbptt_steps,
                    task.start_state(batch, self.state),
                    lambda loss, window, b=batch: self.optimizer_step(loss * b["weight"]),
                )
                self.state = self.state if task.carry_state else None
            else:
                self.optimizer_step(plain_loss(task, batch))
        sync(device)
        return start - begin, time.perf_counter() - start, batch_units(batch), batch_examples(batch)


def run_plain(cli: PipelineCLI, steps: int, warmup: int, precision: str, n_losses: int = 50) -> dict:
    """The same training as ``run_pipeline`` in a plain loop, ``steps`` optimizer steps."""
    loop, rows = PlainLoop(cli, precision, n_losses), []
    while loop.taken < steps:
        row = loop.step()
        if row is None:
            break
        if loop.batch_idx > warmup:
            rows.append(row)
    loop.close()
    return summarize(rows) | {"losses": loop.losses}


class Interleave(pl.Callback):
    """One plain-loop batch beside each pipeline batch, in the same process, first one side and then the other.

    A machine whose speed drifts (±10% from one minute to the next on a shared VM) slows both sides alike, since they
    alternate every few milliseconds; back-to-back runs of a minute each cannot resolve a 1% difference there.

        even k:  pipeline batch k | plain batch k          odd k:  plain batch k | pipeline batch k
        (StepTimer: wait, compute)  (its own row)                   (its own row)  the pipeline's clock starts after it

    The order alternates because both sides see the same batches, and the first to meet a tensor shape pays for it:
    oneDNN builds (JIT-compiles) a bf16 matmul kernel for every new shape, ~1-40 ms each, and the second side finds
    it in the primitive cache. Translation's batches bring tens of new shapes each (per-step batch sizes of the packed
    encoder, the decoder's batch size, the output layer's last chunk): with the pipeline always first, its steps were
    20% slower than the plain loop's on the same batches, and two plain loops in turns differed just as much.
    """

    def __init__(self, loop: PlainLoop, timer: StepTimer, warmup: int) -> None:
        self.loop, self.timer, self.warmup, self.rows = loop, timer, warmup, []

    def _plain_batch(self, batch_idx: int) -> None:
        row = self.loop.step()
        if row is not None and batch_idx >= self.warmup:
            self.rows.append(row)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx % 2:
            self._plain_batch(batch_idx)
            # the timer (an earlier callback) re-seeded and started the pipeline's batch before this one ran
            reseed(SEED_BASE + batch_idx)
            self.timer._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx % 2 == 0:
            self._plain_batch(batch_idx)
            # the pipeline's next data wait starts now: Lightning's own work between batches stays on its side
            self.timer._end = time.perf_counter()


def run_interleaved(pipe: PipelineCLI, plain: PipelineCLI, warmup: int, precision: str) -> dict:
    """``run_pipeline`` and ``run_plain`` batch by batch in turns: each side's summary and first losses."""
    timer = StepTimer(warmup)
    turns = Interleave(PlainLoop(plain, precision), timer, warmup)
    pipe.trainer.callbacks.append(timer)
    pipe.trainer.callbacks.append(turns)  # after the timer, whose clock it moves past the plain batch
    losses = record_losses(pipe.model, 50)
    pipe.trainer.fit(pipe.model, pipe.datamodule)
    turns.loop.close()
    return {
        "pipeline": summarize(timer.rows) | {"losses": losses},
        "plain": summarize(turns.rows) | {"losses": turns.loop.losses},
    }


def _on_gpu(cli: PipelineCLI) -> bool:
    return cli.trainer.accelerator.__class__.__name__ == "CUDAAccelerator"


def initial_state(cli: PipelineCLI) -> dict:
    return {k: v.detach().clone() for k, v in cli.model.state_dict().items()}


def compare(
    cfg: str,
    runs: Path,
    *overrides: str,
    steps: int = 60,
    warmup: int = 10,
    rounds: int = 2,
    interleave: bool = False,
) -> dict:
    """Pipeline and plain loop on the same config, ``rounds`` times; each side's speed is the median over its runs.

    Back to back (the default): whole runs in alternating order (AB, BA, ...), so that a machine whose speed drifts
    favours neither. ``interleave``: both sides in one process, a batch of each in turns (``run_interleaved``), so
    that the drift cancels within each pair of batches; each round's ratio is then a measurement on its own."""
    # --threads auto times the first steps at several counts and keeps the fastest: do that once, untimed, and
    # run both sides at the count it chose, so that they compare at one thread count
    probe = build(cfg, runs / "probe", *overrides, steps=30)
    probe.trainer.fit(probe.model, probe.datamodule)
    overrides = (*overrides, "--threads", str(torch.get_num_threads()))
    runs_of: dict[str, list[dict]] = {"pipeline": [], "plain": []}
    start = None
    cli = None
    for r in range(rounds):
        order = ("pipeline", "plain") if r % 2 == 0 else ("plain", "pipeline")
        built = {side: build(cfg, runs / f"{side}{r}", *overrides, steps=steps) for side in order}
        for c in built.values():
            if start is None:
                start, precision = initial_state(c), str(c.trainer.precision)
            c.model.load_state_dict(start)
        cli = built["pipeline"]
        if interleave:
            pair = run_interleaved(built["pipeline"], built["plain"], warmup, precision)
            for side in order:
                runs_of[side].append(pair[side])
            continue
        for side in order:
            c = built[side]
            if side == "pipeline":
                runs_of[side].append(run_pipeline(c, warmup))
            else:
                runs_of[side].append(run_plain(c, steps, warmup, precision))
    pipe, plain = runs_of["pipeline"][0], runs_of["plain"][0]
    n = min(len(pipe["losses"]), len(plain["losses"]))
    diff = max(
        (abs(x - y) for x, y in zip(pipe["losses"][:n], plain["losses"][:n], strict=True)), default=None
    )
    speed = {side: statistics.median(x["units_per_s"] for x in v) for side, v in runs_of.items()}
    paired = [
        a["units_per_s"] / b["units_per_s"]
        for a, b in zip(runs_of["pipeline"], runs_of["plain"], strict=True)
        if b["units_per_s"]
    ]
    # interleaved, each round's ratio is a measurement on its own: their median; back to back, the two sides'
    # medians are taken apart, since a round's two runs met different minutes of the machine
    if interleave:
        ratio = statistics.median(paired) if paired else None
    else:
        ratio = speed["pipeline"] / speed["plain"] if speed["plain"] else None
    return {
        "precision": precision,
        "threads": torch.get_num_threads(),
        "pipeline": {k: v for k, v in pipe.items() if k != "losses"} | {"units_per_s": speed["pipeline"]},
        "plain": {k: v for k, v in plain.items() if k != "losses"} | {"units_per_s": speed["plain"]},
        "runs_units_per_s": {side: [x["units_per_s"] for x in v] for side, v in runs_of.items()},
        "ratio": ratio,
        "paired_ratios": paired,
        "interleaved": interleave,
        "losses_compared": n,
        "max_loss_diff": diff,
        "cli": cli,
    }
