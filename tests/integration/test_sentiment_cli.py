"""The spine from the user's side: python -m pipeline.fit / evaluate / predict on the debug config."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from tests.conftest import ROOT, run_cli, run_dir_of

DEBUG = "configs/debug/sentiment.yaml"


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_each_cell_trains_a_few_steps_from_the_cli(cell, tmp_path, runs):
    proc = run_cli(
        "pipeline.fit",
        "--config",
        DEBUG,
        "--runs_dir",
        str(runs),
        "--trainer.max_steps",
        "8",
        "--model.init_args.network.init_args.cell",
        cell,
        tmp_path=tmp_path,
    )
    run = run_dir_of(proc)
    assert run.parent == runs / "sentiment"
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 8
    assert any(k.startswith("network.rnn.weight_hh_l0") for k in ckpt["state_dict"])
    for name in ("config.yaml", "tokenizer.model", "wandb_id"):
        assert (run / name).is_file(), name
    assert "final validation metrics" in proc.stderr


def test_evaluate_prints_json_last_and_predict_labels_lines(tmp_path, runs):
    fit = run_cli(
        "pipeline.fit",
        "--config",
        DEBUG,
        "--runs_dir",
        str(runs),
        "--trainer.max_steps",
        "12",
        tmp_path=tmp_path,
    )
    ckpt = run_dir_of(fit) / "checkpoints" / "last.ckpt"
    ev = run_cli("pipeline.evaluate", "--ckpt_path", str(ckpt), tmp_path=tmp_path)
    metrics = json.loads(ev.stdout.strip().splitlines()[-1])
    assert set(metrics) >= {"val_acc", "val_loss"} and 0.0 <= metrics["val_acc"] <= 1.0
    pred = run_cli(
        "pipeline.predict",
        "--ckpt_path",
        str(ckpt),
        tmp_path=tmp_path,
        stdin="a gorgeous , witty , seductive movie .\nthe plot is nothing but boilerplate clichés\n\n",
    )
    out = pred.stdout.strip("\n").split("\n")
    assert len(out) == 2  # one line out per line in; the final empty line gets an empty line, stripped above
    for line in out:
        label, prob = line.split("\t")
        assert label in {"0", "1"} and 0.5 <= float(prob) <= 1.0


def test_help_explains_options_and_print_config_resolves(tmp_path):
    helptext = " ".join(run_cli("pipeline.fit", "--help", tmp_path=tmp_path).stdout.split())
    assert "--ckpt_path" in helptext and "newest checkpoint of the latest run" in helptext
    model_help = run_cli(
        "pipeline.fit", "--model.help", "pipeline.tasks.sentiment.SentimentTask", tmp_path=tmp_path
    )
    assert "Clip the global gradient norm" in " ".join(model_help.stdout.split())
    printed = run_cli(
        "pipeline.fit", "--config", DEBUG, "--trainer.max_epochs", "2", "--print_config", tmp_path=tmp_path
    ).stdout
    assert (
        "max_epochs: 2" in printed and "class_path: pipeline.models.classifier.SequenceClassifier" in printed
    )


def fit_error(tmp_path, *overrides: str) -> subprocess.CompletedProcess:
    proc = run_cli(
        "pipeline.fit",
        "--config",
        DEBUG,
        "--runs_dir",
        str(tmp_path / "runs"),
        *overrides,
        tmp_path=tmp_path,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    return proc


def test_missing_data_path_is_one_sentence(tmp_path):
    proc = fit_error(tmp_path, "--data.init_args.train.path", "sst2/nope.tsv")
    assert "error: data file 'sst2/nope.tsv' not found" in proc.stderr


def test_missing_column_is_one_sentence(tmp_path):
    proc = fit_error(tmp_path, "--data.init_args.text_column", "review")
    assert (
        "error: data.text_column: 'review' is not a column of Source(sst2/dev.tsv) (its columns: sentence, label); "
        "set data.text_column to one of those." in proc.stderr
    )


def test_empty_file_is_one_sentence(tmp_path):
    proc = fit_error(tmp_path, "--data.init_args.train.path", str(ROOT / "tests/data/faults/empty.tsv"))
    assert "is empty; it has no examples to read." in proc.stderr


def test_unknown_cell_type_names_the_key_and_choices(tmp_path):
    proc = fit_error(tmp_path, "--model.init_args.network.init_args.cell", "transformer")
    assert "cell" in proc.stderr and "transformer" in proc.stderr
    assert "rnn" in proc.stderr and "lstm" in proc.stderr and "gru" in proc.stderr


def test_fp16_loss_scaling_is_refused_with_the_alternatives(tmp_path):
    # On a GPU `--trainer.precision 16-mixed` gives this plugin; Lightning maps it to bf16 on a CPU, so name it here.
    # (This also shows that trainer.plugins from the command line reach the trainer.)
    plugin = "{class_path: pytorch_lightning.plugins.precision.MixedPrecision, init_args: {precision: 16-mixed, device: cpu}}"
    proc = fit_error(tmp_path, "--trainer.plugins", plugin)
    assert "error: trainer.precision 16-mixed (fp16 with loss scaling) is not supported" in proc.stderr
    assert "bf16-mixed" in proc.stderr


def test_labels_outside_the_classes_are_counted_in_the_run_log(tmp_path, runs):
    proc = run_cli(
        "pipeline.fit",
        "--config",
        DEBUG,
        "--runs_dir",
        str(runs),
        "--trainer.max_steps",
        "2",
        "--data.init_args.train.path",
        str(ROOT / "tests/data/faults/bad_label.tsv"),
        "--data.init_args.tokenizer.model_type",
        "char",
        "--data.init_args.tokenizer.vocab_size",
        "40",
        "--data.init_args.batch_size",
        "2",
        tmp_path=tmp_path,
    )
    assert "skipped inputs" in proc.stderr and "bad_label=2" in proc.stderr
