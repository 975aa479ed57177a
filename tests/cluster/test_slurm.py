"""A real one-node SLURM cluster: 2-task CPU DDP jobs submitted through pipeline.submit, preempted, requeued, resumed.

Run with ``make test-cluster`` (root: installs Debian's slurm packages and starts the daemons, stops them by PID).
"""

from __future__ import annotations

import random
import re
import time
from pathlib import Path

import pytest
import torch
from conftest import cli_env, run_cli
from slurm_cluster import SlurmCluster
from slurm_jobs import (
    CONFIG,
    DDP,
    PREEMPT_ARGS,
    PREEMPT_STEPS,
    Uninterrupted,
    assert_same_weights,
    assert_sync_line_last,
    check_cancel_stays_cancelled,
    check_priority_preemption,
    first_step_s,
    logged_steps,
    offline_runs,
    submit,
)

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:  # also when a test (or the start itself) failed
        cluster.stop()


def test_ddp_job_completes_with_checkpoint_and_offline_wandb_run(slurm, tmp_path):
    job = submit(slurm, tmp_path, "plain", *DDP)
    assert job.run_dir.name == f"slurm-{job.id}"
    info = job.wait({"COMPLETED", "FAILED", "CANCELLED"}, timeout=600)
    assert info["JobState"] == "COMPLETED", job.text()[-5000:]
    assert info["ExitCode"] == "0:0" and info["Restarts"] == "0"
    text = job.text()
    assert "1 node(s) x 2 task(s)" in text and "Starting with 2 processes" in text  # one rank per SLURM task
    ckpt = job.run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"] == 12
    runs = offline_runs(job.run_dir)
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))
    assert runs[0].name.endswith((job.run_dir / "wandb_id").read_text().strip())
    assert logged_steps(runs[0])[-1] == 11  # rank 0 logged every step (0-based)
    assert_sync_line_last(job)


@pytest.fixture(scope="module")
def reference(slurm, tmp_path_factory):
    return Uninterrupted(slurm, tmp_path_factory.mktemp("reference"))


def test_preempted_job_requeues_and_resumes_exactly(slurm, tmp_path, reference):
    job = submit(slurm, tmp_path, "preempted", *PREEMPT_ARGS)
    reference.submit()  # queued behind: the node has 2 CPUs

    job.wait_for(lambda: 8 in job.checkpoint_steps(), "checkpoint at step 8", timeout=600)
    job.signal("USR1")  # what SLURM sends 90 s before the time limit (#SBATCH --signal=SIGUSR1@90)
    info = job.wait({"COMPLETED", "FAILED", "CANCELLED"}, timeout=900)
    text = job.text()
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", text[-5000:]

    stopped = re.findall(r"preempted at step (\d+): saved (\S+); requeued SLURM job (\d+)", text)
    assert len(stopped) == 1, text[-5000:]
    step, saved, requeued = int(stopped[0][0]), Path(stopped[0][1]), stopped[0][2]
    assert requeued == job.id and saved == job.run_dir / "checkpoints" / "last.ckpt"
    assert 8 <= step < PREEMPT_STEPS, f"SIGTERM at step {step}: the run was not stopped mid-way"
    second = text.split("restart 1 on", 1)[1]
    assert f"resuming from {saved}" in second
    assert not list(job.run_dir.rglob("hpc_ckpt_*.ckpt"))  # Lightning's own in-handler requeue stayed off
    assert not list(job.run_dir.glob("checkpoints/last-v*.ckpt"))  # last.ckpt stays the newest

    # W&B: both segments logged into the same run id; the second continues at the step after the checkpoint
    runs = offline_runs(job.run_dir)
    run_id = (job.run_dir / "wandb_id").read_text().strip()
    assert len(runs) == 2 and all(r.name.endswith(f"-{run_id}") for r in runs)
    first, then = logged_steps(runs[0]), logged_steps(runs[1])
    assert then[0] == step and then[-1] == PREEMPT_STEPS - 1 and max(first) < step
    assert_sync_line_last(job)

    expected = reference.last()
    final = torch.load(saved, map_location="cpu", weights_only=True)
    assert final["global_step"] == PREEMPT_STEPS
    assert_same_weights(saved, expected)
    name = f"step{PREEMPT_STEPS:05d}.ckpt"
    assert_same_weights(job.run_dir / "checkpoints" / name, expected.parent / name)


def test_priority_preemption_requeues_and_resumes_from_the_sigterm_save(slurm, tmp_path, reference):
    job = check_priority_preemption(slurm, tmp_path, reference)
    print(f"1 node x 2 tasks: submit -> first training step {first_step_s(job):.0f} s")


