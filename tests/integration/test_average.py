"""``python -m pipeline.average`` from the real CLI: the mean of copies is the copy; an averaged checkpoint of a run
is accepted by evaluate, translate and predict."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from tests.conftest import run_cli, run_dir_of


def test_average_of_copies_of_one_checkpoint_is_that_checkpoint(tmp_path):
    fit = run_cli(
        "pipeline.fit", "--config", "configs/debug/sentiment.yaml", "--runs_dir", str(tmp_path / "runs"),
        "--trainer.logger=false", "--trainer.max_steps", "6", tmp_path=tmp_path,
    )  # fmt: skip
    run = run_dir_of(fit)
    last = run / "checkpoints" / "last.ckpt"
    copies = []
    for i in range(3):
        copies.append(run / "copies" / f"copy{i}.ckpt")
        copies[-1].parent.mkdir(exist_ok=True)
        shutil.copy(last, copies[-1])
    proc = run_cli("pipeline.average", "--ckpt_paths", *map(str, copies), tmp_path=tmp_path)
    out = Path(proc.stdout.strip().splitlines()[-1])
    assert out == run / "averaged" / "mean3.ckpt"
    original = torch.load(last, weights_only=True)["state_dict"]
    averaged = torch.load(out, weights_only=True)
    assert averaged["state_dict"].keys() == original.keys()
    for key, value in original.items():
        assert averaged["state_dict"][key].dtype == value.dtype and torch.equal(
            averaged["state_dict"][key], value
        ), key
    assert len(averaged["averaged_from"]) == 3 and "optimizer_states" not in averaged
    # the same predictions, through the task tool
    line = "a gorgeous , witty , seductive movie .\n"
    same = [
        run_cli("pipeline.predict", "--ckpt_path", str(c), tmp_path=tmp_path, stdin=line).stdout
        for c in (last, out)
    ]
    assert same[0] == same[1] and same[0].count("\t") == 1


def test_averaged_last_checkpoints_of_a_run_evaluate_and_translate(tmp_path):
    fit = run_cli(
        "pipeline.fit", "--config", "configs/debug/translation.yaml", "--runs_dir", str(tmp_path / "runs"),
        "--trainer.logger=false", "--trainer.max_steps", "9", tmp_path=tmp_path,
    )  # fmt: skip
    run = run_dir_of(fit)  # checkpoints at steps 3, 6, 9 (+ last.ckpt, also step 9)
    proc = run_cli("pipeline.average", "--run", str(run), "--last", "2", tmp_path=tmp_path)
    out = Path(proc.stdout.strip().splitlines()[-1])
    assert out == run / "averaged" / "last2.ckpt"
    assert "step00006.ckpt, step00009.ckpt" in proc.stderr  # the last two distinct steps, last.ckpt not twice
    states = [
        torch.load(run / "checkpoints" / f"step0000{s}.ckpt", weights_only=True)["state_dict"] for s in (6, 9)
    ]
    averaged = torch.load(out, weights_only=True)["state_dict"]
    key = "network.generator.weight"
    assert torch.allclose(averaged[key], (states[0][key] + states[1][key]) / 2)
    assert not torch.equal(averaged[key], states[1][key])
    ev = run_cli("pipeline.evaluate", "--ckpt_path", str(out), tmp_path=tmp_path)
    metrics = json.loads(ev.stdout.strip().splitlines()[-1])
    assert {"val_loss", "val_bleu"} <= set(metrics) and metrics["val_loss"] > 0
    lines = ["A man is riding a bike .", "", "Two dogs play in the snow ."]
    tr = run_cli("pipeline.translate", "--ckpt_path", str(out), "--beam", "2", tmp_path=tmp_path,
                 stdin="\n".join(lines) + "\n")  # fmt: skip
    out_lines = tr.stdout.split("\n")
    assert len(out_lines) == len(lines) + 1 and out_lines[1] == "" and out_lines[-1] == ""
    # a mistake gets one sentence: too few checkpoints for --last
    bad = run_cli("pipeline.average", "--run", str(run), "--last", "9", tmp_path=tmp_path, check=False)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: --last 9: ")


def test_averaged_checkpoints_of_an_lm_run_with_ema_sample(tmp_path):
    """The LM family, trained with an EMA: the average of its (EMA) checkpoints samples from ``pipeline.sample``."""
    fit = run_cli(
        "pipeline.fit", "--config", "configs/debug/lm.yaml", "--runs_dir", str(tmp_path / "runs"),
        "--trainer.logger=false", "--model.init_args.ema_decay", "0.9", tmp_path=tmp_path,
    )  # fmt: skip
    run = run_dir_of(fit)  # checkpoints at steps 4, 8, 12
    proc = run_cli("pipeline.average", "--run", str(run), "--last", "3", tmp_path=tmp_path)
    out = Path(proc.stdout.strip().splitlines()[-1])
    averaged = torch.load(out, weights_only=True)
    assert "ema" not in averaged  # the live weights of one input belong to no average
    sample = run_cli("pipeline.sample", "--ckpt_path", str(out), "--prime", "ROMEO:", "--length", "30",
                     "--seed", "0", tmp_path=tmp_path).stdout  # fmt: skip
    # prime + 30 generated characters + the closing newline
    assert sample.startswith("ROMEO:") and sample.endswith("\n") and len(sample) == len("ROMEO:") + 30 + 1
