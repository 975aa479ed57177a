"""Average checkpoints: ``python -m pipeline.average --run <run dir> --last 5`` or ``--ckpt_paths A.ckpt B.ckpt``.

Writes one checkpoint whose weights are the element-wise mean of the inputs' (default: ``<run>/averaged/last5.ckpt``)
and prints its path; ``pipeline.evaluate``, ``translate``, ``sample`` and ``predict`` take it as ``--ckpt_path``.
See :mod:`pipeline.training.averaging`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.cli import main
from pipeline.training import averaging


def run(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m pipeline.average", description=__doc__.splitlines()[0])
    given = parser.add_mutually_exclusive_group(required=True)
    given.add_argument("--ckpt_paths", nargs="+", help="checkpoints to average (of one model)")
    given.add_argument("--run", help="a run directory: average its last --last checkpoints by global step")
    parser.add_argument("--last", type=int, default=5, help="with --run: how many checkpoints (default 5)")
    parser.add_argument("--out", default=None, help="output file (default: <run>/averaged/last<N>.ckpt)")
    args = parser.parse_args(argv)
    if args.run:
        paths = averaging.last_of_run(Path(args.run), args.last)
    else:
        paths = [Path(p) for p in args.ckpt_paths]
    out = Path(args.out) if args.out else averaging.default_output(paths, args.last if args.run else None)
    averaging.write(averaging.average_checkpoints(paths), out)
    names = ", ".join(p.name for p in paths)
    print(f"[pipeline] averaged {len(paths)} checkpoints ({names}) into {out}", file=sys.stderr)
    print(out)
    return out


if __name__ == "__main__":
    main(run)