def test_cancelled_job_stays_cancelled_with_its_final_checkpoint(slurm, tmp_path):
    check_cancel_stays_cancelled(slurm, tmp_path)


def test_sweep_runs_one_array_task_per_line(slurm, tmp_path):
    sweep = tmp_path / "sweep.txt"
    sweep.write_text(
        "--model.init_args.network.init_args.cell gru\n--model.init_args.network.init_args.cell rnn\n"
    )
    proc = run_cli(
        "pipeline.submit", "--config", CONFIG, "--runs_dir", str(tmp_path / "runs"), "--experiment", "sweep",
        "--sweep", str(sweep), "--trainer.max_steps", "4", "--trainer.enable_progress_bar", "false",
        tmp_path=tmp_path, env=cli_env(tmp_path, **slurm.env),
    )  # fmt: skip
    array = proc.stdout.split("job: ", 1)[1].split()[0]
    for task, cell in enumerate(("gru", "rnn")):
        info = slurm.wait_state(f"{array}_{task}", {"COMPLETED", "FAILED", "CANCELLED"}, timeout=600)
        run_dir = tmp_path / "runs" / "sweep" / f"slurm-{array}_{task}"
        log = tmp_path / "runs" / "sweep" / f"slurm-{array}_{task}.log"
        assert info["JobState"] == "COMPLETED", log.read_text()[-4000:]
        assert f"cell: {cell}" in (run_dir / "config.yaml").read_text()
        assert (run_dir / "checkpoints" / "last.ckpt").exists()


@pytest.mark.slow
def test_repeated_preemption_at_random_moments_never_hangs(slurm, tmp_path):
    """Ten SIGUSR1s at random moments: during start-up (DDP setup, sanity check, restore) or between steps."""
    rng = random.Random()
    args = (*DDP, "--trainer.max_steps", "300", "--checkpoint.every_n_train_steps", "2")
    job = submit(slurm, tmp_path, "preempted", *args)
    moments = []
    for restart in range(10):

        def segment(restart=restart) -> str:
            parts = re.split(r"^\[job\] .* restart (\d+) on ", job.text(), flags=re.M)
            return parts[-1] if len(parts) > 1 and int(parts[-2]) == restart else ""

        started = lambda: all(f"GLOBAL_RANK: {r}," in segment() for r in (0, 1))  # noqa: E731  (handlers set)
        job.wait_for(started, f"ranks started after restart {restart}", timeout=300)
        if rng.random() < 0.5:
            delay = rng.uniform(0, 0.5)
            moments.append(f"start-up + {delay:.1f} s")
        else:
            last = max(job.checkpoint_steps(), default=0)
            target = last + 2 * rng.randint(1, 3)
            reached = lambda target=target: max(job.checkpoint_steps(), default=0) >= target  # noqa: E731
            job.wait_for(reached, f"step {target}", timeout=300)
            delay = rng.uniform(0, 0.2)
            moments.append(f"step {target} + {delay:.1f} s")
        time.sleep(delay)
        job.signal("USR1")
        deadline = time.monotonic() + 240  # a hang shows here: no requeue, the job stays RUNNING
        while int(job.info().get("Restarts", 0)) < restart + 1:
            if time.monotonic() > deadline:
                pytest.fail(f"preemption {restart + 1} ({moments[-1]}) did not requeue\n{job.text()[-6000:]}")
            time.sleep(1)
    info = job.wait({"COMPLETED", "FAILED", "CANCELLED"}, timeout=900)
    text = job.text()
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "10", f"{moments}\n{text[-5000:]}"
    steps = [int(s) for s in re.findall(r"preempted at step (\d+): saved", text)]
    assert len(steps) == 10 and steps == sorted(steps), (steps, moments)
    run_id = (job.run_dir / "wandb_id").read_text().strip()
    assert len(offline_runs(job.run_dir)) == 11
    # a preemption before ModelCheckpoint's first save must not leave last.ckpt behind a last-v1.ckpt
    assert not list(job.run_dir.glob("checkpoints/last-v*.ckpt"))
    last = job.run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 300
    assert all(r.name.endswith(f"-{run_id}") for r in offline_runs(job.run_dir))

    reference = submit(slurm, tmp_path, "uninterrupted", *args)
    info = reference.wait({"COMPLETED", "FAILED", "CANCELLED"}, timeout=900)
    assert info["JobState"] == "COMPLETED", reference.text()[-5000:]
    for step in steps:  # where a preemption saved at an even step, ModelCheckpoint saved that step too
        if step % 2 == 0:
            name = f"checkpoints/step{step:05d}.ckpt"
            assert_same_weights(job.run_dir / name, reference.run_dir / name, (steps, moments))
    assert_same_weights(last, reference.run_dir / "checkpoints" / "last.ckpt", (steps, moments))
