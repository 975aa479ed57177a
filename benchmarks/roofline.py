"""How far each task's shipped config is from this machine's matmul limit, and what Lightning costs over a plain loop.

    python benchmarks/roofline.py [--tasks sentiment translation lm video] [--steps 60] [--warmup 10] [--interleave]

For each task it writes, to ``benchmarks/results/roofline.{json,md}``:

- FLOPs per token (per frame for video) of forward plus backward, analytical: recurrent layers by formula
  (``2 * gates * H * (I + H)`` per step, direction and layer, forward; backward twice that), every other matmul
  (embeddings' projections, attention, heads, convolutions) counted by ``torch.utils.flop_counter`` on a real batch,
  per real (non-pad) token, so padding counts as waste. Elementwise gate arithmetic is not counted (< 5%);
- the achieved training FLOP/s (FLOPs per token x tokens/s of the pipeline, data wait included);
- the ``torch.mm`` peak measured in the same run, at the training dtype and thread count, on the GEMM shapes of the
  model itself (input projections (B*T, I, gH), recurrent (B, H, gH), heads) and on 1024^3 for reference;
- achieved / peak, and the share of step time spent waiting for data;
- the pipeline's tokens/s over a plain PyTorch loop's (same network, weights, batches, optimizer; benchmarks/steps.py),
  and the largest difference between their first 50 losses. Whole runs back to back by default; with
  ``--interleave``, one process alternates a batch of each, so that a machine whose speed drifts from minute to
  minute (a shared VM) slows both alike. On a 2-core Xeon VM whose speed drifted ±10% (2026-12-03), two back-to-back
  measurements of one commit gave 0.923 and 0.969; interleaved, two of the next commit gave 0.950 and 0.946
  (medians of three rounds each). The side that goes first in a pair alternates: both see the same batches, and the
  first to meet a GEMM shape pays oneDNN's kernel build for it (translation meets tens of new shapes a batch); with
  the pipeline always first, translation read 0.83-0.87, and two plain loops in turns differed as much.
"""

from __future__ import annotations

import os

# before torch starts OpenMP (pipeline/__init__.py says why); the benchmark imports torch before the package
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import steps  # noqa: E402
from benchmarks.common import cpu_name  # noqa: E402

RESULTS = steps.ROOT / "benchmarks" / "results"
CLIPS = steps.ROOT / "benchmarks" / ".data" / "moving_digits"  # generated, git-ignored
TASKS = {
    "sentiment": ("configs/sentiment/sst2_bilstm.yaml", []),
    "translation": ("configs/translation/multi30k_en_de_gru_attn.yaml", []),
    "lm": ("configs/lm/shakespeare_char_lstm.yaml", []),
    # 2,400 clips: the timed steps stay in one epoch, as in a real run (12,000 clips); a 640-clip shuffle buffer (the
    # config has 4,000) puts buffer boundaries every 20 batches into the timed steps, so that their cost is counted
    "video": (
        "configs/video/moving_digits_lstm.yaml",
        [f"--data.init_args.{s}.path={CLIPS}/{s}/metadata.jsonl" for s in ("train", "val")]
        + ["--data.init_args.buffer_size=640"],
    ),
}
N_CLIPS = 2400
# optimizer steps per run: a run of fast steps is short, and a short run is at the mercy of the machine's drift
STEPS = {"sentiment": 400, "translation": 60, "lm": 60, "video": 60}
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


# --- FLOPs ----------------------------------------------------------------------------------------------------
def rnn_forward_flops(module: torch.nn.RNNBase, inputs: tuple) -> tuple[int, list[tuple[int, int, int]]]:
    """Forward matmul FLOPs of one call of a recurrent module, and its GEMM shapes (M, K, N)."""
    x = inputs[0]
    if isinstance(x, torch.nn.utils.rnn.PackedSequence):
        steps_total, batch = x.data.size(0), int(x.batch_sizes[0])
    else:
        b, t = (x.size(0), x.size(1)) if module.batch_first else (x.size(1), x.size(0))
        steps_total, batch = b * t, b
    gates = GATES[module.mode.split("_")[0]]  # LSTM, GRU, RNN_TANH, RNN_RELU
    h, dirs = module.hidden_size, 2 if module.bidirectional else 1
    flops, shapes = 0, []
    for layer in range(module.num_layers):
        i = module.input_size if layer == 0 else h * dirs
        flops += 2 * gates * h * (i + h) * steps_total * dirs
        shapes += [(steps_total, i, gates * h), (batch, h, gates * h)]
    return flops, shapes


