"""Translate text: ``python -m pipeline.translate --ckpt_path <run>/checkpoints/x.ckpt [--beam 5] < in.en > out.de``.

Reads source sentences from stdin, one per line, and writes one translation per input line to stdout (an empty
line stays empty). The model and tokenizers are rebuilt from the run's ``config.yaml`` and ``tokenizer.model``
beside the checkpoint; weights are loaded with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from pipeline.cli import main
from pipeline.predict import load_for_inference


def load_translator(ckpt_path: str) -> tuple[torch.nn.Module, object]:
    """The trained task module (eval mode) and its DataModule, from a checkpoint inside a run directory."""
    cli = load_for_inference(ckpt_path)
    return cli.model, cli.datamodule


def run(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_path", required=True, help="A checkpoint inside a run directory.")
    parser.add_argument("--beam", type=int, default=None, help="Beam size (1: greedy; default: the run's).")
    parser.add_argument("--length_penalty", type=float, default=None, help="Beam length penalty alpha.")
    parser.add_argument("--batch_size", type=int, default=64, help="Sentences decoded together.")
    opts = parser.parse_args(argv)
    if not Path(opts.ckpt_path).is_file():
        raise FileNotFoundError(f"--ckpt_path {opts.ckpt_path}: no such checkpoint file.")
    task, datamodule = load_translator(opts.ckpt_path)
    if opts.length_penalty is not None:
        task.length_penalty = opts.length_penalty
    lines = [line.rstrip("\r\n") for line in sys.stdin]
    for out in task.predict_lines(lines, datamodule, beam_size=opts.beam, batch_size=opts.batch_size):
        sys.stdout.write(out.replace("\n", " ") + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main(run)
