"""Score a checkpoint: ``python -m pipeline.evaluate --config <run>/config.yaml --ckpt_path <ckpt> [--split NAME]``.

Runs the task's validation loop on the validation split (or ``--split``) and prints the metrics as one JSON object on
the last line of stdout, e.g. ``{"val_acc": 0.84, "val_loss": 0.39}``. ``--config`` may be left out when the
checkpoint sits in a run directory (its config.yaml is used).
"""

from __future__ import annotations

import json
import sys

from pipeline.cli import PipelineCLI, main, run_config_for


def with_run_config(args: list[str]) -> list[str]:
    """Add ``--config <run>/config.yaml`` when only ``--ckpt_path`` was given."""
    if (
        "--config" in args
        or any(a.startswith("--config=") for a in args)
        or any(a in ("-h", "--help") for a in args)
    ):
        return args
    for i, a in enumerate(args):
        if a == "--ckpt_path" and i + 1 < len(args):
            return ["--config", str(run_config_for(args[i + 1])), *args]
        if a.startswith("--ckpt_path="):
            return ["--config", str(run_config_for(a.split("=", 1)[1])), *args]
    return args


def run(args: list[str] | None = None) -> dict:
    args = with_run_config(list(sys.argv[1:] if args is None else args))
    cli = PipelineCLI(args=args, mode="evaluate")
    if not cli.config.ckpt_path:
        raise FileNotFoundError("pipeline.evaluate needs --ckpt_path <checkpoint file>.")
    if cli.config.split:
        cli.datamodule.use_split(cli.config.split)
    results = cli.trainer.validate(cli.model, cli.datamodule, ckpt_path=cli.config.ckpt_path, verbose=False)
    metrics = {k: round(float(v), 6) for k, v in (results[0] if results else {}).items()}
    print(json.dumps(metrics, sort_keys=True), flush=True)
    return metrics


if __name__ == "__main__":
    main(run)
