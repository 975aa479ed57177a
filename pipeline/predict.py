"""Predict line by line: ``python -m pipeline.predict --ckpt_path <ckpt> [--input FILE] [--batch N]``.

Reads sentences from ``--input`` (or stdin), writes one line per input line to stdout; for sentiment that is
``<label>\\t<probability>``. An empty (or blank) input line gets an empty output line, so that output line N
still answers input line N; how many there were is said on stderr. The model and tokenizer are rebuilt from the
checkpoint's run directory.
"""

from __future__ import annotations

import argparse
import sys

import torch

from pipeline.cli import PipelineCLI, main, run_config_for


def load_for_inference(ckpt_path: str, config: str | None = None) -> PipelineCLI:
    """Rebuild a run's model and data module from its config and load the checkpoint's weights (weights_only)."""
    sys.argv = sys.argv[:1]  # our own flags are parsed; LightningCLI warns when it sees them beside args=
    cfg = config or str(run_config_for(ckpt_path))
    cli = PipelineCLI(args=["--config", cfg, "--ckpt_path", ckpt_path], mode="evaluate")
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)["state_dict"]
    cli.model.load_state_dict(state)
    cli.model.eval()
    return cli


def run(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.predict", description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_path", required=True, help="checkpoint file inside a run directory")
    parser.add_argument("--config", default=None, help="the run's config (default: <run>/config.yaml)")
    parser.add_argument("--input", default=None, help="file with one input per line (default: stdin)")
    parser.add_argument("--batch", type=int, default=256, help="lines handled per step")
    args = parser.parse_args(argv)
    cli = load_for_inference(args.ckpt_path, args.config)
    if not hasattr(cli.model, "predict_lines"):
        raise SystemExit(
            f"error: {type(cli.model).__name__} has no line-by-line prediction; see its task's own CLI."
        )
    stream = open(args.input, encoding="utf-8") if args.input else sys.stdin
    with stream:
        lines = [line.rstrip("\n") for line in stream]
    for out in predict_aligned(cli.model, cli.datamodule, lines, args.batch):
        print(out, flush=False)
    sys.stdout.flush()


def predict_aligned(model, datamodule, lines: list[str], batch: int) -> list[str]:
    """One output per input line: the model's answer, or an empty line for a blank input (counted on stderr)."""
    out = [""] * len(lines)
    given = [i for i, line in enumerate(lines) if line.strip()]
    for start in range(0, len(given), batch):
        idx = given[start : start + batch]
        for i, answer in zip(idx, model.predict_lines([lines[i] for i in idx], datamodule), strict=True):
            out[i] = answer
    if len(given) < len(lines):
        blank = len(lines) - len(given)
        print(
            f"[pipeline] {blank} empty input line{'s' if blank > 1 else ''}: written as empty output lines, so that "
            f"output line N still answers input line N.",
            file=sys.stderr,
        )
    return out


if __name__ == "__main__":
    main(run)
