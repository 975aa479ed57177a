"""SIGUSR1 without SLURM: the run saves an exact-resume checkpoint at the next step boundary and stops (exit 3);
``--ckpt_path last`` continues it to the same final weights as an uninterrupted run."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, cli_env

ARGS = (
    "--config", "configs/debug/sentiment.yaml", "--trainer.max_steps", "40", "--checkpoint.every_n_train_steps", "4",
    "--trainer.enable_progress_bar", "false",
)  # fmt: skip
EPOCH_END = (
    28  # 872 sentences in batches of 32: the last batch of epoch 0 (checked against the reference below)
)


def start(tmp_path: Path, runs: Path, experiment: str, *extra: str, log=subprocess.PIPE) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "pipeline.fit",
        *ARGS,
        "--runs_dir",
        str(runs),
        "--experiment",
        experiment,
        *extra,
    ]
    env = cli_env(tmp_path, PYTHONPATH=f"{ROOT}:{Path(__file__).parent}")  # signal_at.py beside this file
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=log, text=True)


def finished(proc: subprocess.Popen, log: Path, status: int) -> str:
    assert proc.wait(timeout=900) == status, log.read_text()[-4000:]
    return log.read_text()


def preempted_at(err: str) -> tuple[int, Path]:
    found = re.findall(r"preempted at step (\d+): saved (\S+); resume with --ckpt_path last", err)
    assert len(found) == 1, err[-4000:]
    assert "Traceback" not in err
    return int(found[0][0]), Path(found[0][1])


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.slow  # five short trainings: a minute or two on a quiet 2-core machine
def test_sigusr1_saves_stops_and_resumes_to_the_uninterrupted_weights(tmp_path, runs):
    logs = {
        name: tmp_path / f"{name}.log"
        for name in ("reference", "epoch_end", "resume_startup", "resume_epoch")
    }
    with (
        open(logs["reference"], "w") as ref_log,
        open(logs["epoch_end"], "w") as end_log,
    ):  # files: nobody waits
        reference = start(tmp_path, runs, "uninterrupted", log=ref_log)
        # the signal arrives during the last batch of an epoch: the save waits for the next step
        callback = json.dumps([{"class_path": "signal_at.SignalAt", "init_args": {"step": EPOCH_END}}])
        epoch_end = start(tmp_path, runs, "epoch_end", "--trainer.callbacks", callback, log=end_log)
        # the signal arrives during start-up, before ModelCheckpoint's first save
        startup = start(tmp_path, runs, "startup")
        head = []
        for (
            line
        ) in startup.stderr:  # the trainer (and so the handler) exists once the run directory is announced
            head.append(line)
            if "run directory:" in line:
                break
        assert startup.poll() is None, "".join(head)[-4000:]
        startup.send_signal(signal.SIGUSR1)
        _, err = startup.communicate(timeout=900)
        assert startup.returncode == 3, err[-4000:]  # saved and stopped, not requeued (no SLURM here)
        step_startup, saved_startup = preempted_at("".join(head) + err)
        step_epoch, saved_epoch = preempted_at(finished(epoch_end, logs["epoch_end"], 3))
    assert 1 <= step_startup < 4
    assert step_epoch == EPOCH_END + 1
    assert (
        load(saved_startup)["global_step"] == step_startup and load(saved_epoch)["global_step"] == step_epoch
    )

    with open(logs["resume_startup"], "w") as log_a, open(logs["resume_epoch"], "w") as log_b:
        resumed = [
            start(tmp_path, runs, experiment, "--ckpt_path", "last", log=log)
            for experiment, log in (("startup", log_a), ("epoch_end", log_b))
        ]
        texts = [
            finished(p, logs[n], 0) for p, n in zip(resumed, ("resume_startup", "resume_epoch"), strict=True)
        ]
    finished(reference, logs["reference"], 0)

    ref_dir = next((runs / "uninterrupted").glob("*/checkpoints"))
    assert load(ref_dir / f"step{EPOCH_END:05d}.ckpt")["loops"]["fit_loop"]["epoch_loop.batch_progress"][
        "is_last_batch"
    ]
    expected = load(ref_dir / "last.ckpt")
    for saved, text in zip((saved_startup, saved_epoch), texts, strict=True):
        assert f"resuming from {saved}" in text
        run_dir = saved.parent.parent  # the same run directory, so the same W&B run id
        offline = sorted((run_dir / "wandb").glob("offline-run-*"))
        run_id = (run_dir / "wandb_id").read_text().strip()
        assert len(offline) == 2 and all(r.name.endswith(f"-{run_id}") for r in offline)
        assert not list(saved.parent.glob("last-v*.ckpt"))  # the resumed run kept writing last.ckpt
        final = load(saved)
        assert final["global_step"] == expected["global_step"] == 40
        for name, tensor in expected["state_dict"].items():
            assert torch.equal(final["state_dict"][name], tensor), f"{saved}: {name}"


def test_sigterm_saves_at_the_next_step_and_stops(tmp_path, runs):
    """SIGTERM (what a cluster sends first when it preempts or cancels) is no longer a stop without a save."""
    log = tmp_path / "term.log"
    with open(log, "w") as fh:
        proc = start(tmp_path, runs, "term", log=fh)
        deadline = time.monotonic() + 600
        while not list(runs.glob("term/*/checkpoints/step00004.ckpt")):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-4000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        err = finished(proc, log, 3)  # saved and stopped
    found = re.findall(r"stopped by SIGTERM at step (\d+): saved (\S+); resume with --ckpt_path last", err)
    assert len(found) == 1 and "Traceback" not in err, err[-4000:]
    step, saved = int(found[0][0]), Path(found[0][1])
    assert 4 <= step < 40 and load(saved)["global_step"] == step