def count_flops(
    task: torch.nn.Module, batch: dict, precision: str
) -> tuple[float, list[tuple[int, int, int]]]:
    """Forward + backward FLOPs of one training batch (the recurrent part by formula), and the model's GEMM shapes."""
    rnn_flops, shapes, hooks = [0], [], []
    rnn_names = {name for name, m in task.named_modules() if isinstance(m, torch.nn.RNNBase)}

    def hook(module, inputs, output):
        f, s = rnn_forward_flops(module, inputs)
        rnn_flops[0] += f
        shapes.extend(s)

    for m in task.modules():
        if isinstance(m, torch.nn.RNNBase):
            hooks.append(m.register_forward_hook(hook))
        if isinstance(m, torch.nn.Linear):
            hooks.append(
                m.register_forward_hook(
                    lambda mod, inp, out: shapes.append(
                        (inp[0].numel() // mod.in_features, mod.in_features, mod.out_features)
                    )
                )
            )
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision.startswith("bf16"))
    task.train()
    with FlopCounterMode(display=False) as counter, autocast:
        loss = loss_of(task, batch)
        loss.backward()
    for h in hooks:
        h.remove()
    task.zero_grad(set_to_none=True)
    counts = counter.get_flop_counts()
    # GRU/RNN decompose into counted matmuls on CPU, LSTM does not: drop whatever was counted inside any recurrent
    # module and use the formula for all of them
    counted_inside = sum(
        sum(v.values()) for name, v in counts.items() if any(name.endswith(r) for r in rnn_names if r)
    )
    other = counter.get_total_flops() - counted_inside
    return other + 3 * rnn_flops[0], sorted(set(shapes + loop_shapes(task, batch)))


def loop_shapes(task, batch: dict) -> list[tuple[int, int, int]]:
    """GEMM shapes of layers a model uses without calling them as modules (their FLOPs are counted as aten ops):
    the translation decoder's step loop and its output layer fused with the loss (pipeline/models)."""
    net = getattr(task, "network", None)
    if not (hasattr(net, "generator") and hasattr(net, "decoder")) or "tgt_out" not in batch:
        return []
    b, rnn = batch["tgt_out"].size(0), net.decoder
    gates = GATES[rnn.mode.split("_")[0]] * rnn.hidden_size
    out = [(int((batch["tgt_out"] != 0).sum()), net.generator.in_features, net.generator.out_features)]
    out.append((b, net.combine.in_features, net.combine.out_features))
    ahead = net.tgt_embed.embedding_dim if net.input_feeding else 0  # projected before the loop (LoopRNN)
    if ahead:
        out.append((batch["tgt_out"].numel(), ahead, gates))
    for k in range(rnn.num_layers):
        width = getattr(rnn, f"weight_ih_l{k}").size(1) - (ahead if k == 0 else 0)
        out += [(b, width, gates), (b, rnn.hidden_size, gates)]
    return out


def loss_of(task, batch: dict) -> torch.Tensor:
    if isinstance(task, steps.TBPTTTask):
        task._window_logits = []
        loss, _ = task.window_loss(batch, slice(0, task.time_steps(batch)), None)
        return loss
    return steps.plain_loss(task, batch)


