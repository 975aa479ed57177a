"""Peer for the char LM: pytorch/examples ``word_language_model`` run unchanged, one character per token.

    python benchmarks/peer_lm.py --minutes 15 --threads 2 --out result.json   # run by benchmarks/peers.py

1. Splits Tiny Shakespeare exactly as ours does (``LMStreamData.texts()``: first 90% of the characters train, the last
   10% validate) and writes ``train.txt`` / ``valid.txt`` / ``test.txt`` (test = valid: main.py only scores test when
   it finishes, which it does not here) with the characters space-separated, a real space written as ``▁``. Its
   ``data.Corpus`` closes every line with ``<eos>``, which stands for the newline: a token per character, newlines
   included; a split that ends inside a line gets one ``<eos>`` more than it has newlines (checked and reported).
2. Runs its ``main.py`` from the checkout in ``benchmarks/peers_env/word_language_model`` (LSTM 2x512, emsize 128,
   bptt 128, batch 32, SGD lr 20, clip 0.25; its other defaults: dropout 0.2, untied, seed 1111, 40 epochs (never
   reached), lr / 4 when val does not improve) with OMP_NUM_THREADS set, and kills it ``--minutes`` after training
   started. Training start = the first progress line's time less the ms/batch it reports over its batches, so the
   peer's corpus loading is not on its clock (ours: setup is not on the clock either).
3. Its figure is the best ``valid loss`` printed at an epoch end within the budget (nats per token = per character;
   taken as ln(valid ppl), which it prints to 2 decimals: about 4 significant digits of the loss). Chars/s: the
   median of its ``ms/batch`` progress lines (32 x 128 characters a batch).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CHECKOUT = ROOT / "benchmarks" / "peers_env" / "word_language_model"
SPACE = "\u2581"  # a real space, made visible: the peer splits lines on whitespace
BATCH, BPTT = 32, 128
ARGS = ["--emsize", "128", "--nhid", "512", "--nlayers", "2", "--bptt", str(BPTT), "--batch_size", str(BATCH),
        "--lr", "20", "--clip", "0.25", "--log-interval", "10"]  # fmt: skip
PROGRESS = re.compile(r"\|\s+(\d+)/\s*(\d+) batches .*ms/batch\s+([\d.]+)")
EPOCH_END = re.compile(
    r"end of epoch\s+(\d+) \| time:\s+([\d.]+)s \| valid loss\s+([\d.]+) \| valid ppl\s+([\d.]+)"
)


def write_split(text: str, path: Path) -> int:
    """Write ``text`` one character per token; return the tokens the peer's reader will make of it."""
    odd = sorted({c for c in text if c.isspace() and c not in " \n"})
    if odd or SPACE in text:
        sys.exit(f"{path.name}: the text holds {odd or [SPACE]}, which this one-character-per-token layout cannot "
                 "represent; map them in peer_lm.write_split.")  # fmt: skip
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()  # the last newline closes the last line; no empty line after it
    path.write_text("".join(" ".join(line.replace(" ", SPACE)) + "\n" for line in lines), encoding="utf-8")
    return sum(len(line) + 1 for line in lines)  # + its <eos> per line


