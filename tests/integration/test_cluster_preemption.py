"""SIGUSR1 without SLURM: the run saves an exact-resume checkpoint at the next step and stops; --ckpt_path last
continues it to the same final weights as an uninterrupted run."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, cli_env, run_cli, run_dir_of

ARGS = (
    "--config", "configs/debug/sentiment.yaml", "--trainer.max_steps", "40", "--checkpoint.every_n_train_steps", "4",
    "--trainer.enable_progress_bar", "false",
)  # fmt: skip


def start(tmp_path: Path, runs: Path, experiment: str, log=subprocess.PIPE) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pipeline.fit", *ARGS, "--runs_dir", str(runs), "--experiment", experiment]
    return subprocess.Popen(cmd, cwd=ROOT, env=cli_env(tmp_path), stdout=log, stderr=log, text=True)


@pytest.mark.slow  # three short trainings: about a minute on a quiet 2-core machine
def test_sigusr1_saves_stops_and_resumes_to_the_uninterrupted_weights(tmp_path, runs):
    """The signal comes during start-up, before ModelCheckpoint's first save: the hardest place for last.ckpt."""
    reference_log = tmp_path / "uninterrupted.log"
    with open(reference_log, "w") as log:  # a file, not a pipe that nobody reads while we wait
        reference = start(tmp_path, runs, "uninterrupted", log)
    run = start(tmp_path, runs, "preempted")
    head = []
    for line in run.stderr:  # the trainer (and so the handler) exists once the run directory is announced
        head.append(line)
        if "run directory:" in line:
            break
    assert run.poll() is None, "".join(head)[-4000:]
    run.send_signal(signal.SIGUSR1)
    _, err = run.communicate(timeout=600)
    err = "".join(head) + err
    assert run.returncode == 3, err[-4000:]  # saved and stopped, not requeued (no SLURM here)
    found = re.findall(r"preempted at step (\d+): saved (\S+); resume with --ckpt_path last", err)
    assert len(found) == 1, err[-4000:]
    step, saved = int(found[0][0]), Path(found[0][1])
    assert 1 <= step < 4
    assert torch.load(saved, map_location="cpu", weights_only=True)["global_step"] == step
    assert "Traceback" not in err

    resumed = run_cli("pipeline.fit", *ARGS, "--runs_dir", str(runs), "--experiment", "preempted",
                      "--ckpt_path", "last", tmp_path=tmp_path)  # fmt: skip
    assert f"resuming from {saved}" in resumed.stderr
    assert run_dir_of(resumed) == saved.parent.parent  # the same run directory, the same W&B run id
    offline = sorted((saved.parent.parent / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and offline[0].name.split("-")[-1] == offline[1].name.split("-")[-1]
    assert not list(saved.parent.glob("last-v*.ckpt"))  # the resumed run kept writing last.ckpt

    assert reference.wait(timeout=600) == 0, reference_log.read_text()[-4000:]
    final = torch.load(saved, map_location="cpu", weights_only=True)
    expected = torch.load(
        next((runs / "uninterrupted").glob("*/checkpoints/last.ckpt")), map_location="cpu", weights_only=True
    )
    assert final["global_step"] == expected["global_step"] == 40
    for name, tensor in expected["state_dict"].items():
        assert torch.equal(final["state_dict"][name], tensor), name
