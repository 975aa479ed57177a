"""The language model from the real CLI: every cell trains, metrics in bits per character, sampling from a
checkpoint, the W&B sample table, configs that build."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, cli_env, run_cli, run_dir_of

FAST = ["--trainer.max_steps", "4", "--trainer.val_check_interval", "4", "--trainer.limit_val_batches", "2"]


def final_metrics(proc) -> dict:
    line = [ln for ln in proc.stderr.splitlines() if "final validation metrics:" in ln][-1]
    return json.loads(line.split("final validation metrics:", 1)[1])


@pytest.mark.parametrize("cell,tokens", [("rnn", "subwords"), ("gru", "chars")])
def test_each_cell_trains_from_the_cli(cell, tokens, tmp_path, runs, monkeypatch):
    subwords = ["--data.init_args.tokenizer", "{model_type: bpe, vocab_size: 300, sample_size: 5000}"]
    proc = run_cli(
        "pipeline.fit", "--config", "configs/debug/lm.yaml", "--runs_dir", str(runs), *FAST,
        "--trainer.logger", "false", "--model.init_args.network.init_args.cell", cell,
        *(subwords if tokens == "subwords" else []),
        tmp_path=tmp_path,
    )  # fmt: skip
    run = run_dir_of(proc)
    artifact = {"chars": "vocab.json", "subwords": "tokenizer.model"}[tokens]
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / artifact).is_file()
    metrics = final_metrics(proc)
    vocab = {"chars": 66, "subwords": 300}[tokens]
    assert metrics["val_loss"] < math.log(vocab)  # better than uniform after 4 steps
    weights = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert weights["network.decoder.weight"].size(0) == vocab
    assert weights["network.layers.0.weight_hh_l0"].size(0) == {"rnn": 1, "gru": 3}[cell] * 32
    if tokens == "subwords":  # bits per character divide by the characters, not by the (fewer) pieces
        assert metrics["val_bpc"] < metrics["val_loss"] / math.log(2)
        from pipeline.sample import run as sample

        monkeypatch.setenv("PIPELINE_DATA", str(tmp_path / "nowhere"))  # the run's tokenizer.model suffices
        text = sample(["--ckpt_path", str(run / "checkpoints" / "last.ckpt"), "--prime", "ROMEO:\nO", "--length",
                       "20", "--seed", "0"])  # fmt: skip
        assert isinstance(text, str) and text


def test_lstm_run_samples_and_scores_in_bits_per_character(tmp_path, runs, monkeypatch):
    """lstm (the debug config's cell), W&B offline: the sample table, bits/char, then pipeline.sample."""
    proc = run_cli(
        "pipeline.fit", "--config", "configs/debug/lm.yaml", "--runs_dir", str(runs), *FAST, tmp_path=tmp_path
    )
    run = run_dir_of(proc)
    metrics = final_metrics(proc)
    assert metrics["val_bpc"] == pytest.approx(metrics["val_loss"] / math.log(2), rel=1e-3)
    assert metrics["val_nats_per_char"] == pytest.approx(metrics["val_loss"], rel=1e-4)
    tables = list((run / "wandb").glob("offline-run-*/files/media/table/val/samples_*.table.json"))
    assert tables, "the validation sample was not logged as a W&B table"
    rows = json.loads(tables[-1].read_text())["data"]
    assert rows[-1][0] == 0 and rows[-1][1] == 4 and rows[-1][2].startswith("ROMEO:")

    # sampling needs only the run directory: point the data root elsewhere
    ckpt = run / "checkpoints" / "last.ckpt"
    args = [
        "--ckpt_path",
        str(ckpt),
        "--prime",
        "ROMEO:",
        "--length",
        "60",
        "--temperature",
        "0.8",
        "--seed",
        "3",
    ]
    env = cli_env(tmp_path, PIPELINE_DATA=str(tmp_path / "nowhere"))
    out = run_cli("pipeline.sample", *args, tmp_path=tmp_path, env=env).stdout
    assert out.startswith("ROMEO:") and len(out.rstrip("\n")) == len("ROMEO:") + 60

    # the same code in this process (faster than more subprocesses): what pipeline.evaluate does (validate the
    # checkpoint: bits per character), then seeds, greedy, a bad prime
    from pipeline.data.faults import DataError
    from pipeline.sample import load
    from pipeline.sample import run as sample

    cli = load(str(ckpt))
    scores = cli.trainer.validate(cli.model, cli.datamodule, verbose=False)[0]
    assert scores["val_bpc"] == pytest.approx(scores["val_loss"] / math.log(2), rel=1e-4)
    assert scores["val_loss"] == pytest.approx(metrics["val_loss"], rel=1e-4)  # the run's last validation

    monkeypatch.setenv("PIPELINE_DATA", str(tmp_path / "nowhere"))
    assert "ROMEO:" + sample(args) + "\n" == out  # the same seed gives the same text
    assert sample(args[:8] + ["--seed", "4"]) != out[6:-1]
    assert sample(args[:6] + ["--greedy"]) == sample(args[:6] + ["--temperature", "0"])
    with pytest.raises(DataError, match="never saw in training"):
        sample(args[:2] + ["--prime", "\u03a9"])


def test_every_lm_config_builds(tmp_path):
    from pipeline.cli import PipelineCLI

    for config in ["configs/debug/lm.yaml", "configs/lm/shakespeare_char_lstm.yaml"]:
        cli = PipelineCLI(args=["--config", str(ROOT / config)], mode="evaluate")
        net = cli.model.network
        assert net.vocab_size == cli.datamodule.vocab_size == 66
        assert cli.datamodule.bptt > 0 and re.match(r"(rnn|lstm|gru)$", net.cell)
        assert isinstance(cli.trainer.max_steps, int)
    assert Path(ROOT / "configs/lm/shakespeare_char_lstm.yaml").is_file()
