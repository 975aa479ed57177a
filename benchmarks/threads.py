"""``--threads auto`` against every fixed thread count, for the config ``make fit`` trains, back to back.

    python benchmarks/threads.py [--config configs/sentiment/sst2_bilstm.yaml] [--steps 150] [--rounds 2]

Each round runs auto, then 1..cores threads, then the same in reverse order (so that a machine whose speed drifts
favours no setting), in one process; sentences/s are over the timed steps (data wait included). Writes
``benchmarks/results/threads.{json,md}`` (``--name`` for another machine's file). The acceptance bar: auto at 0.9x
or more of the best fixed count.
"""

from __future__ import annotations

import os

# before torch starts OpenMP (pipeline/__init__.py says why); the benchmark imports torch before the package
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import steps  # noqa: E402
from benchmarks.roofline import RESULTS, machine  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/sentiment/sst2_bilstm.yaml")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--name", default="threads", help="Result file name under benchmarks/results/.")
    args = parser.parse_args(argv)
    os.environ.pop("OMP_NUM_THREADS", None)  # auto must see the machine, not an inherited setting
    os.environ.setdefault("WANDB_MODE", "offline")
    settings = ["auto", *[str(n) for n in range(1, len(os.sched_getaffinity(0)) + 1)]]
    order = [s for _ in range(args.rounds) for s in (settings + settings[::-1])]
    speeds: dict[str, list[float]] = {s: [] for s in settings}
    chosen = None
    with tempfile.TemporaryDirectory() as tmp:
        for i, setting in enumerate(order):
            cli = steps.build(args.config, Path(tmp) / str(i), "--threads", setting, steps=args.steps)
            if setting == "auto":
                chosen = cli.hardware_line
            result = steps.run_pipeline(cli, args.warmup)
            speeds[setting].append(result["examples_per_s"])
            print(
                f"[threads] {setting}: {result['examples_per_s']:.1f} sentences/s",
                file=sys.stderr,
                flush=True,
            )
    median = {s: statistics.median(v) for s, v in speeds.items()}
    best = max((s for s in settings if s != "auto"), key=median.get)
    report = {
        "machine": machine(),
        "config": args.config,
        "auto_chose": chosen,
        "sentences_per_s": speeds,
        "median": median,
        "best_fixed": best,
        "auto_over_best_fixed": median["auto"] / median[best],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    m = report["machine"]
    lines = [
        f"CPU: {m['cpu']}, {m['cores']} cores, capability {m['cpu_capability']}; load average after the run "
        f"{m['load_average_1_5_15min']}; {args.config}, {args.steps} steps ({args.warmup} untimed) per run.",
        f"auto chose: {chosen}",
        "",
        "| threads | sentences/s (each run, in order) | median |",
        "|---|---|---|",
        *[f"| {s} | {', '.join(f'{v:.1f}' for v in speeds[s])} | {median[s]:.1f} |" for s in settings],
        "",
        f"auto / best fixed ({best}): **{report['auto_over_best_fixed']:.3f}**",
    ]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
