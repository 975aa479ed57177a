"""W&B: with no credentials a run logs offline, says so once, prints the sync command, and the run reads back."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import cli_env, run_cli, run_dir_of

DEBUG = "configs/debug/sentiment.yaml"


def read_offline_run(run_dir: Path) -> list[dict]:
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert runs, f"no offline W&B run under {run_dir}"
    wandb = Path(sys.executable).with_name("wandb")
    out = subprocess.run(
        [str(wandb), "leet", "inspect", "--json", str(runs[-1])],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_offline_run_holds_config_and_metrics(tmp_path, runs):
    env = cli_env(tmp_path)
    env.pop("WANDB_MODE")  # the default must pick offline by itself when there are no credentials
    env.pop("WANDB_API_KEY", None)
    env["HOME"] = str(tmp_path)  # no ~/.netrc
    proc = run_cli("pipeline.fit", "--config", DEBUG, "--runs_dir", str(runs), tmp_path=tmp_path, env=env)
    assert proc.stderr.count("logging offline") == 1
    assert "wandb sync " in proc.stderr
    records = read_offline_run(run_dir_of(proc))
    history = {k for r in records if r["type"] == "history" for k in r["history"]["item"]}
    for key in (
        "train/loss_step",
        "train/acc_step",
        "train/grad_norm",
        "train/pad_fraction_step",
        "train/tokens_per_s",
        "val_loss",
        "val_acc",
        "data/skipped_empty",
    ):
        assert key in history, key
    config = json.dumps([r for r in records if r["type"] == "config"])
    assert "pipeline.models.classifier.SequenceClassifier" in config


def test_csv_logger_from_the_config(tmp_path, runs):
    proc = run_cli(
        "pipeline.fit",
        "--config",
        DEBUG,
        "--runs_dir",
        str(runs),
        "--trainer.max_steps",
        "4",
        "--trainer.logger",
        "pytorch_lightning.loggers.CSVLogger",
        tmp_path=tmp_path,
    )
    run = run_dir_of(proc)
    metrics = list(run.rglob("metrics.csv"))
    assert metrics and "train/loss_step" in metrics[0].read_text().splitlines()[0]
    assert not (run / "wandb").exists()


def test_step_metrics_every_log_interval_and_epoch_means(tmp_path, runs):
    """Step values reach the logger every ``log_every_n_steps`` batches, throughput averaged over the interval; the
    epoch's padding fraction and training accuracy are logged once per epoch."""
    proc = run_cli(
        "pipeline.fit", "--config", DEBUG, "--runs_dir", str(runs), "--trainer.max_steps", "12",
        "--trainer.max_epochs", "2", "--trainer.log_every_n_steps", "3",
        "--trainer.logger", "pytorch_lightning.loggers.CSVLogger", tmp_path=tmp_path,
    )  # fmt: skip
    rows = list(csv.DictReader(next(run_dir_of(proc).rglob("metrics.csv")).open()))
    for key in (
        "train/grad_norm",
        "train/lr",
        "train/tokens_per_s",
        "train/examples_per_s",
        "train/acc_step",
    ):
        steps = [int(r["step"]) for r in rows if r.get(key)]
        assert steps and all((s + 1) % 3 == 0 for s in steps), (key, steps)
        assert all(float(r[key]) > 0 or key == "train/acc_step" for r in rows if r.get(key)), key
    epochs = [r for r in rows if r.get("train/pad_fraction_epoch")]
    assert epochs and all(0 <= float(r["train/pad_fraction_epoch"]) < 1 for r in epochs)
    assert [r for r in rows if r.get("train/acc_epoch")], "train/acc_epoch missing"


def test_no_credential_is_written_anywhere(tmp_path, runs):
    secret = "0123456789abcdef0123456789abcdef01234567"
    env = cli_env(tmp_path, WANDB_API_KEY=secret)  # mode stays offline (WANDB_MODE=offline): nothing is sent
    proc = run_cli(
        "pipeline.fit",
        "--config",
        DEBUG,
        "--runs_dir",
        str(runs),
        "--trainer.max_steps",
        "4",
        tmp_path=tmp_path,
        env=env,
    )
    run = run_dir_of(proc)
    assert secret not in proc.stdout + proc.stderr
    for path in run.rglob("*"):
        if path.is_file() and os.path.getsize(path) < 50_000_000:
            assert secret.encode() not in path.read_bytes(), path
