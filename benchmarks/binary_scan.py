"""How fast the binary first stage's kernel scans sign bits, per query bits, on this machine's SIMD
paths: a batch of queries over rows whose bits stay in the caches tile after tile, so the kernel's
arithmetic binds, not memory.

    .venv/bin/python benchmarks/binary_scan.py --json benchmarks/results/DATE-cpu-binary-scan.json

N x dim random int8 rows (default 2M x 384, in memory) with their sign bits, --queries random
queries at oversample 1 (k = 10: ten candidates, so re-ranking costs nothing), the best of
--repeats batches, for query bits 1, 2, 3 and 4 and each SIMD path this CPU runs
(fastret.available_simd_paths; --simd-paths to choose). The figure is rows x queries scored per
second by the whole first stage (kernel, candidate offers, threads), and for one query the same
rows scanned once (what a single query pays, the bits read from memory).

To compare two builds (a kernel before and after a change), run this file with each build's
interpreter and the same --json: each run is kept under its --label.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

import fastret
from fastret.search import core, rules
from harness import batch_seconds, cpu_info

QUERY_BITS = (1, 2, 3, 4)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2_000_000, help="rows (default 2M)")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=40, help="queries per batch (default 40)")
    parser.add_argument("--repeats", type=int, default=7, help="batches timed per setting (the best is kept)")
    parser.add_argument("--simd-paths", default=None, help="comma-separated paths (default: every one this CPU runs)")
    parser.add_argument("--label", default=None, help="name of this run in the JSON (default: the fastret version)")
    parser.add_argument("--json", type=Path, default=None, help="add this run to the JSON file (others kept)")
    return parser.parse_args()


def best_seconds(search, repeats: int) -> float:
    """The least seconds of `repeats` calls of search(), after one to warm up (caches, the kernels' query tables)."""
    search()
    return min(batch_seconds(lambda _: search(), None) for _ in range(repeats))


def main() -> int:
    args = parse_args()
    rng = np.random.default_rng(20261207)
    codes = rng.integers(-127, 128, (args.n, args.dim), dtype=np.int8)
    index = fastret.Index(args.dim)
    index.add((codes, np.ones(args.n, np.float32)))
    segments = list(index.segments)
    for segment in segments:
        segment.sign_bits()  # made once, outside the timings
    q_codes, q_scales, _ = rules.query_codes(rng.standard_normal((args.queries, args.dim)).astype(np.float32), args.dim)
    paths = args.simd_paths.split(",") if args.simd_paths else [p for p in fastret.available_simd_paths()
                                                                 if not p.endswith("-emulated")]
    run = {"command": shlex.join([sys.executable, *sys.argv]), "machine": cpu_info(), "fastret": fastret.__file__,
           "threads": fastret.get_num_threads(), "n": args.n, "dim": args.dim, "queries": args.queries, "paths": {}}
    for path in paths:
        fastret.set_simd_path(path)
        rates = {}
        for bits in QUERY_BITS:
            batch = best_seconds(lambda: core.binary_candidates(segments, q_codes, q_scales, 10, oversample=1,
                                                                query_bits=bits), args.repeats)
            single = best_seconds(lambda: core.binary_candidates(segments, q_codes[:1], q_scales[:1], 10,
                                                                 oversample=1, query_bits=bits), args.repeats)
            rate = args.n * args.queries / batch
            rates[str(bits)] = {"batch_rows_queries_per_s": rate, "single_query_ms": single * 1e3}
            print(f"{path:12s} {bits}-bit queries: batch {rate / 1e9:.2f} G rows x queries/s, "
                  f"one query {single * 1e3:.1f} ms", flush=True)
        run["paths"][path] = rates
    if args.json:
        report = json.loads(args.json.read_text()) if args.json.exists() else {"runs": {}}
        report["runs"][args.label or fastret.__file__] = run
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
