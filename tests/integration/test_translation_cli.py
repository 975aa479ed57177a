"""Translation from the real command line: every cell trains, bad parallel files fail clearly, a reverse task is
learned, and ``pipeline.translate`` turns input lines into one output line each."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.conftest import cli_env, run_cli, run_dir_of

DEBUG = "configs/debug/translation.yaml"
REVERSE = "configs/debug/translation_reverse.yaml"


def env(tmp_path: Path, **extra: str) -> dict[str, str]:
    # one thread: on a shared 2-core machine two OpenMP threads wait on each other at every small op
    return cli_env(tmp_path, OMP_NUM_THREADS="1", **extra)


def final_metrics(proc) -> dict[str, float]:
    line = [ln for ln in proc.stderr.splitlines() if "final validation metrics:" in ln][-1]
    return json.loads(line.split("final validation metrics:", 1)[1])


def write_reverse_task(root: Path, n_train: int = 3000, n_val: int = 200) -> Path:
    """``reverse/{train,val}.{src,tgt}``: 3-9 random letters, and the same letters in reverse order."""
    rng = random.Random(0)
    folder = root / "reverse"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("val", n_val)):
        pairs = [[rng.choice("abcdefghij") for _ in range(rng.randint(3, 9))] for _ in range(n)]
        (folder / f"{split}.src").write_text("".join(" ".join(p) + "\n" for p in pairs))
        (folder / f"{split}.tgt").write_text("".join(" ".join(reversed(p)) + "\n" for p in pairs))
    return root


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_each_cell_trains_a_few_steps(cell: str, tmp_path: Path) -> None:
    """Every cell trains and validates from the CLI; the GRU run also checks the W&B table and heatmaps."""
    wandb = cell == "gru"  # W&B start-up costs seconds: once is enough
    proc = run_cli(
        "pipeline.fit", "--config", DEBUG, "--runs_dir", str(tmp_path / "runs"),
        "--model.init_args.network.init_args.cell", cell, "--trainer.max_steps", "4",
        "--trainer.val_check_interval", "4", "--trainer.limit_val_batches", "1",
        *([] if wandb else ["--trainer.logger", "false"]),
        tmp_path=tmp_path, env=env(tmp_path),
    )  # fmt: skip
    run = run_dir_of(proc)
    metrics = final_metrics(proc)
    assert {"val_loss", "val_ppl", "val_acc", "val_bleu", "val_chrf"} <= set(metrics)
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "tokenizer.model").is_file()
    if wandb:
        media = run / "wandb"
        tables = list(media.glob("offline-run-*/files/media/table/val/samples_*.table.json"))
        assert tables, "no W&B table of sample translations"
        rows = json.loads(tables[0].read_text())
        assert rows["columns"] == ["step", "source", "reference", "hypothesis"] and rows["data"]
        assert len(list(media.glob("offline-run-*/files/media/images/val/attention_*.png"))) == 2
        # pipeline.evaluate scores a named split and prints the metrics as JSON on the last line
        ev = run_cli(
            "pipeline.evaluate", "--ckpt_path", str(run / "checkpoints" / "last.ckpt"), "--split", "test_2017_flickr",
            "--trainer.limit_val_batches", "1", tmp_path=tmp_path, env=env(tmp_path),
        )  # fmt: skip
        scores = json.loads(ev.stdout.strip().splitlines()[-1])
        assert {"val_bleu", "val_chrf", "val_loss"} <= set(scores) and 0 <= scores["val_bleu"] <= 100


def test_mismatched_parallel_files_stop_before_training_with_their_message(tmp_path: Path) -> None:
    (tmp_path / "bad.en").write_text("one\ntwo\nthree\n")
    (tmp_path / "bad.de").write_text("eins\nzwei\n")
    proc = run_cli(
        "pipeline.fit", "--config", DEBUG, "--runs_dir", str(tmp_path / "runs"),
        "--data.init_args.train.path", str(tmp_path / "bad.{lang}"),
        tmp_path=tmp_path, env=env(tmp_path), check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: parallel files differ in length: {tmp_path}/bad.en has 3 lines but {tmp_path}/bad.de has 2; "
        f"line i of one must translate line i of the other, so fix or re-export the shorter one."
    )
    assert "Traceback" not in proc.stderr
    assert not list((tmp_path / "runs").glob("*/*/checkpoints/*.ckpt"))


def test_reverse_task_is_learned_and_translate_round_trips_lines(tmp_path: Path) -> None:
    data_env = env(tmp_path, PIPELINE_DATA=str(write_reverse_task(tmp_path / "data")))
    proc = run_cli("pipeline.fit", "--config", REVERSE, "--runs_dir", str(tmp_path / "runs"),
                   tmp_path=tmp_path, env=data_env)  # fmt: skip
    metrics = final_metrics(proc)
    assert metrics["val_acc"] >= 0.95 and metrics["val_bleu"] >= 85, metrics

    ckpt = run_dir_of(proc) / "checkpoints" / "last.ckpt"
    lines = ["a b c d e", "", "j i h g", "c a f f e b"]
    out = run_cli("pipeline.translate", "--ckpt_path", str(ckpt), "--beam", "3", tmp_path=tmp_path,
                  env=data_env, stdin="\n".join(lines) + "\n")  # fmt: skip
    got = out.stdout.split("\n")
    assert got[-1] == "" and len(got) == len(lines) + 1  # one line out per line in, newline-terminated
    expected = [" ".join(reversed(line.split())) for line in lines]
    assert got[1] == ""  # an empty line stays empty
    assert sum(g == e for g, e in zip(got, expected, strict=False)) >= 3, got
