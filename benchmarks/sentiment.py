"""SST-2 benchmark: train the default config under a wall-clock budget, report dev accuracy and throughput.

    python benchmarks/sentiment.py [--minutes 10] [--config configs/sentiment/sst2_bilstm.yaml] [extra overrides]

The clock includes tokenizer training (a fresh cache). The best checkpoint (by dev accuracy, checked during training)
is scored again with ``pipeline.evaluate``. Writes benchmarks/results/sentiment.json and sentiment.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from common import ROOT, column, csv_metrics, machine, run, run_dir, write


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget for training")
    parser.add_argument("--config", default="configs/sentiment/sst2_bilstm.yaml")
    parser.add_argument(
        "--out", default=str(ROOT / "benchmarks" / "results"), help="folder for the JSON/MD/log"
    )
    parser.add_argument("overrides", nargs="*", help="extra CLI overrides, e.g. --trainer.max_epochs=2")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-sst2-"))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    seconds = int(args.minutes * 60)
    fit, wall = run(
        "pipeline.fit",
        "--config",
        args.config,
        "--runs_dir",
        str(scratch / "runs"),
        "--trainer.max_time",
        f"00:00:{seconds // 60:02d}:{seconds % 60:02d}",
        "--trainer.logger",
        "pytorch_lightning.loggers.CSVLogger",
        *args.overrides,
        env={"PIPELINE_CACHE": str(scratch / "cache"), "WANDB_MODE": "disabled"},
        log=Path(args.out) / "sentiment.log",
    )
    run_path = run_dir(fit)
    best = sorted((run_path / "checkpoints").glob("best-*.ckpt"))
    ckpt = best[-1] if best else run_path / "checkpoints" / "last.ckpt"
    ev, _ = run("pipeline.evaluate", "--ckpt_path", str(ckpt), env={"WANDB_MODE": "disabled"})
    metrics = json.loads(ev.stdout.strip().splitlines()[-1])
    rows = csv_metrics(run_path)
    tokens = column(rows, "train/tokens_per_s")
    examples = column(rows, "train/examples_per_s")
    pad = column(rows, "train/pad_fraction_epoch") or column(rows, "train/pad_fraction_step")
    val_curve = [(int(float(r["step"])), float(r["val_acc"])) for r in rows if r.get("val_acc")]
    result = {
        "dev_accuracy": metrics.get("val_acc"),
        "dev_loss": metrics.get("val_loss"),
        "checkpoint": str(ckpt.name),
        "wall_seconds": round(wall, 1),
        "budget_minutes": args.minutes,
        "tokens_per_s_median": round(statistics.median(tokens), 1) if tokens else None,
        "examples_per_s_median": round(statistics.median(examples), 1) if examples else None,
        "padding_fraction": round(statistics.mean(pad), 4) if pad else None,
        "val_acc_by_step": val_curve,
        "config": args.config,
        "overrides": args.overrides,
        **machine(),
    }
    write(
        "sentiment",
        result,
        [
            ("dev accuracy (best checkpoint)", f"{result['dev_accuracy']:.4f}"),
            ("wall seconds (tokenizer + training + validation)", f"{wall:.0f}"),
            ("train tokens/s (median, sentencepiece pieces)", str(result["tokens_per_s_median"])),
            ("train sentences/s (median)", str(result["examples_per_s_median"])),
            ("padding fraction", str(result["padding_fraction"])),
            ("torch / device", f"{result['torch']} / {result['device']}"),
        ],
        Path(args.out),
    )


if __name__ == "__main__":
    main()
