"""The data path at scale: resume cost, bytes each reader reads, loader tokens/s, loader memory.

    python benchmarks/scale.py                     # 1x and 10x SST-2 (minutes on a 2-core machine)
    python benchmarks/scale.py --scales 1,10,100   # and 100x (6.7M rows, ~380 MB; an epoch pass takes minutes)

Synthetic corpora are built from the SST-2 training sentences (words shuffled within each sentence, labels kept) under
``--corpora`` (default ``benchmarks/corpora``, git-ignored, never committed): ``sst2_<s>x.tsv`` for each scale, and
``sst2_20x.tsv`` (1.35M rows) for the split measurement. Every figure is measured in a fresh process:

- ``pass``: one epoch of the training loader (SentimentData, the sst2_bilstm data settings: 8k unigram, batch 64,
  buffer 10k, no worker): time to the first batch, the data state at 5%, 50% and 95% of the epoch, peak RSS;
- ``resume``: a fresh loader given one of those states: time to its first batch, and the records it read first;
- ``split``: node n of N reads its shards of the 20x file to the end; bytes read by all N nodes / file size;
- ``rate``: tokens/s of the loader with 0, 1 and 2 workers over the 1x corpus, next to sentencepiece's own
  list-encode rate on the same sentences.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, ROOT, cpu_name, machine, write  # noqa: E402

SST2 = Path(os.environ.get("PIPELINE_DATA", ROOT / ".." / "shared" / "data")) / "sst2" / "train.tsv"
ROWS = 67_349  # SST-2 training sentences


def make_corpus(path: Path, scale: int) -> Path:
    """``scale`` copies of the SST-2 training rows, words shuffled per copy (seeded), one file."""
    if path.exists():
        return path
    rows = [line.split("\t") for line in SST2.read_text().splitlines()[1:]]
    rng = random.Random(scale)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as fh:
        fh.write("sentence\tlabel\n")
        for _ in range(scale):
            out = []
            for sentence, label in rows:
                words = sentence.split()
                rng.shuffle(words)
                out.append(f"{' '.join(words) or sentence}\t{label}\n")
            fh.writelines(out)
    tmp.rename(path)
    return path


def data_module(path: Path, workers: int = 0):
    from pipeline.data.sentiment import SentimentData
    from pipeline.data.source import Source
    from pipeline.data.tokenizer import Tokenizer

    dm = SentimentData(
        train=Source(path=str(SST2)), tokenizer=Tokenizer(vocab_size=8000), batch_size=64, buffer_size=10_000
    )
    dm.prepare_tokenizer()  # trained once on SST-2 (cached), used for every corpus
    dm.train_source, dm.num_workers = type(dm.train_source)(path=str(path)), workers
    return dm


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def job_pass(path: Path, out: Path) -> dict:
    start = time.perf_counter()
    loader = data_module(path).train_dataloader()
    marks = {}
    first = None
    n = 0
    expected = sum(1 for _ in open(path, "rb")) // 64  # about: rows / batch size
    at = {int(expected * f): f for f in (0.05, 0.5, 0.95)}
    for batch in loader:
        n += 1
        if first is None:
            first = time.perf_counter() - start
        if n in at:
            marks[str(at[n])] = {"consumed": n, "state": batch["data_state"]}
    out.write_text(json.dumps(marks))
    return {
        "batches": n,
        "first_batch_s": first,
        "epoch_s": time.perf_counter() - start,
        "peak_rss_mb": peak_rss_mb(),
    }


def job_resume(path: Path, marks: Path, frac: str) -> dict:
    from pipeline.data.reader import ShardReader

    mark = json.loads(marks.read_text())[frac]
    start = time.perf_counter()
    loader = data_module(path).train_dataloader()
    loader.resume_at = (0, mark["consumed"])
    loader.resume_data = {"layout": [1, 1], "ranks": [mark["state"]]}
    next(iter(loader))
    return {"first_batch_s": time.perf_counter() - start, "records_read": ShardReader.records_read}


def make_shards(path: Path, folder: Path, count: int = 16) -> list[Path]:
    """The same rows as ``path`` in ``count`` files (each with the header), for the multi-file split."""
    files = [folder / f"part-{i:02d}.tsv" for i in range(count)]
    if all(f.exists() for f in files):
        return files
    folder.mkdir(parents=True, exist_ok=True)
    lines = path.read_text().splitlines(keepends=True)
    header, rows = lines[0], lines[1:]
    step = -(-len(rows) // count)
    for i, f in enumerate(files):
        f.write_text(header + "".join(rows[i * step : (i + 1) * step]))
    return files


def job_split(path: Path, nodes: int) -> dict:
    from pipeline.data.shards import CountingFile
    from pipeline.data.source import Source
    from pipeline.data.stream import canonical_work

    files = sorted(path.glob("*.tsv")) if path.is_dir() else [path]
    reader = Source(path=[str(f) for f in files]).reader(["sentence", "label"])
    shards = reader.plan(nodes)
    per_node = []
    for node in range(nodes):
        before = CountingFile.total
        for shard, _, _ in canonical_work(len(shards), 0, 0, node, nodes, True):
            for _ in reader.records(shards[shard], None):
                pass
        per_node.append(CountingFile.total - before)
    size = sum(f.stat().st_size for f in files)
    return {
        "files": len(files),
        "shards": len(shards),
        "file_bytes": size,
        "bytes_read": sum(per_node),
        "ratio": sum(per_node) / size,
        "max_node_share": max(per_node) * nodes / size,
    }


def job_rate(path: Path, workers: int, batches: int) -> dict:
    loader = data_module(path, workers).train_dataloader()
    it = iter(loader)
    next(it)  # workers started, first buffer filled
    tokens, n, start = 0, 0, time.perf_counter()
    for batch in it:  # up to ``batches`` or the end of the epoch
        tokens, n = tokens + batch["n_tokens"], n + 1
        if n == batches:
            break
    return {"tokens_per_s": tokens / (time.perf_counter() - start), "batches": n}


def job_tokenizer(path: Path) -> dict:
    texts = [line.split("\t")[0] for line in open(path).read().splitlines()[1:]]
    sp = data_module(path).tokenizer
    start = time.perf_counter()
    tokens = sum(len(ids) for ids in sp.encode_many(texts))
    return {"tokens_per_s": tokens / (time.perf_counter() - start)}


def sub(job: str, *args: str) -> dict:
    """Run one job in a fresh process (its own peak RSS, no warm state but the page cache)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, __file__, "--job", job, *args], capture_output=True, text=True, env=env, cwd=ROOT
    )
    if proc.returncode != 0:
        sys.exit(f"job {job} {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", default="1,10", help="corpus sizes in SST-2 training sets, e.g. 1,10,100")
    ap.add_argument("--corpora", default=str(ROOT / "benchmarks" / "corpora"))  # git-ignored
    ap.add_argument(
        "--split-scale", type=int, default=20, help="the one file the split is measured on (20: 1.35M rows)"
    )
    ap.add_argument(
        "--rate-batches", type=int, default=1000, help="batches timed per worker count (1x: ~1050)"
    )
    ap.add_argument(
        "--parts",
        default="scales,split,rate",
        help="what to measure now; the others are kept from scale.json",
    )
    ap.add_argument("--job", help=argparse.SUPPRESS)
    ap.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.job:
        fn = {
            "pass": job_pass,
            "resume": job_resume,
            "split": job_split,
            "rate": job_rate,
            "tokenizer": job_tokenizer,
        }
        args = [Path(x) if "/" in x else (int(x) if x.isdigit() else x) for x in a.args]
        print(json.dumps(fn[a.job](*args)))
        return
    corpora = Path(a.corpora).resolve()
    corpora.mkdir(parents=True, exist_ok=True)
    parts = set(a.parts.split(","))
    old = RESULTS / "scale.json"
    result: dict = (
        json.loads(old.read_text()) if old.exists() and parts != {"scales", "split", "rate"} else {}
    )
    result.setdefault("runs", {})
    if "scales" in parts:
        result["scales"] = {}
        for s in (int(x) for x in a.scales.split(",")):
            path = make_corpus(corpora / f"sst2_{s}x.tsv", s)
            marks = corpora / f"sst2_{s}x.marks.json"
            run = {"rows": ROWS * s, "pass": sub("pass", str(path), str(marks))}
            run["resume"] = {f: sub("resume", str(path), str(marks), f) for f in ("0.05", "0.5", "0.95")}
            result["scales"][str(s)] = run
            write("scale", result, table(result))  # kept if a later part fails
    if "split" in parts:
        one_file = make_corpus(corpora / f"sst2_{a.split_scale}x.tsv", a.split_scale)
        make_shards(one_file, corpora / f"sst2_{a.split_scale}x_16")
        result["split"] = {
            "rows": ROWS * a.split_scale,
            "one file": {n: sub("split", str(one_file), str(n)) for n in (1, 4, 16)},
            "16 files": {
                n: sub("split", str(corpora / f"sst2_{a.split_scale}x_16"), str(n)) for n in (1, 4, 16)
            },
        }
    if "rate" in parts:
        one = make_corpus(corpora / "sst2_1x.tsv", 1)
        result["rate"] = {str(w): sub("rate", str(one), str(w), str(a.rate_batches)) for w in (0, 1, 2)}
        result["tokenizer_list_encode"] = sub("tokenizer", str(one))
    stamp = {**machine(), "cpu": f"{cpu_name()}, {os.cpu_count()} cores"}
    result["runs"].update({part: stamp for part in parts})  # when and under what load each part was measured
    write("scale", result, table(result))


