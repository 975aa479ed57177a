"""The video task from the real CLI: every cell type trains a few steps; bad files follow the bad-input policy."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline.data import moving_digits as md
from tests.conftest import run_cli, run_dir_of


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """A tiny moving-digits set (24 train / 8 val clips, 8 frames of 36x36) plus one garbage video in train."""
    out = tmp_path_factory.mktemp("moving_digits")
    md.main(
        [
            "--out",
            str(out),
            "--clips",
            "24",
            "--val_clips",
            "8",
            "--test_clips",
            "1",
            "--frames",
            "8",
            "--size",
            "36",
        ]
    )
    (out / "train" / "clips" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"junk" * 100)
    row = {"file": "clips/broken.mp4", "class": "3-left-up", "frame_labels": " ".join(["1"] * 8)}
    with open(out / "train" / "metadata.jsonl", "a") as fh:
        fh.write(json.dumps(row) + "\n")
    return out


def fit(clips, tmp_path, *extra, check=True):
    return run_cli(
        "pipeline.fit", "--config", "configs/debug/video.yaml", "--runs_dir", str(tmp_path / "runs"),
        f"--data.init_args.train.path={clips}/train/metadata.jsonl",
        f"--data.init_args.val.path={clips}/val/metadata.jsonl", *extra, tmp_path=tmp_path, check=check,
    )  # fmt: skip


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_cell_trains_from_the_cli(cell, clips, tmp_path):
    # W&B (a service process) only where its pictures are checked; decoding in a worker process once
    extra = {
        "rnn": ["--trainer.logger=false"],
        "gru": ["--trainer.logger=false", "--data.init_args.num_workers=1"],
    }
    extra = extra.get(cell, [])
    proc = fit(clips, tmp_path, f"--model.init_args.network.init_args.cell={cell}", *extra)
    run = run_dir_of(proc)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 6
    assert type(ckpt["state_dict"]["network.rnn.weight_hh_l0"]) is torch.Tensor
    rnn = {"rnn": 1, "lstm": 4, "gru": 3}[cell]  # gates stacked in weight_hh: the configured cell was built
    assert ckpt["state_dict"]["network.rnn.weight_hh_l0"].shape == (16 * rnn, 16)
    final = json.loads(proc.stderr.split("final validation metrics:")[1].splitlines()[0])
    assert {"val_acc", "val_frame_acc", "val_loss"} <= set(final)
    assert "bad_video=1" in proc.stderr  # the garbage file was skipped and counted, training went on
    if cell == "lstm":  # the tracking run got the confusion matrix and clips with labels
        media = list((run / "wandb").glob("offline-run-*/files/media/images/val/*.png"))
        assert any(p.name.startswith("confusion") for p in media) and any(
            p.name.startswith("clips") for p in media
        )
        assert len(list((run / "samples").glob("*.gif"))) == 4  # 2 clips x 2 validations


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_long_clips_train_with_truncated_bptt(cell, clips, tmp_path):
    """8-frame clips in windows of 5 frames: 2 optimizer steps per batch, so max_steps 6 is 3 batches."""
    proc = fit(
        clips, tmp_path, "--model.init_args.tbptt_steps=5", f"--model.init_args.network.init_args.cell={cell}",
        "--model.init_args.network.init_args.bidirectional=false", "--model.init_args.network.init_args.pooling=last",
        "--trainer.logger=false",
    )  # fmt: skip
    ckpt = torch.load(run_dir_of(proc) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 6  # optimizer steps = windows
    assert ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["processed"] == 3  # batches
    final = json.loads(proc.stderr.split("final validation metrics:")[1].splitlines()[0])
    assert {"val_acc", "val_frame_acc", "val_loss"} <= set(final)


def test_truncated_bptt_with_a_birnn_is_a_clear_error(clips, tmp_path):
    proc = fit(clips, tmp_path, "--model.init_args.tbptt_steps=5", "--trainer.logger=false", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "model.tbptt_steps needs model.network.bidirectional: false" in proc.stderr


def test_corrupted_video_error_names_the_file(clips, tmp_path):
    proc = fit(
        clips,
        tmp_path,
        "--data.init_args.bad_videos=error",
        "--data.init_args.num_workers=1",
        "--trainer.logger=false",
        check=False,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")][-1]
    assert "broken.mp4" in line and "metadata.jsonl:25" in line and "cannot be decoded" in line
    assert "Traceback" not in proc.stderr


def test_natops_config_trains_one_epoch(tmp_path):
    proc = run_cli(
        "pipeline.fit",
        "--config",
        "configs/video/natops_gru.yaml",
        "--runs_dir",
        str(tmp_path / "runs"),
        "--trainer.max_epochs=1",
        "--trainer.logger=false",
        tmp_path=tmp_path,
    )
    final = json.loads(proc.stderr.split("final validation metrics:")[1].splitlines()[0])
    assert 0.0 <= final["val_acc"] <= 1.0 and "val_frame_acc" not in final


@pytest.mark.parametrize(
    ("config", "max_steps"),
    [
        ("configs/video/moving_digits_lstm.yaml", 6000),
        ("configs/debug/video.yaml", 6),
        ("configs/video/natops_gru.yaml", -1),
    ],
)
def test_config_builds(config, max_steps, clips, tmp_path):
    from pipeline.cli import PipelineCLI

    args = ["--config", config, "--runs_dir", str(tmp_path / "runs"), "--trainer.logger=false"]
    if "natops" not in config:
        args += [
            f"--data.init_args.train.path={clips}/train/metadata.jsonl",
            f"--data.init_args.val.path={clips}/val/metadata.jsonl",
        ]
    cli = PipelineCLI(args=args, mode="fit")  # builds model, data and trainer; fit() is not called
    net, dm = cli.model.network, cli.datamodule
    assert net.head.out_features == dm.num_classes == (6 if "natops" in config else 40)
    assert (net.frame_head.out_features if net.frame_head is not None else 0) == dm.num_frame_classes
    assert cli.trainer.max_steps == max_steps


def test_ddp_ranks_with_different_window_counts_stop_with_a_sentence(clips, tmp_path):
    """Truncated BPTT under DDP: clips of 8 and 12 frames (every frame kept) give ranks batches of 2 and 3 windows,
    hence different numbers of optimizer steps, which would hang in the gradient all-reduce. It must stop instead."""
    long = tmp_path / "long"
    md.main(["--out", str(long), "--clips", "8", "--val_clips", "1", "--test_clips", "1", "--frames", "12",
             "--size", "36", "--seed", "1"])  # fmt: skip

    def rows_of(folder):
        return [json.loads(x) for x in (folder / "train" / "metadata.jsonl").read_text().splitlines()][:8]

    rows = []
    for s, ln in zip(rows_of(clips), rows_of(long), strict=True):
        s["file"] = str(clips / "train" / s["file"])
        rows += [s, ln]  # alternate 8 and 12 frames
    (long / "train" / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = fit(
        clips, tmp_path, f"--data.init_args.train.path={long}/train/metadata.jsonl", "--data.init_args.num_frames=null",
        "--data.init_args.batch_size=1", "--model.init_args.tbptt_steps=4",
        "--model.init_args.network.init_args.bidirectional=false", "--model.init_args.network.init_args.pooling=last",
        "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.accelerator=cpu", "--trainer.max_steps=40",
        "--trainer.logger=false", check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert (
        "error: DDP ranks got batches of different lengths in time (2 to 3 windows of 4 steps)" in proc.stderr
    )
