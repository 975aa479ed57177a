"""Peer for translation: OpenNMT-py 3.0.4 on Multi30k en->de, trained for a wall-clock budget, scored like ours.

    python benchmarks/peer_onmt.py --minutes 25 --threads 2 --out result.json   # run by benchmarks/peers.py

1. Its own venv, ``benchmarks/peers_env/onmt`` (created when missing: torch==2.13.0 first, the CPU build, then
   OpenNMT-py==3.0.4 with torch pinned by a constraint so pip cannot swap it for a CUDA build).
2. A joint 8k sentencepiece BPE model trained on the Multi30k train English + German sentences (character coverage
   1.0, as ours); the train/val/test sources and train/val targets are written as pieces, so OpenNMT needs no
   tokenizer transform; its vocabulary comes from ``onmt_build_vocab`` over those pieces (shared en+de).
3. ``onmt_train``: 2-layer bidirectional LSTM encoder, 2-layer LSTM decoder, hidden 512, embeddings 256, general
   attention, input feeding, dropout 0.3, 4,096-token batches, Adam 1e-3, gradient norm clipped at 5, one loader
   worker (ours: one), no validation during training, a checkpoint every ``--ckpt_every`` steps. It has no time
   limit: it is killed ``--minutes`` after its "Start training loop" line (model building is off the clock, as
   ours' setup). Each checkpoint's time is its file's modification time since that line.
4. Checkpoint choice as ``benchmarks/translation.py``: of the last ``--candidates`` checkpoints within the budget,
   the one with the best greedy BLEU on val (test data never chooses). Test_2016_flickr is translated with beam 5
   (OpenNMT's defaults otherwise: no length penalty, max length 100), the pieces decoded with sentencepiece and
   scored with sacrebleu's defaults (13a, case-sensitive) against the raw references.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the repo root

import sacrebleu  # noqa: E402
import sentencepiece as spm  # noqa: E402

from benchmarks.translation import read_lines  # noqa: E402  the Multi30k files, from the data root ours reads

VENV = ROOT / "benchmarks" / "peers_env" / "onmt"
REPORT = re.compile(r"Step (\d+)/.*?(\d+)/\s*(\d+) tok/s;\s+(\d+) sec")

CONFIG = """\
save_data: {work}/onmt
src_vocab: {work}/vocab.shared
tgt_vocab: {work}/vocab.shared
share_vocab: true
overwrite: true
data:
  corpus_1: {{path_src: {work}/train.en.sp, path_tgt: {work}/train.de.sp}}
