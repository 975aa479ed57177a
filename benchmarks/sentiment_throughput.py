"""SST-2 training throughput: the pipeline against a plain PyTorch loop of the same model, back to back.

    python benchmarks/sentiment_throughput.py [--seconds 60]

The plain loop is the issue's reference recipe (whitespace vocabulary, embedding 128, BiLSTM 256, max-pool, Adam 1e-3,
batch 64, length-sorted batches, padded, no packing). The pipeline runs ``configs/sentiment/sst2_bilstm.yaml`` with the
same sizes through ``pipeline.fit``. Both run on the same machine one after the other, so the ratio of their
sentences/s is meaningful even when the machine is busy. Writes benchmarks/results/sentiment_throughput.{json,md}.
"""

from __future__ import annotations

import os

# the same OpenMP setting as `python -m pipeline.fit` (pipeline/__init__.py), so that both sides wait alike
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import ROOT, column, csv_metrics, machine, run, run_dir, write
from torch import nn


def data_root() -> Path:
    return Path(os.environ.get("PIPELINE_DATA", ROOT.parent / "shared" / "data"))


class Reference(nn.Module):
    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 128, padding_idx=0)
        self.rnn = nn.LSTM(128, 256, batch_first=True, bidirectional=True)
        self.head = nn.Linear(512, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embed(x))  # (B, T, 512)
        return self.head(out.max(1).values)


Batch = tuple[
    torch.Tensor, torch.Tensor, int
]  # (B, T) word ids padded with 0, (B,) labels, words in the batch


def read_split(name: str) -> list[tuple[list[str], int]]:
    """``data/sst2/<name>.tsv`` as (whitespace words, label) pairs."""
    rows = (data_root() / "sst2" / f"{name}.tsv").read_text().splitlines()[1:]
    return [(s.split(), int(y)) for s, y in (r.rsplit("\t", 1) for r in rows)]


def build_vocab(data: list[tuple[list[str], int]]) -> dict[str, int]:
    """Word -> id from 1 (0 pads; a word training never saw is read as 0 too)."""
    return {w: i + 1 for i, w in enumerate(sorted({w for ws, _ in data for w in ws}))}


def make_batches(data: list[tuple[list[str], int]], vocab: dict[str, int], size: int = 64) -> list[Batch]:
    """Length-sorted, padded batches of ``size`` sentences, in length order."""
    data = sorted(data, key=lambda d: len(d[0]))
    batches = []
    for i in range(0, len(data), size):
        chunk = data[i : i + size]
        x = torch.zeros(len(chunk), max(len(ws) for ws, _ in chunk) or 1, dtype=torch.long)
        for j, (ws, _) in enumerate(chunk):
            x[j, : len(ws)] = torch.tensor([vocab.get(w, 0) for w in ws], dtype=torch.long)
        batches.append((x, torch.tensor([y for _, y in chunk]), sum(len(ws) for ws, _ in chunk)))
    return batches


def train_step(model: nn.Module, opt: torch.optim.Optimizer, batch: Batch) -> None:
    x, y, _ = batch
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()


def reference_loop(seconds: float) -> dict:
    data = read_split("train")
    vocab = build_vocab(data)
    batches = make_batches(data, vocab)
    torch.manual_seed(0)
    model = Reference(len(vocab) + 1)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    order = torch.randperm(len(batches)).tolist()
    start, tokens, sentences = time.perf_counter(), 0, 0
    for k in order:
        train_step(model, opt, batches[k])
        _, y, n = batches[k]
        tokens, sentences = tokens + n, sentences + len(y)
        if time.perf_counter() - start > seconds:
            break
    wall = time.perf_counter() - start
    return {
        "tokens_per_s": round(tokens / wall, 1),
        "sentences_per_s": round(sentences / wall, 1),
        "seconds": round(wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="training time of each side")
    parser.add_argument(
        "overrides", nargs="*", help="extra pipeline.fit overrides, e.g. --model.init_args...=x"
    )
    args = parser.parse_args()
    ref = reference_loop(args.seconds)
    scratch = Path(tempfile.mkdtemp(prefix="bench-sst2-speed-"))
    fit, _ = run(
        "pipeline.fit", "--config", "configs/sentiment/sst2_bilstm.yaml", "--runs_dir", str(scratch / "runs"),
        "--trainer.max_time", f"00:00:00:{int(args.seconds):02d}", "--trainer.val_check_interval", "100000",
        "--model.init_args.network.init_args.dropout", "0.0",
        "--trainer.logger", "pytorch_lightning.loggers.CSVLogger", "--trainer.log_every_n_steps", "5",
        *args.overrides,
        env={"PIPELINE_CACHE": str(scratch / "cache"), "WANDB_MODE": "disabled"},
    )  # fmt: skip
    rows = csv_metrics(run_dir(fit))
    ours = {
        "tokens_per_s": round(statistics.median(column(rows, "train/tokens_per_s")), 1),
        "sentences_per_s": round(statistics.median(column(rows, "train/examples_per_s")), 1),
    }
    ratio = ours["sentences_per_s"] / ref["sentences_per_s"]
    token_ratio = ours["tokens_per_s"] / ref["tokens_per_s"]  # pieces vs words: ~10.8 vs ~9.4 per sentence
    result = {"reference_loop": ref, "pipeline": ours, "overrides": args.overrides, "pipeline_over_reference_sentences_per_s": round(ratio, 3),
              "pipeline_over_reference_tokens_per_s": round(token_ratio, 3), **machine()}  # fmt: skip
    write("sentiment_throughput", result, [
        ("reference loop sentences/s (whitespace tokens/s)", f"{ref['sentences_per_s']} ({ref['tokens_per_s']})"),
        ("pipeline sentences/s (sentencepiece tokens/s)", f"{ours['sentences_per_s']} ({ours['tokens_per_s']})"),
        ("pipeline / reference, sentences/s", f"{ratio:.3f}"),
        ("pipeline / reference, tokens/s (its own tokens each)", f"{token_ratio:.3f}"),
        ("load average (1, 5, 15 min)", str(result["load_average_1_5_15min"])),
    ])  # fmt: skip


if __name__ == "__main__":
    main()