# --- the matmul peak --------------------------------------------------------------------------------------------
def mm_gflops(m: int, k: int, n: int, dtype: torch.dtype, seconds: float = 0.4, tries: int = 3) -> float:
    """The best of ``tries`` timings of ``torch.mm`` at (m, k) x (k, n): a peak, so the fastest run counts.

    The product goes into one preallocated output: a fresh one per call measured the allocator instead (glibc maps a
    32 MB block afresh for each and page-faults it in: 8192x128x2048 in bf16 read ~200 GFLOP/s that way, 400-800
    with ``out=``, on a 2-core AMX Xeon, 2026-12-03)."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    out = torch.mm(a, b)
    best = 0.0
    for _ in range(tries):
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            torch.mm(a, b, out=out)
            reps += 1
        best = max(best, 2 * m * k * n * reps / (time.perf_counter() - start) / 1e9)
    return best


def mm_peak(shapes: list[tuple[int, int, int]], dtype: torch.dtype) -> dict:
    big = sorted(shapes, key=lambda s: -s[0] * s[1] * s[2])[:6]  # the largest GEMMs carry the FLOPs
    measured = {f"{m}x{k}x{n}": round(mm_gflops(m, k, n, dtype), 1) for m, k, n in big}
    best = max(measured, key=measured.get)
    return {"shapes": measured, "peak_gflops": measured[best], "peak_shape": best,
            "square_1024_gflops": round(mm_gflops(1024, 1024, 1024, dtype), 1)}  # fmt: skip


# --- one task -----------------------------------------------------------------------------------------------------
def ensure_clips() -> None:
    made = CLIPS / "generation.json"
    if not made.is_file() or json.loads(made.read_text())["args"]["clips"] != N_CLIPS:
        subprocess.run(
            [sys.executable, "-m", "pipeline.data.moving_digits", "--out", str(CLIPS), "--clips", str(N_CLIPS)],
            cwd=steps.ROOT, check=True,
        )  # fmt: skip


def measure(
    task: str, n_steps: int, warmup: int, runs: Path, extra: list[str], rounds: int, interleave: bool
) -> dict:
    config, overrides = TASKS[task]
    if task == "video":
        ensure_clips()
    result = steps.compare(
        config,
        runs / task,
        *overrides,
        *extra,
        steps=n_steps,
        warmup=warmup,
        rounds=rounds,
        interleave=interleave,
    )
    cli = result.pop("cli")
    batch = next(iter(cli.datamodule.train_dataloader()))
    flops, shapes = count_flops(cli.model.cpu(), batch, result["precision"])
    per_unit = flops / steps.batch_units(batch)
    dtype = torch.bfloat16 if result["precision"].startswith("bf16") else torch.float32
    peak = mm_peak(shapes, dtype)
    achieved = per_unit * result["pipeline"]["units_per_s"] / 1e9
    return result | {
        "config": config,
        "unit": "frame" if task == "video" else "token",
        "flops_per_unit": per_unit,
        "achieved_gflops": achieved,
        "mm": peak,
        "fraction_of_peak": achieved / peak["peak_gflops"],
    }


def machine() -> dict:
    return {
        "cpu": cpu_name(),
        "cores": len(os.sched_getaffinity(0)),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "amx": bool(torch.cpu._is_amx_tile_supported()),
        "avx512_bf16": bool(torch.cpu._is_avx512_bf16_supported()),
        "load_average_1_5_15min": [round(x, 2) for x in os.getloadavg()],
    }


def table(rows: dict) -> list[str]:
    lines = [
        "| task | steps/run | precision | threads | FLOPs/unit (fwd+bwd) | pipeline units/s | achieved GFLOP/s | mm peak GFLOP/s "
        "(shape) | of peak | data wait | plain loop units/s | pipeline / plain | max loss diff (first n) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for task, r in rows.items():
        lines.append(
            f"| {task} ({r['unit']}) | {r['steps']} | {r['precision']} | {r['threads']} | {r['flops_per_unit'] / 1e6:.2f} M | "
            f"{r['pipeline']['units_per_s']:,.0f} | {r['achieved_gflops']:.1f} | {r['mm']['peak_gflops']} "
            f"({r['mm']['peak_shape']}) | {r['fraction_of_peak']:.1%} | {r['pipeline']['data_wait_share']:.1%} | "
            f"{r['plain']['units_per_s']:,.0f} | {r['ratio']:.3f} | {r['max_loss_diff']:.2e} ({r['losses_compared']}) |"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument(
        "--steps", type=int, default=None, help=f"Optimizer steps per run (default per task: {STEPS})."
    )
    parser.add_argument(
        "--rounds", type=int, default=4, help="Runs of each side, in turns AB BA AB BA (default 4)."
    )
    parser.add_argument("--warmup", type=int, default=10, help="Untimed first steps (default 10).")
    parser.add_argument(
        "--interleave",
        action="store_true",
        help="Run the pipeline and the plain loop in one process, a batch of each in turns, so that a machine whose "
        "speed drifts from minute to minute slows both alike.",
    )
    parser.add_argument("--name", default="roofline", help="Result file name under benchmarks/results/.")
    parser.add_argument(
        "overrides", nargs="*", help="CLI overrides for every config, e.g. --trainer.precision=32-true"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "offline")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            print(f"[roofline] {task} ...", file=sys.stderr, flush=True)
            n_steps = args.steps or STEPS[task]
            rows[task] = measure(
                task, n_steps, args.warmup, Path(tmp), args.overrides, args.rounds, args.interleave
            ) | {"steps": n_steps}
    report = {
        "machine": machine(),
        "rounds": args.rounds,
        "warmup": args.warmup,
        "interleaved": args.interleave,
        "tasks": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    m = report["machine"]
    head = [
        f"CPU: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, capability {m['cpu_capability']}, "
        f"AMX {m['amx']}, AVX512-BF16 {m['avx512_bf16']}; load average after the run {m['load_average_1_5_15min']}; "
        f"{args.rounds} runs of each side "
        + ("interleaved batch by batch in one process" if args.interleave else "back to back in turns")
        + f" (median); first {args.warmup} steps of each run untimed. pipeline / plain per run: "
        + "; ".join(f"{t} " + ", ".join(f"{x:.3f}" for x in r["paired_ratios"]) for t, r in rows.items())
        + ".",
        "",
    ]
    text = "\n".join(head + table(rows)) + "\n"
    (RESULTS / f"{args.name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
