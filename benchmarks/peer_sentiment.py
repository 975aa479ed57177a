"""Peer for SST-2: the plain PyTorch loop of ``sentiment_throughput.py`` trained for a wall-clock budget.

    python benchmarks/peer_sentiment.py --minutes 10 --threads 1 --out result.json   # run by benchmarks/peers.py

The issue's reference recipe as that file defines it (whitespace vocabulary from train, embedding 128, BiLSTM 256,
max-pool, Adam 1e-3, batch 64, length-sorted padded batches in a random order, reshuffled each epoch). Dev accuracy
is measured every ``--eval_every`` steps and when the budget ends, on dev batches built the same way (a dev word that
train never saw reads as id 0, the padding id: the recipe has no unknown-word id). The clock starts after the
vocabulary and batches are built (a few seconds) and keeps running during the dev evaluations; the figure is the
best dev accuracy seen. Writes one JSON object to ``--out``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as pipeline.fit sets it: both sides wait alike

import argparse
import json
import time
from pathlib import Path

import torch
from sentiment_throughput import Batch, Reference, build_vocab, make_batches, read_split, train_step


@torch.no_grad()
def accuracy(model: torch.nn.Module, batches: list[Batch]) -> float:
    model.eval()
    correct = sum(int((model(x).argmax(1) == y).sum()) for x, y, _ in batches)
    model.train()
    return correct / sum(len(y) for _, y, _ in batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget of training")
    parser.add_argument("--threads", type=int, required=True, help="torch threads")
    parser.add_argument("--eval_every", type=int, default=200, help="steps between dev evaluations")
    parser.add_argument("--seed", type=int, default=0, help="torch seed: initial weights and batch order")
    parser.add_argument("--out", required=True, help="JSON file to write")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    setup = time.perf_counter()
    train = read_split("train")
    vocab = build_vocab(train)
    batches, dev = make_batches(train, vocab), make_batches(read_split("dev"), vocab)
    torch.manual_seed(args.seed)
    model = Reference(len(vocab) + 1)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    start = time.perf_counter()
    setup_s, budget = start - setup, 60.0 * args.minutes
    steps = epochs = tokens = sentences = 0
    train_s, curve = 0.0, []

    def evaluate() -> None:
        curve.append({"step": steps, "minutes": round((time.perf_counter() - start) / 60, 2),
                      "epoch": round(epochs + done / len(batches), 2), "dev_acc": round(accuracy(model, dev), 4)})  # fmt: skip
        print(f"[peer] {json.dumps(curve[-1])}", flush=True)

    done = 0
    while time.perf_counter() - start < budget:
        done = 0  # batches of this epoch trained
        for k in torch.randperm(len(batches)).tolist():
            t, done = time.perf_counter(), done + 1
            train_step(model, opt, batches[k])
            train_s += time.perf_counter() - t
            steps, tokens, sentences = steps + 1, tokens + batches[k][2], sentences + len(batches[k][1])
            if steps % args.eval_every == 0:
                evaluate()
            if time.perf_counter() - start >= budget:
                break
        else:
            epochs += 1
    if not curve or curve[-1]["step"] != steps:
        evaluate()
    best = max(curve, key=lambda c: c["dev_acc"])
    result = {
        "peer": "plain PyTorch loop (benchmarks/sentiment_throughput.py Reference: whitespace vocab, emb 128, "
        "BiLSTM 256, max-pool, Adam 1e-3, batch 64)",
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "budget_minutes": args.minutes,
        "seed": args.seed,
        "setup_s": round(setup_s, 1),
        "best_dev_accuracy": best["dev_acc"],
        "best_at": best,
        "steps": steps,
        "epochs": round(epochs + done / len(batches), 2),
        "train_sentences_per_s": round(sentences / train_s, 1),
        "train_tokens_per_s": round(tokens / train_s, 1),
        "dev_curve": curve,
        "dev_words_unseen_in_train": sum(w not in vocab for ws, _ in read_split("dev") for w in ws),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
