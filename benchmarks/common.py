"""Helpers shared by the benchmark scripts: run the real CLI, read its CSV metrics, write JSON + a markdown table."""

from __future__ import annotations

import csv
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def cpu_name() -> str:
    """The CPU model as ``lscpu`` names it (every speed figure is named with its CPU)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def machine() -> dict:
    return {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu x{os.cpu_count()}",
        "python": platform.python_version(),
        "host": platform.node(),
        "torch_threads": int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())),
        # other work on the machine during the run skews wall-clock figures: recorded with them
        "load_average_1_5_15min": [round(x, 2) for x in os.getloadavg()],
    }


def run(
    module: str, *args: str, env: dict | None = None, log: Path | None = None
) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``python -m module args`` from the repo root; returns the process and its wall seconds."""
    start = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
    )
    wall = time.time() - start
    if log:
        log.write_text(proc.stdout + "\n--- stderr\n" + proc.stderr)
    if proc.returncode != 0:
        sys.exit(f"{module} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc, wall


def run_dir(proc: subprocess.CompletedProcess) -> Path:
    line = [ln for ln in proc.stderr.splitlines() if "run directory:" in ln][-1]
    path = Path(line.split("run directory:", 1)[1].strip())
    return path if path.is_absolute() else ROOT / path


def csv_metrics(run: Path) -> list[dict]:
    files = sorted(run.rglob("metrics.csv"))
    if not files:
        return []
    with open(files[-1]) as fh:
        return list(csv.DictReader(fh))


def column(rows: list[dict], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key) not in (None, "")]


def write(name: str, result: dict, table: list[tuple[str, str]], folder: Path = RESULTS) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["| metric | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in table]]
    (folder / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
