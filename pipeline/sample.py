"""Sample text from a language-model checkpoint: ``python -m pipeline.sample --ckpt_path <ckpt> --prime "ROMEO:"
--length 500 --temperature 0.8 [--top_k K] [--top_p P] [--seed S] [--greedy]``.

Prints the prime followed by the generated text on stdout. The model is rebuilt from the run's ``config.yaml`` next
to the checkpoint and its vocabulary (``vocab.json``) or tokenizer (``tokenizer.model``), so only the run directory
is needed, not the corpus. The same ``--seed`` gives the same text.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.cli import main
from pipeline.data.faults import DataError
from pipeline.predict import load_for_inference


def load(ckpt_path: str, config: str | None = None):
    """Rebuild the run's model and data module (vocabulary from the run directory) and load the weights."""
    return load_for_inference(ckpt_path, config)


def run(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m pipeline.sample", description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_path", required=True, help="checkpoint file inside a run directory")
    parser.add_argument("--config", default=None, help="the run's config (default: <run>/config.yaml)")
    parser.add_argument("--prime", default="\n", help="text to start from (default: a newline)")
    parser.add_argument(
        "--length", type=int, default=500, help="tokens to generate (characters for a char model)"
    )
    parser.add_argument(
        "--temperature", type=float, default=1.0, help="<1: safer, >1: more surprising; 0: greedy"
    )
    parser.add_argument("--top_k", type=int, default=None, help="sample among the k most likely tokens only")
    parser.add_argument(
        "--top_p", type=float, default=None, help="sample within the top-p probability mass only"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed: the same seed gives the same text")
    parser.add_argument("--greedy", action="store_true", help="always take the most likely token")
    args = parser.parse_args(argv)
    cli = load(args.ckpt_path, args.config)
    model, data = cli.model, cli.datamodule
    if not hasattr(model, "sample_text"):
        raise SystemExit(
            f"error: {type(model).__name__} is not a language model; pipeline.sample cannot use it."
        )
    vocab = getattr(data, "vocab", None) if getattr(data, "tokenizer", None) is None else None
    if vocab is not None and vocab.unknown(args.prime):
        raise DataError(
            f"--prime contains {', '.join(repr(c) for c in vocab.unknown(args.prime))}, which the model never saw in "
            f"training; leave it out."
        )
    text = model.sample_text(
        data, args.prime, args.length, args.temperature, args.top_k, args.top_p, args.greedy, args.seed
    )
    sys.stdout.write(args.prime + text + "\n")
    sys.stdout.flush()
    return text


if __name__ == "__main__":
    main(run)
