"""Where one binary query's time goes on a mapped store, at each thread count, and what speed-up
over exact int8 the machine leaves room for.

    .venv/bin/python benchmarks/binary_floor.py                          # 10M x 384, 1 and all threads
    .venv/bin/python benchmarks/binary_floor.py --threads 1,2,4,8,16 --json results/DATE-binary-floor.json

The store and queries of benchmarks/binary_search.py (written there, or reused). For each thread
count, --rounds rounds take three single-query searches in turns (so that a noisy machine's drift
falls on all three), --singles queries each:
- exact int8 (`Index.search`);
- the binary stage at oversample 1: the scan of the bits (at the default 4-bit queries) and k
  re-reads, about the least a binary query costs: "scan";
- the binary stage at its defaults (oversample "auto": k x oversample candidates kept, merged and
  re-read exactly).
Each figure is the median over the rounds of each round's median. From them, per thread count:
- the candidates' share, defaults - scan: keeping, merging and re-reading them (part of it is the
  scan's extra offers to a deeper reservoir), per candidate in microseconds of wall time;
- the speed-up at the defaults (exact / defaults), and the most any oversample could give here
  (exact / scan: the candidates for free);
- how many candidates a --target speed-up leaves room for: (exact / target - scan) / the cost of
  one, against the defaults' count (none when the scan alone is slower than exact / target).
The check: the defaults reach --target at the largest thread count (the issue's 5x at 10M).
Exact int8 runs first, so every search finds the codes in the page cache. Writes every number, the
machine and the command as JSON (--json).
"""

from __future__ import annotations

import os

# Before numpy / fastret load OpenMP (as binary_search.py): idle threads sleep instead of spinning.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import fastret  # noqa: E402
from binary_search import make_queries  # noqa: E402
from filtered_search import add_store_arguments, store_dir, write_store  # noqa: E402
from fastret.search import binary  # noqa: E402
from fastret.storage import store  # noqa: E402
from harness import cpu_info, finish, median_latency, verdict  # noqa: E402

SEARCHES = ("exact int8", "scan", "defaults")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_store_arguments(parser)
    parser.add_argument("--threads", default=None,
                        help="comma-separated thread counts (default: 1 and every core this process may use)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds taking the three searches in turns")
    parser.add_argument("--singles", type=int, default=15, help="single queries a search times in a round")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--target", type=float, default=5.0, help="the speed-up over exact int8 asked (default 5)")
    parser.add_argument("--simd-path", default=None,
                        help="run fastret on this SIMD path (fastret.available_simd_paths(); default: the best)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    args.dir = store_dir(args)
    cores = len(os.sched_getaffinity(0))
    try:
        args.threads = [int(t) for t in args.threads.split(",")] if args.threads else sorted({1, cores})
    except ValueError:
        parser.error(f"--threads must be comma-separated integers, got {args.threads!r}")
    if min(args.threads) < 1:
        parser.error(f"--threads must be >= 1 each, got {args.threads}")
    if args.rounds < 1 or args.singles < 1:
        parser.error("--rounds and --singles must be >= 1")
    if args.target <= 1:
        parser.error(f"--target must be a speed-up > 1, got {args.target}")
    return args


def time_searches(index, queries, k: int, rounds: int, singles: int) -> dict:
    """Median single-query milliseconds of each of SEARCHES, rounds taking them in turns; each
    round times the next `singles` queries."""
    searches = {"exact int8": lambda q: index.search(q, k),
                "scan": lambda q: index.search(q, k, first_stage="binary", oversample=1),
                "defaults": lambda q: index.search(q, k, first_stage="binary")}
    per_round = {name: [] for name in SEARCHES}
    for round_number in range(rounds):
        chosen = queries[round_number * singles:(round_number + 1) * singles]
        for name in SEARCHES:
            searches[name](chosen[:1])  # its first call pays for what it maps
            per_round[name].append(median_latency(searches[name], chosen) * 1e3)
    return {name: {"single_ms": statistics.median(times), "rounds_ms": times} for name, times in per_round.items()}


def floor_of(times: dict, candidates: int, k: int, target: float) -> dict:
    """What the three timings say: the candidates' cost and the speed-ups they allow."""
    exact, scan, defaults = (times[name]["single_ms"] for name in SEARCHES)
    per_candidate_us = max(defaults - scan, 0.0) * 1e3 / max(candidates - k, 1)
    room_ms = exact / target - scan
    affordable = k + int(room_ms * 1e3 / per_candidate_us) if room_ms > 0 and per_candidate_us > 0 else None
    return {"candidates": candidates, "candidates_ms": defaults - scan, "per_candidate_us": per_candidate_us,
            "speedup_defaults": exact / defaults, "speedup_if_candidates_were_free": exact / scan,
            f"candidates_affordable_at_{target:g}x": affordable}


def main() -> int:
    args = parse_args()
    if args.simd_path:
        fastret.set_simd_path(args.simd_path)
    command = shlex.join([sys.executable, *sys.argv])
    print(f"command: {command}\nstore: {args.dir}", flush=True)
    write_store(args.dir, args.n, args.dim, args.shards)
    store.write_missing_bits(args.dir, show_progress_bar=True)
    index = fastret.Index.load(args.dir, verify=False)
    queries = make_queries(args.rounds * args.singles, args.dim)
    candidates = min(args.k * binary.auto_oversample(len(index), args.k), len(index))  # as the core keeps them
    index.search(queries[:1], args.k)  # exact int8 first: it reads every code into the page cache

    by_threads = {}
    for threads in args.threads:
        fastret.set_num_threads(threads)
        times = time_searches(index, queries, args.k, args.rounds, args.singles)
        by_threads[threads] = {**times, **floor_of(times, candidates, args.k, args.target)}
        row = by_threads[threads]
        affordable = row[f"candidates_affordable_at_{args.target:g}x"]
        print(f"{threads:3d} threads: exact int8 {times['exact int8']['single_ms']:7.1f} ms, scan "
              f"{times['scan']['single_ms']:6.1f} ms, defaults {times['defaults']['single_ms']:6.1f} ms "
              f"({row['speedup_defaults']:.1f}x; {row['per_candidate_us']:.2f} us a candidate, "
              f"{row['speedup_if_candidates_were_free']:.1f}x were they free; "
              f"{'no' if affordable is None else f'{affordable:,}'} candidates fit {args.target:g}x, "
              f"the defaults keep {candidates:,})", flush=True)
    fastret.set_num_threads(0)

    most = max(args.threads)
    checks = [(verdict(by_threads[most]["speedup_defaults"] >= args.target),
               f"{most} threads: one query at the defaults {by_threads[most]['speedup_defaults']:.1f}x faster than "
               f"exact int8 (>= {args.target:g}x)")]
    report = {"command": command, "machine": cpu_info(), "simd_path": fastret.simd_path(), "n": len(index),
              "dim": index.dim, "shards": index.segment_count, "k": args.k, "query_bits": binary.DEFAULT_QUERY_BITS,
              "rounds": args.rounds, "singles": args.singles, "target": args.target,
              "by_threads": by_threads, "load_average": os.getloadavg()}
    return finish(checks, args.json, report)


if __name__ == "__main__":
    sys.exit(main())
