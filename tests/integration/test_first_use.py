"""What a new user sees from the real CLI when trying the pipeline on new data (issue 15): a wrong column is one
sentence before any batch is read, a validation interval that is never reached is said at start, empty predict
lines stay empty lines, and no Lightning advert or "Total Flops: 0" clutters the output."""

from __future__ import annotations

import json
import os
import re

import pytest
import torch

from pipeline.data import moving_digits as md
from tests.conftest import cli_env, run_cli, run_dir_of

SENTIMENT = "configs/debug/sentiment.yaml"


@pytest.fixture(scope="module")
def class_folders(tmp_path_factory):
    """Moving-digits clips laid out as ``<split>/<direction>/<clip>.mp4``: a class-folder corpus, no metadata."""
    out = tmp_path_factory.mktemp("class_folders")
    made = out / "made"
    md.main(["--out", str(made), "--clips", "8", "--val_clips", "4", "--test_clips", "1", "--frames", "4",
             "--size", "36"])  # fmt: skip
    for split in ("train", "val"):
        for line in (made / split / "metadata.jsonl").read_text().splitlines():
            row = json.loads(line)
            folder = out / split / row["class"].split("-", 1)[1]  # e.g. "left-up"
            folder.mkdir(parents=True, exist_ok=True)
            os.symlink(made / split / row["file"], folder / os.path.basename(row["file"]))
    return out


