"""Peers side by side (issue 14): our benchmark run, then a reference implementation's, same budget and threads.

    python benchmarks/peers.py translation           # 25 min ours + 25 min OpenNMT-py 3.0.4, then decoding (~70 min)
    python benchmarks/peers.py lm                    # 15 min ours + 15 min pytorch/examples word_language_model (~35 min)
    python benchmarks/peers.py sentiment             # 10 min budget each: ours vs the plain PyTorch BiLSTM loop (~20 min)
    python benchmarks/peers.py lm --quick            # ~2 minutes a side: a smoke check (figures mean nothing)
    python benchmarks/peers.py lm --only peer --threads 2 --minutes 15

Our side is the task's own benchmark script (``translation.py --marks M``, ``char_lm.py --marks M``,
``sentiment.py``), its outputs under ``benchmarks/peers_env/ours/<task>/`` (git-ignored; the committed
``benchmarks/results/<task>.json`` stay as they are). The peer side is ``peer_onmt.py``, ``peer_lm.py`` or
``peer_sentiment.py`` (their docstrings say how each is configured, clocked and scored). Threads: ``--threads N`` is
passed to both; with ``auto`` (default) ours chooses (the pipeline's ``--threads auto``, probe included) and the peer
gets the count ours ended on, read from ours' ``[pipeline] precision ...; N torch threads`` line and the probe's
``using N`` line; both run with OMP_WAIT_POLICY=PASSIVE. Peers' venvs, checkouts and data live in
``benchmarks/peers_env/`` (git-ignored). Writes ``benchmarks/results/peers.json`` (merged: other tasks' entries are
kept; ``--only`` keeps the other side's last figures) and ``peers.md`` (``--quick``: ``peers.quick.*``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repo root

from benchmarks.common import cpu_name  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ENV = ROOT / "benchmarks" / "peers_env"
RESULTS = ROOT / "benchmarks" / "results"
WLM_MIRROR = Path("/work/.mirror/pytorch+examples/repo")
PY = sys.executable
DEFAULT_MINUTES = {"translation": 25.0, "lm": 15.0, "sentiment": 10.0}
# figure, unit, which way is better, the peer
TASKS = {
    "translation": ("test_2016_flickr BLEU (beam 5, sacrebleu 13a), checkpoint chosen on val", "BLEU", max,
                    "OpenNMT-py 3.0.4"),
    "lm": ("validation loss, nats per character (newlines included)", "nats/char", min,
           "pytorch/examples word_language_model"),
    "sentiment": ("SST-2 dev accuracy (best within the budget)", "accuracy", max,
                  "plain PyTorch BiLSTM loop (sentiment_throughput.Reference)"),
}  # fmt: skip
THREADS = re.compile(r"\[pipeline\] precision .*?; (\d+) torch threads?")
PROBE = re.compile(r"threads measured over .*: using (\d+)")


def cpu() -> str:
    flags = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.split("Flags:", 1)[-1].split()
    bf16 = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]  # what decides bf16's speed here
    return f"{cpu_name()}, {os.cpu_count()} cores" + "".join(f", {f}" for f in bf16)


def load() -> float:
    return round(os.getloadavg()[0], 2)


# --side_by_side: the CPUs each side is pinned to ({"ours": "0", "peer": "1"} on 2 cores); empty: not pinned
PIN: dict[str, str] = {}


def side(cmd: list[str], log: Path, env: dict | None = None, who: str = "ours") -> dict:
    """Run one side, its output to ``log``; return when, how long and the machine's load around it."""
    if PIN.get(who):
        cmd = ["taskset", "-c", PIN[who], *cmd]
    log.parent.mkdir(parents=True, exist_ok=True)
    print("+", " ".join(cmd), f"  (log: {log.relative_to(ROOT)})", flush=True)
    info = {"started_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "load_1min_start": load()}
    t = time.time()
    with open(log, "w") as fh:
        proc = subprocess.run(
            cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        sys.exit(f"{' '.join(cmd[:2])} failed ({proc.returncode}); see {log}:\n" + "\n".join(tail))
    return {**info, "load_1min_end": load(), "wall_minutes": round((time.time() - t) / 60, 1)}


def threads_used(*logs: Path) -> int | None:
    """The torch thread count our run trained with: its start line, or the probe's choice when it probed."""
    text = "".join(p.read_text(errors="replace") for p in logs if p.exists())
    probe, start = PROBE.findall(text), THREADS.findall(text)
    return int((probe or start)[-1]) if probe or start else None


def run_ours(task: str, minutes: float, quick: bool, threads: str) -> dict:
    out, logs = ENV / "ours" / task, ENV / "logs"
    explicit = [] if threads == "auto" else ["--threads", threads]
    if task == "translation":
        runs = ENV / "runs" / time.strftime("translation-%Y%m%d-%H%M%S")
        cmd = [PY, "benchmarks/translation.py", "--minutes", f"{minutes:g}", "--marks", f"{minutes:g}",
               "--runs_dir", str(runs), "--out", str(out), *(["--quick"] if quick else []), "--", *explicit]  # fmt: skip
        info = side(cmd, logs / "translation-ours.log")
        report_path = out / ("translation.quick.json" if quick else "translation.json")
        report = json.loads(report_path.read_text())
        mark = report["marks"][-1]
        return {**info, "figure": mark.get("test_bleu_beam5"), "threads": threads_used(runs / "fit.log"),
                "throughput": f"{report['train_tokens_per_s']:,.0f} training tokens/s (source + target pieces)",
                "detail": {k: mark.get(k) for k in ("checkpoint", "step", "train_time_s", "val_bleu_greedy",
                                                    "test_chrf2_beam5", "bleu_signature")},
                "test_sentences": 200 if quick else 1000, "report": str(report_path)}  # fmt: skip
    if task == "lm":
        cmd = [PY, "benchmarks/char_lm.py", "--minutes", f"{minutes:g}", "--marks", f"{minutes:g}",
               "--runs_dir", str(ENV / "runs"), "--out", str(out), *(["--quick"] if quick else []), *explicit]  # fmt: skip
        info = side(cmd, logs / "lm-ours.log")
        report = json.loads((out / ("char_lm.quick.json" if quick else "char_lm.json")).read_text())
        mark = report["marks"][-1]
        return {**info, "figure": mark["val_loss"], "threads": report["machine"]["threads"],
                "throughput": f"{mark['chars_per_s']:,} chars/s ({report['machine']['precision']})",
                "detail": {k: mark[k] for k in ("minutes", "val_bpc", "optimizer_steps", "epoch", "chars_trained")},
                "report": str(out)}  # fmt: skip
    cmd = [PY, "benchmarks/sentiment.py", "--minutes", f"{minutes:g}", "--out", str(out), "--", *explicit]
    info = side(cmd, logs / "sentiment-ours.log")
    report = json.loads((out / "sentiment.json").read_text())
    return {**info, "figure": report["dev_accuracy"], "threads": threads_used(out / "sentiment.log"),
            "throughput": f"{report['examples_per_s_median']:,} sentences/s, {report['tokens_per_s_median']:,} "
                          "tokens/s (sentencepiece pieces; medians)",
            "detail": {k: report[k] for k in ("checkpoint", "wall_seconds", "val_acc_by_step")},
            "report": str(out / "sentiment.json")}  # fmt: skip


def ensure_wlm_checkout() -> None:
    if (ENV / "word_language_model" / "main.py").exists():
        return
    print(f"[peers] checking out word_language_model from {WLM_MIRROR} into {ENV}", flush=True)
    files = [
        f"word_language_model/{f}" for f in ("main.py", "data.py", "model.py")
    ]  # its data/ is not needed
    ENV.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", f"--git-dir={WLM_MIRROR}", "archive", "HEAD", *files], capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(ENV)], input=archive.stdout, check=True)


def run_peer(task: str, minutes: float, quick: bool, threads: int) -> dict:
    out = ENV / "peer" / f"{task}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    common = ["--minutes", f"{minutes:g}", "--threads", str(threads), "--out", str(out)]
    if task == "translation":  # quick: as translation.py --quick, checkpoints every 10 steps, 200 sentences
        cmd = [
            PY,
            "benchmarks/peer_onmt.py",
            *common,
            *(["--ckpt_every", "10", "--limit", "200"] if quick else []),
        ]
    elif (
        task == "lm"
    ):  # quick: the first 200,000 training characters, so that an epoch (and its val) ends in time
        ensure_wlm_checkout()
        cmd = [PY, "benchmarks/peer_lm.py", *common, *(["--quick_chars", "200000"] if quick else [])]
    else:
        cmd = [PY, "benchmarks/peer_sentiment.py", *common]
    info = side(cmd, ENV / "logs" / f"{task}-peer.log", env={"OMP_NUM_THREADS": str(threads)}, who="peer")
    r = json.loads(out.read_text())
    if task == "translation":
        return {**info, "figure": r["test_bleu_beam5"], "threads": threads, "test_sentences": r["test_sentences"],
                "throughput": f"{r['train_tokens_per_s_median']:,} training tokens/s (source + target pieces; median "
                              "of its report lines; fp32)",
                "detail": {k: r[k] for k in ("checkpoint", "step", "train_time_s", "val_bleu_greedy", "test_chrf2_beam5",
                                             "bleu_signature", "candidates")}}  # fmt: skip
    if task == "lm":
        head = subprocess.run(
            ["git", f"--git-dir={WLM_MIRROR}", "rev-parse", "HEAD"], capture_output=True, text=True
        )
        r["checkout"] = f"pytorch/examples {head.stdout.strip() or '(commit unknown)'} word_language_model"
        return {**info, "figure": r["best_val_loss"], "threads": threads,
                "throughput": f"{r['chars_per_s_median']:,} chars/s (median of its progress lines; fp32)",
                "detail": {k: r[k] for k in ("best_at", "last_epoch_end_minutes", "epochs", "split_check", "command", "checkout")}}  # fmt: skip
    return {**info, "figure": r["best_dev_accuracy"], "threads": threads,
            "throughput": f"{r['train_sentences_per_s']:,} sentences/s, {r['train_tokens_per_s']:,} tokens/s "
                          "(whitespace words; training steps only)",
            "detail": {k: r[k] for k in ("best_at", "steps", "epochs", "setup_s", "dev_words_unseen_in_train")}}  # fmt: skip


# issue 14's bars: the margin ours must beat the peer by (in the better direction), and an absolute floor
MARGIN = {"translation": 2.0, "lm": 0.05, "sentiment": 0.03}
FLOOR = {"sentiment": 0.86}


def verdict(task: str, ours: dict | None, peer: dict | None) -> dict:
    _, unit, better, _ = TASKS[task]
    margin = MARGIN[task]
    bar = f"ours {'>=' if better is max else '<='} peer's {unit} {'+' if better is max else '-'} {margin:g}"
    if task in FLOOR:
        bar += f", and ours >= {FLOOR[task]:g}"
    if not ours or not peer or ours.get("figure") is None or peer.get("figure") is None:
        return {"bar": bar, "difference": None, "met": None}
    diff = ours["figure"] - peer["figure"]
    met = diff >= margin if better is max else -diff >= margin
    if task in FLOOR:
        met = met and ours["figure"] >= FLOOR[task]
    return {"bar": bar, "difference": round(diff, 4), "met": met}


def fmt(figure: float | None, unit: str) -> str:
    return "" if figure is None else f"{figure:.2f}" if unit == "BLEU" else f"{figure:.4f}"


def markdown(results: dict) -> str:
    lines = ["# Peers side by side (issue 14)", "",
             "Each task: our benchmark script and the peer on the same machine, with the same wall-clock budget, "
             "torch threads and data; one after the other, or side by side with each pinned to its own CPUs (the "
             "layout line says which). The load average is shown beside each side's figures.", ""]  # fmt: skip
    for task, e in results["tasks"].items():
        what, unit, _, name = TASKS[task]
        ours, peer, v = e.get("ours") or {}, e.get("peer") or {}, e["verdict"]
        met = {True: "**met**", False: "**not met**", None: "not decided (a side is missing)"}[v["met"]]
        lines += [f"## {task}: {what}, {e['minutes']:g} minutes{' (QUICK: smoke check, not the benchmark)' if e['quick'] else ''}",
                  "", f"CPU: {e['cpu']}. Layout: {e.get('layout', 'one after the other (ours, then the peer)')}.", "", f"| | ours | peer: {name} |", "|---|---|---|"]  # fmt: skip
        rows = [(unit, "figure"), ("training throughput", "throughput"), ("torch threads", "threads"),
                ("load average (1 min) at start / end", None), ("run at (UTC), wall minutes", None)]  # fmt: skip
        for label, key in rows:
            if key == "figure":
                cells = [fmt(s.get("figure"), unit) for s in (ours, peer)]
            elif key:
                cells = [str(s.get(key, "")) for s in (ours, peer)]
            elif label.startswith("load"):
                cells = [f"{s['load_1min_start']} / {s['load_1min_end']}" if s else "" for s in (ours, peer)]
            else:
                cells = [f"{s['started_utc']}, {s['wall_minutes']}" if s else "" for s in (ours, peer)]
            lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
        diff = "" if v["difference"] is None else f"{v['difference']:+.4g} {unit}"
        lines += ["", f"Difference (ours - peer): {diff or 'n/a'}. Bar: {v['bar']}: {met}.", ""]
    return "\n".join(lines)


def run_sides(args: argparse.Namespace, minutes: float, previous: dict) -> tuple[dict | None, dict | None]:
    """Both sides at once (--side_by_side, pinned), or ours then the peer; --only keeps the other's last figure."""
    if PIN:
        with ThreadPoolExecutor(2) as pool:
            mine = pool.submit(run_ours, args.task, minutes, args.quick, args.threads)
            theirs = pool.submit(run_peer, args.task, minutes, args.quick, int(args.threads))
            return mine.result(), theirs.result()
    ours = (
        run_ours(args.task, minutes, args.quick, args.threads)
        if args.only != "peer"
        else previous.get("ours")
    )
    if args.only == "ours":
        return ours, previous.get("peer")
    threads = args.threads if args.threads != "auto" else (ours or {}).get("threads")
    if not threads:
        threads = os.cpu_count()
        print(f"[peers] no thread count from our side: the peer gets {threads} (pass --threads)", flush=True)
    return ours, run_peer(args.task, minutes, args.quick, int(threads))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=list(TASKS))
    parser.add_argument("--minutes", type=float, default=None, help="budget of each side (default 25/15/10)")
    parser.add_argument("--quick", action="store_true", help="about 2 minutes a side; writes peers.quick.*")
    parser.add_argument("--only", choices=["ours", "peer"], default=None, help="run one side only")
    parser.add_argument(
        "--threads", default="auto", help="torch threads for both sides (default: ours' choice)"
    )
    parser.add_argument(
        "--side_by_side",
        action="store_true",
        help="run both sides at once, each pinned to half of this process's CPUs with that many threads "
        "(half the wall time; each side sees the other's load, the same for both)",
    )
    args = parser.parse_args()
    minutes = args.minutes or (2.0 if args.quick else DEFAULT_MINUTES[args.task])
    if args.side_by_side:
        if args.only:
            parser.error("--side_by_side runs both sides; drop --only")
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            parser.error(f"--side_by_side needs at least 2 CPUs; this process may use {len(cpus)}")
        half = len(cpus) // 2
        PIN.update(ours=",".join(map(str, cpus[:half])), peer=",".join(map(str, cpus[half : 2 * half])))
        args.threads = str(half)
    stem = "peers.quick" if args.quick else "peers"
    path = RESULTS / f"{stem}.json"
    results = json.loads(path.read_text()) if path.exists() else {"tasks": {}}
    previous = results["tasks"].get(args.task, {})
    if previous.get("minutes") != minutes:
        previous = {}  # the other side's figure only counts for the same budget
    ours, peer = run_sides(args, minutes, previous)
    results["tasks"][args.task] = {"minutes": minutes, "quick": args.quick, "cpu": cpu(),
                                   "layout": f"side by side, pinned: ours CPUs {PIN['ours']}, peer CPUs {PIN['peer']}"
                                   if PIN else "one after the other (ours, then the peer)", "ours": ours,
                                   "peer": peer, "verdict": verdict(args.task, ours, peer)}  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
