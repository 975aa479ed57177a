"""An EMA of the weights (``model.init_args.ema_decay``) from the real CLI: what validation scores, what the
checkpoint holds and what evaluate scores is the average, not the live weights; a resumed fit carries it on."""

from __future__ import annotations

import json

import torch

from tests.conftest import run_cli, run_dir_of

DEBUG = "configs/debug/sentiment.yaml"


def final_val_loss(proc) -> float:
    line = [ln for ln in proc.stderr.splitlines() if "final validation metrics:" in ln][-1]
    return json.loads(line.split("final validation metrics:", 1)[1])["val_loss"]


def evaluate(ckpt, tmp_path) -> float:
    proc = run_cli("pipeline.evaluate", "--ckpt_path", str(ckpt), tmp_path=tmp_path)
    return json.loads(proc.stdout.strip().splitlines()[-1])["val_loss"]


def test_ema_weights_are_validated_saved_and_evaluated(tmp_path):
    runs = str(tmp_path / "runs")
    common = ["--config", DEBUG, "--runs_dir", runs, "--trainer.logger=false"]
    fit = run_cli("pipeline.fit", *common, "--model.init_args.ema_decay", "0.9", tmp_path=tmp_path)
    run = run_dir_of(fit)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 12 and ckpt["ema"]["updates"] == 12  # one update per optimizer step
    live = ckpt["ema"]["live"]
    key = "network.head.weight"
    assert (ckpt["state_dict"][key] - live[key]).abs().max() > 1e-3  # the saved weights are not the live ones
    # the validation during fit (step 12) scored the same weights that evaluate scores from the checkpoint ...
    ema_loss = evaluate(run / "checkpoints" / "last.ckpt", tmp_path)
    assert abs(ema_loss - final_val_loss(fit)) < 1e-4
    # ... and those are not the live weights, which score differently
    as_live = dict(ckpt, state_dict={**ckpt["state_dict"], **live})
    (run / "live").mkdir()
    torch.save(as_live, run / "live" / "live.ckpt")
    assert abs(evaluate(run / "live" / "live.ckpt", tmp_path) - ema_loss) > 1e-4

    # a resumed fit trains on from the live weights and carries the average on
    more = run_cli("pipeline.fit", *common, "--model.init_args.ema_decay", "0.9", "--ckpt_path", "last",
                   "--trainer.max_steps", "16", tmp_path=tmp_path)  # fmt: skip
    assert run_dir_of(more) == run
    resumed = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == 16 and resumed["ema"]["updates"] == 16

    # off by default: the checkpoint holds the live weights and no EMA
    plain = run_cli(
        "pipeline.fit", *common, "--experiment", "plain", "--trainer.max_steps", "4", tmp_path=tmp_path
    )
    assert "ema" not in torch.load(run_dir_of(plain) / "checkpoints" / "last.ckpt", weights_only=True)
