"""Does `fastret encode` keep memory flat as the corpus grows? Samples its RSS while it runs.

Builds a synthetic corpus of --docs documents (NFCorpus documents repeated, with fresh ids) as
.jsonl.gz, runs `python -m fastret encode` on it in a subprocess, samples the process's resident
memory every 0.2 s, and prints RSS against documents done (from the finished shards). Memory is
flat when the peak after the first shards stays where it was, whatever the corpus size.

    .venv/bin/python benchmarks/encode_memory.py --docs 100000 --shard-size 10000 --max-length 32
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fastret.corpus import BUNDLED_NFCORPUS, find_file, iter_corpus


def write_corpus(path: Path, count: int) -> None:
    """`count` NFCorpus documents, cycled, with unique ids."""
    source = list(iter_corpus(find_file(BUNDLED_NFCORPUS, "corpus.jsonl")))
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for i in range(count):
            _, title, text = source[i % len(source)]
            f.write(json.dumps({"_id": f"doc-{i}", "title": title, "text": text}) + "\n")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--shard-size", type=int, default=10_000)
    parser.add_argument("--max-length", type=int, default=32, help="short: memory, not speed, is measured")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--model", default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        corpus, out = Path(tmp) / "corpus.jsonl.gz", Path(tmp) / "store"
        write_corpus(corpus, args.docs)
        command = [sys.executable, "-m", "fastret", "encode", str(corpus), str(out), "--no-progress",
                   "--shard-size", str(args.shard_size), "--max-length", str(args.max_length),
                   "--dtype", args.dtype, "--batch-size", "128"]
        if args.model:
            command += ["--model", args.model]
        start = time.perf_counter()
        process = subprocess.Popen(command)
        samples = []  # (seconds, documents in finished shards, rss MB)
        while process.poll() is None:
            done = len(list(out.glob("shard-*.frt"))) * args.shard_size if out.exists() else 0
            try:
                samples.append((time.perf_counter() - start, min(done, args.docs), rss_mb(process.pid)))
            except FileNotFoundError:
                break
            time.sleep(0.2)
        if process.wait() != 0:
            print(f"fastret encode failed with status {process.returncode}", file=sys.stderr)
            return 1

    print(f"command: {' '.join(command)}")
    print("| documents done | peak RSS so far (MB) |\n|---:|---:|")
    peak, reported = 0.0, set()
    for _, done, rss in samples:
        peak = max(peak, rss)
        if done not in reported:
            reported.add(done)
            print(f"| {done:,} | {peak:,.0f} |")
    after_first = max((rss for _, done, rss in samples if done <= 2 * args.shard_size), default=0.0)
    print(f"| {args.docs:,} (end) | {peak:,.0f} |")
    print(f"peak RSS over the first two shards: {after_first:,.0f} MB; over the whole run: {peak:,.0f} MB "
          f"({peak / after_first:.2f}x); {len(samples)} samples, {samples[-1][0]:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"command": command, "docs": args.docs, "shard_size": args.shard_size,
                                         "peak_first_two_shards_mb": after_first, "peak_mb": peak,
                                         "samples": samples}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
