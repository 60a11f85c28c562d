"""Sharded search on Ray against one plain `Index` over the same vectors, on this machine.

    .venv/bin/python benchmarks/distributed_search.py --json benchmarks/results/2026-11-30-cpu-distributed.json

1. Writes a store of --n x --dim random int8 vectors in --files shard files (reused when one of
   that size is in --dir), and opens it as one plain `Index` (mapped, as `Index.load` does).
2. Starts a local Ray with as many CPUs as this process may use, and for 1, 2 and 4 shards
   (`ShardedIndex.load(store, shards)`, each actor holding CPUs / shards, so one machine's cores
   are split, not multiplied): checks the batch's results are identical to the plain index's, then
   times, interleaved with the plain index (--repeats rounds, medians): a --batch query batch
   (QPS) and single queries (latency).
3. The parts of an N-machine estimate: bytes a query sends to and receives from each shard, and
   the merge of per-shard top-k lists for 2 .. 64 shards (timed here, without Ray).
Results as JSON (--json), with the CPU, its SIMD path and the load average.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import ray

import fastret
from fastret.storage import store
from fastret.search.distributed import ShardedIndex
from fastret.search.rules import merge_candidates

from harness import cpu_info, finish, verdict

SEED = 20261130


def write_store(directory: Path, n: int, dim: int, files: int) -> None:
    """n random int8 vectors (codes in [-127, 127], scales ~ 1/127) in `files` shard files."""
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    rng = np.random.default_rng(SEED)
    per_file = -(-n // files)
    for number, first in enumerate(range(0, n, per_file)):
        rows = min(per_file, n - first)
        codes = rng.integers(-127, 128, (rows, dim), dtype=np.int8)
        scales = rng.uniform(0.5, 1.5, rows).astype(np.float32) / 127
        store.write_shard(directory, number, [f"doc-{first + i}" for i in range(rows)], first, codes, scales, None)
    store.write_manifest(directory, {"dim": dim, "float16": False, "synthetic_seed": SEED}, complete=True)


def timed(search, queries) -> tuple[float, tuple]:
    start = time.perf_counter()
    found = search(queries)
    return time.perf_counter() - start, found


def compare(plain, sharded, queries: np.ndarray, k: int, repeats: int, singles: int) -> dict:
    """Interleaved medians: batch seconds and single-query seconds, plain and sharded."""
    batch = {"plain": [], "sharded": []}
    single = {"plain": [], "sharded": []}
    for _ in range(repeats):
        for name, index in (("plain", plain), ("sharded", sharded)):
            batch[name].append(timed(lambda q: index.search(q, k), queries)[0])
        for q in queries[:singles]:
            for name, index in (("plain", plain), ("sharded", sharded)):
                single[name].append(timed(lambda one: index.search(one, k), q)[0])
    median = {f"{kind}_{name}_s": statistics.median(values)
              for kind, table in (("batch", batch), ("single", single)) for name, values in table.items()}
    median["batch_rounds"] = batch
    return median


def merge_cost(shard_counts: list[int], queries: int, k: int) -> list[dict]:
    """Seconds to merge per-shard top-k lists of a `queries` batch, by shard count."""
    rng = np.random.default_rng(SEED)
    rows = []
    for shards in shard_counts:
        parts = []
        for _ in range(shards):
            scores = -np.sort(-rng.standard_normal((queries, k)).astype(np.float32), axis=1)
            parts.append((scores, rng.integers(0, 1 << 40, (queries, k)), None))
        seconds = min(timed(lambda p: merge_candidates(p, k), parts)[0] for _ in range(5))
        rows.append({"shards": shards, "queries": queries, "k": k, "seconds": seconds,
                     "us_per_query": seconds / queries * 1e6})
    return rows


def stop(index: ShardedIndex) -> None:
    """Kill the index's actors so that the next configuration gets the CPUs."""
    for shard in range(len(index.replica_counts)):
        for actor in index.shard_actors(shard):
            ray.kill(actor, no_restart=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--files", type=int, default=4, help="shard files in the store (>= the most shards)")
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--dir", type=Path, default=Path(__file__).resolve().parent / ".cache" / "distributed-store")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--singles", type=int, default=20, help="single queries timed per round")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds (medians are reported)")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    try:
        existing = store.read_manifest(args.dir)
        reuse = existing.get("count") == args.n and existing.get("dim") == args.dim and len(existing["shards"]) == args.files
    except (store.StoreError, FileNotFoundError):
        reuse = False
    if not reuse:
        print(f"writing {args.n:,} x {args.dim} in {args.files} files to {args.dir}", flush=True)
        write_store(args.dir, args.n, args.dim, args.files)
    cpus = len(os.sched_getaffinity(0))
    load_before = os.getloadavg()
    plain = fastret.Index.load(args.dir, verify=False)
    queries = np.random.default_rng(SEED + 1).standard_normal((args.batch, args.dim)).astype(np.float32)
    expected = plain.search(queries, args.k)  # also maps every page before timing
    # Ray starts its workers at niceness 15; this process, and so the plain index, runs at 0. On a
    # machine others use too, that would time the scheduler rather than the fan-out.
    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)

    rows = []
    for shards in args.shards:
        start = time.perf_counter()
        # timeout_s bounds a whole call, the search included: a 1,000-query batch takes seconds here.
        sharded = ShardedIndex.load(args.dir, shards, num_cpus=cpus / shards, verify=False, timeout_s=600)
        started = time.perf_counter() - start
        got = sharded.search(queries, args.k)  # warm: every actor has mapped its pages
        identical = bool(np.array_equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]))
        measured = compare(plain, sharded, queries, args.k, args.repeats, args.singles)
        row = {"shards": shards, "threads_per_actor": max(1, round(cpus / shards)), "start_seconds": started,
               "identical": identical, **measured,
               "batch_qps_plain": args.batch / measured["batch_plain_s"],
               "batch_qps_sharded": args.batch / measured["batch_sharded_s"],
               "batch_overhead": measured["batch_sharded_s"] / measured["batch_plain_s"] - 1,
               "single_overhead_ms": (measured["single_sharded_s"] - measured["single_plain_s"]) * 1000}
        rows.append(row)
        print(f"{shards} shard(s): identical {identical}; batch {row['batch_qps_sharded']:.0f} QPS vs plain "
              f"{row['batch_qps_plain']:.0f} ({row['batch_overhead']:+.1%}); 1 query "
              f"{measured['single_sharded_s'] * 1000:.2f} ms vs {measured['single_plain_s'] * 1000:.2f} ms", flush=True)
        stop(sharded)
        del sharded
    ray.shutdown()
    merges = merge_cost([2, 4, 8, 16, 32, 64], args.batch, args.k)

    print(f"\n{args.n:,} x {args.dim} int8, k = {args.k}, {cpus} CPUs, {cpu_info()['cpu']} "
          f"({fastret.simd_path()}), load average {load_before[0]:.2f} before\n")
    print(f"| shards | {args.batch:,}-query batch: QPS (plain Index) | overhead | 1 query: ms (plain Index) | identical |")
    print("|---:|---:|---:|---:|:---:|")
    for row in rows:
        print(f"| {row['shards']} | {row['batch_qps_sharded']:.0f} ({row['batch_qps_plain']:.0f}) | "
              f"{row['batch_overhead']:+.1%} | {row['single_sharded_s'] * 1000:.2f} ({row['single_plain_s'] * 1000:.2f}) "
              f"| {'yes' if row['identical'] else 'NO'} |")
    print(f"\nmerge of per-shard top-k lists, {args.batch:,} queries: " +
          ", ".join(f"{m['shards']} shards {m['us_per_query']:.2f} us/query" for m in merges))
    per_query_out = args.dim + 4  # int8 codes + one float32 scale
    per_query_back = args.k * (4 + 8)  # per shard: k float32 scores + k int64 ids
    print(f"bytes per query and shard: {per_query_out} out, {per_query_back} back")

    checks = [(verdict(all(r["identical"] for r in rows)), "sharded results identical to the plain Index")]
    two = next((r for r in rows if r["shards"] == 2), None)
    if two is not None:
        checks.append((verdict(two["batch_overhead"] < 0.15),
                       f"fan-out overhead, {args.batch} queries over {args.n:,} x {args.dim} in 2 shards, under 15%: "
                       f"{two['batch_overhead']:+.1%}"))
    report = {"command": " ".join(sys.argv), "machine": cpu_info(), "simd_path": fastret.simd_path(),
              "ray": ray.__version__, "n": args.n, "dim": args.dim, "k": args.k, "batch": args.batch,
              "repeats": args.repeats, "ray_worker_niceness": os.environ["RAY_worker_niceness"],
              "load_average_before": load_before, "load_average_after": os.getloadavg(),
              "bytes_per_query_per_shard": {"out": per_query_out, "back": per_query_back},
              "rows": rows, "merge": merges}
    return finish(checks, args.json, report)


if __name__ == "__main__":
    sys.exit(main())