encoder_type: brnn
decoder_type: rnn
rnn_type: LSTM
enc_layers: 2
dec_layers: 2
hidden_size: 512
word_vec_size: 256
global_attention: general
input_feed: 1
dropout: [0.3]
batch_type: tokens
batch_size: 4096
optim: adam
learning_rate: 0.001
max_grad_norm: 5
num_workers: 1
train_steps: 1000000
valid_steps: 100000000
save_model: {work}/model
save_checkpoint_steps: {ckpt_every}
keep_checkpoint: {keep}
report_every: {report_every}
seed: 1234
"""


def ensure_venv() -> None:
    if (VENV / "bin" / "onmt_train").exists():
        return
    print(f"[peers] creating {VENV} (torch==2.13.0 CPU, OpenNMT-py==3.0.4): about a minute", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)  # based on the base interpreter
    pin = VENV / "constraints.txt"
    pin.write_text("torch==2.13.0\n")  # OpenNMT-py asks torch>=1.12.1: keep pip from choosing a CUDA build
    pip = [str(VENV / "bin" / "pip"), "install", "-q", "-c", str(pin)]
    subprocess.run([*pip, "torch==2.13.0"], check=True)
    subprocess.run([*pip, "OpenNMT-py==3.0.4"], check=True)


def prepare(work: Path, limit: int | None) -> spm.SentencePieceProcessor:
    """Train the joint BPE model and write the piece files OpenNMT reads."""
    work.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(read_lines("train", "en", None) + read_lines("train", "de", None)), model_prefix=str(work / "joint"),
        vocab_size=8000, model_type="bpe", character_coverage=1.0, minloglevel=2,
    )  # fmt: skip
    sp = spm.SentencePieceProcessor(model_file=str(work / "joint.model"))
    for split, langs, n in [
        ("train", "en de", None),
        ("val", "en", limit),
        ("test_2016_flickr", "en", limit),
    ]:
        for lang in langs.split():
            pieces = sp.encode(read_lines(split, lang, n), out_type=str)
            (work / f"{split}.{lang}.sp").write_text("".join(" ".join(p) + "\n" for p in pieces))
    return sp


def onmt(tool: str, *args: str, threads: int, log: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "OMP_WAIT_POLICY": "PASSIVE",
        "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1",
    }  # fmt: skip  (OpenNMT 3.0.4 pickles its vocab in checkpoints)
    proc = subprocess.run([str(VENV / "bin" / tool), *args], env=env, capture_output=True, text=True)
    log.write_text(proc.stdout + proc.stderr)
    return proc


def train(work: Path, minutes: float, threads: int) -> tuple[float, list[str]]:
    """Run onmt_train until ``minutes`` after its training loop starts; return (start time, log lines)."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "OMP_WAIT_POLICY": "PASSIVE",
        "PYTHONUNBUFFERED": "1",
    }
    cmd = [str(VENV / "bin" / "onmt_train"), "-config", str(work / "train.yaml")]
    print("+", " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    start: list[
        float
    ] = []  # time.time() of the "Start training loop" line: checkpoint mtimes are compared to it

    def read_log() -> None:
        for line in proc.stdout:
            lines.append(line)
            if not start and "Start training loop" in line:
                start.append(time.time())

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    while proc.poll() is None and not (start and time.time() - start[0] >= 60.0 * minutes):
        time.sleep(0.5)
    proc.kill()
    proc.wait()
    reader.join(timeout=5)
    (work / "train.log").write_text("".join(lines))
    if not start:
        sys.exit(f"onmt_train stopped before training (exit {proc.returncode}); see {work / 'train.log'}")
    return start[0], lines


