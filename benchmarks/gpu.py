"""GPU checks in one command: each task's shipped config on CUDA, bf16 against fp32.

    python benchmarks/gpu.py [--tasks sentiment translation lm video] [--steps 80]

For each task and precision (bf16-mixed, 32-true) it trains ``--steps`` optimizer steps through the pipeline and
writes, to ``benchmarks/results/gpu.{json,md}``: tokens/s (frames/s for video), the share of step time spent waiting
for data, the recurrent kernel that ran (cuDNN or not, read from the profiler's kernel names), and peak GPU memory.
On a machine without CUDA it says so and exits 0.
"""

from __future__ import annotations

import os

# before torch starts OpenMP (pipeline/__init__.py says why); the benchmark imports torch before the package
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import steps  # noqa: E402
from benchmarks.roofline import RESULTS, TASKS, ensure_clips, loss_of  # noqa: E402


def rnn_kernels(task: torch.nn.Module, batch: dict, precision: str) -> list[str]:
    """Names of the CUDA kernels one training step of the recurrent layers launched (cuDNN's contain 'cudnn')."""
    from torch.profiler import ProfilerActivity, profile

    batch = steps.to_device(batch, torch.device("cuda"))
    task.cuda().train()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision.startswith("bf16"))
    with profile(activities=[ProfilerActivity.CUDA]) as prof, autocast:
        loss_of(task, batch).backward()
        torch.cuda.synchronize()
    names = {e.name for e in prof.events() if e.device_type.name == "CUDA"}
    return sorted(n for n in names if any(k in n.lower() for k in ("cudnn", "rnn", "lstm", "gru")))[:8]


def one(task: str, precision: str, n_steps: int, warmup: int, runs: Path) -> dict:
    config, overrides = TASKS[task]
    torch.cuda.reset_peak_memory_stats()
    cli = steps.build(
        config, runs, *overrides, "--trainer.accelerator", "gpu", "--trainer.devices", "1",
        "--trainer.precision", precision, steps=n_steps,
    )  # fmt: skip
    result = steps.run_pipeline(cli, warmup)
    batch = next(iter(cli.datamodule.train_dataloader()))
    kernels = rnn_kernels(cli.model, batch, precision)
    return {
        "units_per_s": result["units_per_s"],
        "data_wait_share": result["data_wait_share"],
        "median_step_ms": result["median_step_ms"],
        "cudnn": any("cudnn" in k.lower() for k in kernels) and torch.backends.cudnn.enabled,
        "rnn_kernels": kernels,
        "peak_memory_mib": torch.cuda.max_memory_allocated() / 2**20,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--warmup", type=int, default=15)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(
            "benchmarks/gpu.py: no CUDA device here (torch.cuda.is_available() is False); nothing to measure."
        )
        return
    os.environ.setdefault("WANDB_MODE", "offline")
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            if task == "video":
                ensure_clips()
            for precision in ("bf16-mixed", "32-true"):
                print(f"[gpu] {task} {precision} ...", file=sys.stderr, flush=True)
                rows[f"{task} {precision}"] = one(task, precision, args.steps, args.warmup, Path(tmp) / task)
    report = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version(),
        "steps": args.steps,
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gpu.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"{report['device']}, torch {report['torch']}, cuDNN {report['cudnn']}; {args.steps} steps, first "
        f"{args.warmup} untimed.",
        "",
        "| task, precision | tokens/s (frames/s) | data wait | median step ms | cuDNN RNN | peak MiB |",
        "|---|---|---|---|---|---|",
        *[
            f"| {k} | {r['units_per_s']:,.0f} | {r['data_wait_share']:.1%} | {r['median_step_ms']:.1f} | "
            f"{r['cudnn']} | {r['peak_memory_mib']:,.0f} |"
            for k, r in rows.items()
        ],
    ]
    (RESULTS / "gpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