def table(result: dict) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for s, run in result.get("scales", {}).items():
        rows.append(
            (
                f"{s}x ({run['rows']:,} rows): first batch, fresh start",
                f"{run['pass']['first_batch_s']:.2f} s",
            )
        )
        for f, r in run["resume"].items():
            rows.append(
                (
                    f"{s}x: first batch after a resume at {float(f):.0%} of the epoch",
                    f"{r['first_batch_s']:.2f} s ({r['records_read']:,} records read)",
                )
            )
        rows.append((f"{s}x: peak RSS over one epoch (no worker)", f"{run['pass']['peak_rss_mb']:.0f} MB"))
    split = result.get("split", {})
    for layout in ("one file", "16 files"):
        for n, r in split.get(layout, {}).items():
            rows.append(
                (
                    f"{n} nodes over {layout} ({split['rows']:,} rows, {r['shards']} shards): bytes read / bytes",
                    f"{r['ratio']:.4f}x (largest node: {r['max_node_share']:.2f}x its share)",
                )
            )
    for w, r in result.get("rate", {}).items():
        rows.append((f"loader tokens/s, {w} workers (SST-2 sentences)", f"{r['tokens_per_s']:,.0f}"))
    if "tokenizer_list_encode" in result:
        rows.append(
            (
                "sentencepiece list-encode alone, tokens/s",
                f"{result['tokenizer_list_encode']['tokens_per_s']:,.0f}",
            )
        )
    for part, m in result.get("runs", {}).items():
        rows.append(
            (f"machine ({part})", f"{m['cpu']}, load average {m['load_average_1_5_15min']} (shared machine)")
        )
    return rows


if __name__ == "__main__":
    main()