def prepare(folder: Path, quick_chars: int | None) -> dict:
    from pipeline.data.lm_stream import LMStreamData
    from pipeline.data.source import Source

    texts = LMStreamData(corpus=Source(path="tinyshakespeare/input.txt"), val_fraction=0.1).texts()
    train = texts["train"][:quick_chars] if quick_chars else texts["train"]
    folder.mkdir(parents=True, exist_ok=True)
    counts = {
        "train": write_split(train, folder / "train.txt"),
        "valid": write_split(texts["val"], folder / "valid.txt"),
    }
    (folder / "test.txt").write_text((folder / "valid.txt").read_text(encoding="utf-8"), encoding="utf-8")
    sys.path.insert(0, str(CHECKOUT))  # the peer's own reader, to check what it makes of the files
    from data import Corpus  # noqa: I001  (word_language_model/data.py)

    corpus = Corpus(str(folder))
    return {
        "our_chars": {"train": len(train), "val": len(texts["val"])},
        "expected_tokens": counts,
        "peer_tokens": {"train": len(corpus.train), "valid": len(corpus.valid)},
        "peer_vocabulary": len(corpus.dictionary),
        "quick_train_chars": quick_chars,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=15.0, help="wall-clock budget of training")
    parser.add_argument("--threads", type=int, required=True, help="OMP_NUM_THREADS for the peer")
    parser.add_argument(
        "--quick_chars", type=int, default=None, help="train on only the first this many characters"
    )
    parser.add_argument("--work", default=str(ROOT / "benchmarks" / "peers_env" / "lm_run"))
    parser.add_argument("--out", required=True, help="JSON file to write")
    args = parser.parse_args()
    work = Path(args.work)
    if not (CHECKOUT / "main.py").exists():
        sys.exit(f"{CHECKOUT}/main.py is missing; benchmarks/peers.py checks it out (or see its --help).")
    check = prepare(work / "data", args.quick_chars)
    if check["peer_tokens"] != check["expected_tokens"]:
        sys.exit(f"the peer read {check['peer_tokens']} tokens, expected {check['expected_tokens']}")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "OMP_WAIT_POLICY": "PASSIVE",
        "PYTHONUNBUFFERED": "1",
    }
    cmd = [sys.executable, "main.py", "--data", str(work / "data"), "--save", str(work / "model.pt"), *ARGS]
    print("+", " ".join(cmd), flush=True)
    proc = subprocess.Popen(
        cmd, cwd=CHECKOUT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[tuple[float, str]] = []  # (perf_counter when read, line)
    reader = threading.Thread(
        target=lambda: lines.extend((time.perf_counter(), ln) for ln in proc.stdout), daemon=True
    )
    reader.start()
    budget, start = 60.0 * args.minutes, None
    while proc.poll() is None:
        time.sleep(0.5)
        if start is None:
            first = next(((t, m) for t, ln in list(lines) if (m := PROGRESS.search(ln))), None)
            if first:  # its progress line times the batches since train() began
                start = first[0] - int(first[1].group(1)) * float(first[1].group(3)) / 1000
        if start is not None and time.perf_counter() - start >= budget:
            proc.kill()
    proc.wait()
    reader.join(timeout=5)
    (work / "main.log").write_text("".join(ln for _, ln in lines))
    if start is None:
        sys.exit(
            f"the peer stopped before its first progress line (exit {proc.returncode}); see {work / 'main.log'}"
        )
    epochs, speeds = [], []
    for t, ln in lines:
        if m := PROGRESS.search(ln):
            speeds.append(BATCH * BPTT * 1000 / float(m.group(3)))
        if (m := EPOCH_END.search(ln)) and t - start <= budget:
            epochs.append({"epoch": int(m.group(1)), "minutes": round((t - start) / 60, 2),
                           "val_loss_printed": float(m.group(3)), "val_loss": round(math.log(float(m.group(4))), 4)})  # fmt: skip
    best = min(epochs, key=lambda e: e["val_loss"]) if epochs else None
    result = {
        "peer": "pytorch/examples word_language_model, character level (LSTM 2x512, emsize 128, bptt 128, batch 32, "
        "SGD lr 20, clip 0.25, dropout 0.2 default; fp32)",
        "command": " ".join(cmd[1:]),
        "threads": args.threads,
        "budget_minutes": args.minutes,
        "best_val_loss": best["val_loss"] if best else None,
        "best_at": best,
        "last_epoch_end_minutes": epochs[-1]["minutes"] if epochs else None,
        "epochs": epochs,
        "chars_per_s_median": round(statistics.median(speeds)) if speeds else None,
        "split_check": check,
        "log": str(work / "main.log"),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "epochs"}), flush=True)


if __name__ == "__main__":
    main()
