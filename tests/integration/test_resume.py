"""Exact resume: a run SIGKILLed mid-epoch and resumed with --ckpt_path last ends bit-identical to an uninterrupted
run of the same config and seed, having trained on exactly the same multiset of examples."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from tests.conftest import cli_env, run_cli

DEBUG = "configs/debug/sentiment.yaml"
STEPS = 40  # the debug data has ~28 batches per epoch: the runs cross an epoch boundary


def fit(
    tmp_path: Path,
    runs: Path,
    trace: Path,
    *extra: str,
    kill_at: str | None = None,
    resume: bool = False,
    steps: int = STEPS,
):
    env = cli_env(tmp_path, PIPELINE_TRACE=str(trace))
    if kill_at:
        env["PIPELINE_KILL_AT"] = kill_at
    args = ["--config", DEBUG, "--runs_dir", str(runs), "--trainer.max_steps", str(steps), *extra]
    if resume:
        args += ["--ckpt_path", "last"]
    proc = run_cli("pipeline.fit", *args, tmp_path=tmp_path, env=env, check=not kill_at)
    if kill_at:
        assert proc.returncode == -9, f"expected a SIGKILL, got {proc.returncode}\n{proc.stderr[-3000:]}"
    return proc


def consumed(trace: Path, rank: int, upto: int | None = None, after: int | None = None) -> Counter:
    """Example ids trained on by ``rank``, optionally only those of steps in (after, upto]."""
    path = trace / f"ids-rank{rank}.tsv"
    out = Counter()
    for line in path.read_text().splitlines() if path.exists() else []:
        step, ex = line.split("\t")
        if (upto is None or int(step) <= upto) and (after is None or int(step) > after):
            out[ex] += 1
    return out


def last_step(runs: Path) -> int:
    ckpt = next(runs.glob("sentiment/*/checkpoints/last.ckpt"))
    return torch.load(ckpt, weights_only=True)["global_step"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"tensors differ after resume: {different}"


def check_resume(
    tmp_path: Path, kills: list[str], ranks: int = 1, extra: tuple[str, ...] = (), steps: int = STEPS
) -> None:
    full = tmp_path / "full"
    fit(tmp_path, tmp_path / "runs-full", full, *extra, steps=steps)
    runs = tmp_path / "runs-killed"
    traces, resumed_from = [], []
    for i, kill in enumerate(kills):
        trace = tmp_path / f"part{i}"
        fit(tmp_path, runs, trace, *extra, kill_at=kill, resume=i > 0, steps=steps)
        traces.append(trace)
        resumed_from.append(last_step(runs))  # what the next run restarts from
    final = tmp_path / "final"
    proc = fit(tmp_path, runs, final, *extra, resume=True, steps=steps)
    assert "resuming from" in proc.stderr
    for rank in range(ranks):
        effective = Counter()
        start = 0
        for trace, upto in zip(traces, resumed_from, strict=True):
            effective += consumed(trace, rank, upto=upto, after=start)
            start = upto
        effective += consumed(final, rank, after=start)
        assert effective == consumed(full, rank), f"rank {rank}: the examples trained on differ"
        assert_same_weights(full / f"weights-rank{rank}.pt", final / f"weights-rank{rank}.pt")


def test_kill_mid_epoch_and_resume_single_process(tmp_path):
    check_resume(tmp_path, kills=["14"])


def test_kill_mid_epoch_and_resume_with_two_workers(tmp_path):
    check_resume(tmp_path, kills=["14"], extra=("--data.init_args.num_workers", "2"))


def test_kill_and_resume_with_subword_sampling_in_workers(tmp_path):
    # the sampled segmentations are drawn again from the same seeds: the resumed run ends bit-identical too
    sampling = ("--data.init_args.tokenizer.sample_alpha", "0.1", "--data.init_args.num_workers", "2")
    check_resume(tmp_path, kills=["14"], extra=sampling)


def test_two_consecutive_kill_and_resume_cycles(tmp_path):
    check_resume(tmp_path, kills=["10", "23"])


def test_kill_at_an_epoch_boundary(tmp_path):
    check_resume(
        tmp_path,
        kills=["epoch:1"],
        extra=(
            "--checkpoint.every_n_train_steps",
            "0",
            "--checkpoint.every_n_epochs",
            "1",
            "--checkpoint.save_on_train_epoch_end",
            "true",
        ),
    )


def test_kill_after_a_checkpoint_on_an_epochs_last_batch(tmp_path, monkeypatch):
    from pipeline.cli import PipelineCLI

    monkeypatch.setenv("PIPELINE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIPELINE_RUN_DIR", "")
    dm = PipelineCLI(args=["--config", DEBUG, "--trainer.logger", "false"], mode="evaluate").datamodule
    batches = sum(1 for _ in dm.train_dataloader())  # epoch 0's batch count: its last batch is step `batches`
    check_resume(tmp_path, kills=[str(batches + 2)], extra=("--checkpoint.every_n_train_steps", str(batches)))


@pytest.mark.parametrize(("ranks", "steps"), [(2, STEPS), (4, 16)])
def test_kill_mid_epoch_and_resume_multi_process_ddp(tmp_path, ranks, steps):
    # 4 ranks: a gloo sum of 4 gradients depends on each element's offset in its DDP bucket (with 2 it cannot: a+b is
    # b+a). Before the bucket order was fixed (resume.fix_bucket_order), the resumed run's first step (12) summed in
    # another order: its gradients were 1 ulp apart and the weights differed at steps 15 to 19, and by chance
    # agreed again from step 20 on, so with 4 ranks the runs end at step 16 (7 batches per rank and epoch: epoch 2)
    check_resume(
        tmp_path,
        kills=["14"],
        ranks=ranks,
        extra=("--trainer.accelerator", "cpu", "--trainer.devices", str(ranks), "--trainer.strategy", "ddp"),
        steps=steps,
    )


@pytest.mark.parametrize("when", ["before", "during"])
def test_a_kill_while_writing_a_checkpoint_leaves_the_previous_one_loadable(tmp_path, when):
    import subprocess
    import sys
    import time

    target = tmp_path / "last.ckpt"
    from pipeline.training.checkpoint_io import AtomicCheckpointIO

    AtomicCheckpointIO().save_checkpoint({"step": 1, "w": torch.ones(3)}, target)
    script = (
        "import torch, sys\n"
        "from pipeline.training.checkpoint_io import AtomicCheckpointIO\n"
        "big = {'step': 2, 'w': torch.randn(64_000_000)}\n"  # ~256 MB: long enough to be killed mid-write
        "print('writing', flush=True)\n"
        f"AtomicCheckpointIO().save_checkpoint(big, {str(target)!r})\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.stdout.readline().strip() == "writing"
    tmp = target.with_name("last.ckpt.tmp")
    if when == "during":
        deadline = time.time() + 60
        while not tmp.exists() and time.time() < deadline:
            time.sleep(0.001)
        assert tmp.exists()
    proc.kill()
    proc.wait()
    loaded = AtomicCheckpointIO().load_checkpoint(target)
    assert loaded["step"] == 1 and torch.equal(loaded["w"], torch.ones(3))