def test_wrong_label_column_on_class_folders_is_one_sentence_before_any_clip(class_folders, tmp_path):
    # the moving-digits config reads labels from a metadata column 'class'; class folders only have file, label
    proc = run_cli(
        "pipeline.fit", "--config", "configs/debug/video.yaml", "--runs_dir", str(tmp_path / "runs"),
        f"--data.init_args.train.path={class_folders}/train", f"--data.init_args.val.path={class_folders}/val",
        "--data.init_args.labels=null", "--data.init_args.frame_label_column=null", "--trainer.logger=false",
        tmp_path=tmp_path, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [
        f"error: data.label_column: 'class' is not a column of Source({class_folders}/train) (its columns: file, "
        f"label); set data.label_column to one of those."
    ]
    assert "bad_label" not in proc.stderr  # no clip was read (and skipped) before the error
    assert "Traceback" not in proc.stderr


def test_validation_interval_longer_than_an_epoch_is_said_at_start(tmp_path):
    # 872 sentences in batches of 32: 28 batches per epoch, so batch 50 of an epoch never comes; at start the check
    # bounds it by 28 full batches + one partial batch per 256-sentence bucketing buffer (4) = 32
    proc = run_cli(
        "pipeline.fit", "--config", SENTIMENT, "--runs_dir", str(tmp_path / "runs"), "--trainer.logger=false",
        "--trainer.val_check_interval", "50", "--trainer.check_val_every_n_epoch", "1", "--trainer.max_steps", "60",
        tmp_path=tmp_path,
    )  # fmt: skip
    said = [ln for ln in proc.stderr.splitlines() if "val_check_interval 50 is never reached" in ln]
    assert said == [
        "[pipeline] trainer.val_check_interval 50 is never reached: it counts batches within an epoch and an epoch "
        "has at most 32 batches, so no validation will run and no best checkpoint will be kept; set a smaller "
        "--trainer.val_check_interval, or --trainer.check_val_every_n_epoch null to count batches across epochs."
    ]
    # what the line warns of: validation indeed never ran
    assert "final validation metrics" not in proc.stderr
    # counting across epochs, the same interval is reached: no warning, and validation runs
    proc = run_cli(
        "pipeline.fit", "--config", SENTIMENT, "--runs_dir", str(tmp_path / "runs"), "--trainer.logger=false",
        "--trainer.val_check_interval", "50", "--trainer.max_steps", "60", tmp_path=tmp_path,
    )  # fmt: skip
    assert "never reached" not in proc.stderr and "final validation metrics" in proc.stderr
    # token-budget batches: too many records to bound the epoch at start, so it is said when the first epoch ends
    proc = run_cli(
        "pipeline.fit", "--config", SENTIMENT, "--runs_dir", str(tmp_path / "runs"), "--trainer.logger=false",
        "--data.init_args.batch_size", "null", "--data.init_args.max_tokens", "2000",
        "--trainer.val_check_interval", "500", "--trainer.check_val_every_n_epoch", "1",
        "--trainer.max_steps", "-1", "--trainer.max_epochs", "1", tmp_path=tmp_path,
    )  # fmt: skip
    steps = torch.load(run_dir_of(proc) / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    said = [ln for ln in proc.stderr.splitlines() if "val_check_interval 500 is never reached" in ln]
    assert len(said) == 1 and f"an epoch has {steps} batches, so no validation will run" in said[0]


def user_env(tmp_path) -> dict[str, str]:
    """The test environment with Python warnings on, as a user has them (``cli_env`` turns them off)."""
    env = cli_env(tmp_path)
    env.pop("PYTHONWARNINGS")
    return env


def test_validation_interval_longer_than_a_known_epoch_is_one_sentence(tmp_path):
    # the LM's windows have a known count, so Lightning refuses the interval itself: one sentence, no traceback
    proc = run_cli(
        "pipeline.fit", "--config", "configs/debug/lm.yaml", "--runs_dir", str(tmp_path / "runs"),
        "--trainer.logger=false", "--trainer.val_check_interval", "5000", "--trainer.check_val_every_n_epoch", "1",
        tmp_path=tmp_path, check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    windows = re.search(r"train: [\d,]+ tokens as (\d+) windows", proc.stderr)[1]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: trainer.val_check_interval 5000 is never reached: it counts batches within an epoch and an epoch "
        f"has {windows} batches; set a smaller --trainer.val_check_interval, or --trainer.check_val_every_n_epoch "
        f"null to count batches across epochs."
    )


@pytest.fixture(scope="module")
def sentiment_run(tmp_path_factory):
    """A short sentiment fit with the model summary on (as the full configs have it), Python warnings on."""
    tmp = tmp_path_factory.mktemp("sentiment")
    proc = run_cli(
        "pipeline.fit", "--config", SENTIMENT, "--runs_dir", str(tmp / "runs"), "--trainer.logger=false",
        "--trainer.max_steps", "6", "--trainer.enable_model_summary", "true", tmp_path=tmp, env=user_env(tmp),
    )  # fmt: skip
    return proc, run_dir_of(proc) / "checkpoints" / "last.ckpt"


def test_predict_keeps_empty_lines_empty_and_counts_them(sentiment_run, tmp_path):
    _, ckpt = sentiment_run
    lines = [
        "a gorgeous , witty , seductive movie .",
        "",
        "the plot is nothing but boilerplate clichés",
        "   ",
    ]
    proc = run_cli(
        "pipeline.predict", "--ckpt_path", str(ckpt), tmp_path=tmp_path, stdin="\n".join(lines) + "\n"
    )
    out = proc.stdout.split("\n")
    assert out[-1] == "" and len(out) - 1 == len(lines)  # one line out per line in
    assert out[1] == "" and out[3] == ""  # blank in, blank out
    for line in (out[0], out[2]):
        label, prob = line.split("\t")
        assert label in {"0", "1"} and 0.5 <= float(prob) <= 1.0
    assert "[pipeline] 2 empty input lines: written as empty output lines" in proc.stderr


def test_no_lightning_advert_and_no_zero_flops_on_any_command(sentiment_run, tmp_path):
    fit, ckpt = sentiment_run
    env = user_env(tmp_path)
    evaluate = run_cli("pipeline.evaluate", "--ckpt_path", str(ckpt), tmp_path=tmp_path, env=env)
    predict = run_cli(
        "pipeline.predict", "--ckpt_path", str(ckpt), tmp_path=tmp_path, stdin="fine .\n", env=env
    )
    assert "Total params" in fit.stdout + fit.stderr  # the model summary is still there
    for proc in (fit, evaluate, predict):
        seen = proc.stdout + proc.stderr
        assert "litlogger" not in seen and "Tip:" not in seen
        assert "Total Flops" not in seen and "FLOPs" not in seen
        # Lightning's warnings about what the pipeline does on purpose (startup_checks.BY_DESIGN)
        assert (
            "LightningCLI's args parameter" not in seen
            and "overridden `transfer_batch_to_device`" not in seen
        )
    assert "never reached" not in fit.stderr  # the debug config validates across epochs: nothing to warn of