def translate(work: Path, ckpt: Path, src: str, beam: int, threads: int, sp: spm.SentencePieceProcessor):
    out = work / f"{ckpt.stem}.{Path(src).stem}.beam{beam}.sp"
    t = time.perf_counter()
    proc = onmt("onmt_translate", "-model", str(ckpt), "-src", src, "-output", str(out), "-beam_size", str(beam),
                "-batch_size", "64", threads=threads, log=out.with_suffix(".log"))  # fmt: skip
    if proc.returncode != 0:
        return None, 0.0
    pieces = out.read_text().splitlines()
    return [sp.decode(p.split()) for p in pieces], len(pieces) / (time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=25.0, help="wall-clock budget of training")
    parser.add_argument("--threads", type=int, required=True, help="OMP_NUM_THREADS for OpenNMT")
    parser.add_argument(
        "--ckpt_every",
        type=int,
        default=25,
        help="steps between checkpoints: killed at the budget, the peer keeps only what it saved (25 steps: about 2 "
        "minutes at 1 thread here; our side also saves its weights when the budget ends)",
    )
    parser.add_argument("--candidates", type=int, default=3, help="last checkpoints compared on val")
    parser.add_argument("--limit", type=int, default=None, help="val/test sentences (quick: 200)")
    parser.add_argument("--work", default=str(ROOT / "benchmarks" / "peers_env" / "onmt_run"))
    parser.add_argument("--out", required=True, help="JSON file to write")
    args = parser.parse_args()
    ensure_venv()
    work = Path(args.work)
    for old in work.glob("model_step_*.pt"):  # a previous run's checkpoints would pass for this one's
        old.unlink()
    sp = prepare(work, args.limit)
    (work / "train.yaml").write_text(CONFIG.format(work=work, ckpt_every=args.ckpt_every, keep=args.candidates + 2,
                                                   report_every=min(50, args.ckpt_every)))  # fmt: skip
    proc = onmt("onmt_build_vocab", "-config", str(work / "train.yaml"), "-n_sample", "-1", threads=args.threads,
                log=work / "build_vocab.log")  # fmt: skip
    if proc.returncode != 0:
        sys.exit(f"onmt_build_vocab failed; see {work / 'build_vocab.log'}")
    start, lines = train(work, args.minutes, args.threads)
    budget = 60.0 * args.minutes
    ckpts = sorted(work.glob("model_step_*.pt"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    ckpts = [{"path": p, "step": int(p.stem.rsplit("_", 1)[1]), "train_time_s": round(p.stat().st_mtime - start, 1)}
             for p in ckpts if p.stat().st_mtime - start <= budget][-args.candidates:]  # fmt: skip
    val_ref, test_ref = read_lines("val", "de", args.limit), read_lines("test_2016_flickr", "de", args.limit)
    for c in ckpts:
        hyps, _ = translate(work, c["path"], str(work / "val.en.sp"), 1, args.threads, sp)
        c["val_bleu_greedy"] = round(sacrebleu.corpus_bleu(hyps, [val_ref]).score, 2) if hyps else None
        print(
            f"[peer] step {c['step']} at {c['train_time_s'] / 60:.1f} min: val BLEU (greedy) {c['val_bleu_greedy']}"
        )
    usable = [
        c for c in ckpts if c["val_bleu_greedy"] is not None
    ]  # a file cut short by the kill does not load
    if not usable:
        sys.exit(f"no loadable checkpoint within {args.minutes} minutes in {work}; lower --ckpt_every")
    best = max(usable, key=lambda c: c["val_bleu_greedy"])
    hyps, beam_speed = translate(
        work, best["path"], str(work / "test_2016_flickr.en.sp"), 5, args.threads, sp
    )
    if hyps is None:
        sys.exit(
            f"onmt_translate failed on test; see {work}/{best['path'].stem}.test_2016_flickr.en.beam5.log"
        )
    metric = sacrebleu.BLEU()
    bleu = metric.corpus_score(hyps, [test_ref])
    reports = [(int(m.group(1)), int(m.group(2)) + int(m.group(3)), int(m.group(4)))
               for ln in lines if (m := REPORT.search(ln))]  # fmt: skip
    result = {
        "peer": "OpenNMT-py 3.0.4: 2-layer BiLSTM encoder, 2-layer LSTM decoder, hidden 512, emb 256, general "
        "attention, input feeding, dropout 0.3, 4,096-token batches, Adam 1e-3, clip 5, joint 8k BPE (fp32)",
        "threads": args.threads,
        "budget_minutes": args.minutes,
        "test_sentences": len(test_ref),
        "checkpoint": best["path"].name,
        "step": best["step"],
        "train_time_s": best["train_time_s"],
        "val_bleu_greedy": best["val_bleu_greedy"],
        "test_bleu_beam5": round(bleu.score, 2),
        "test_chrf2_beam5": round(sacrebleu.corpus_chrf(hyps, [test_ref]).score, 2),
        "bleu_signature": str(metric.get_signature()),
        "beam5_sentences_per_s": round(beam_speed, 1),
        "steps_reported": reports[-1][0] if reports else None,
        # OpenNMT's report lines: source + target tokens/s (padding excluded) over each report window
        "train_tokens_per_s_median": statistics.median(r[1] for r in reports[1:] or reports)
        if reports
        else None,
        "candidates": [{k: v for k, v in c.items() if k != "path"} for c in ckpts],
        "work": str(work),
    }
    Path(args.out).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "candidates"}), flush=True)


if __name__ == "__main__":
    main()
