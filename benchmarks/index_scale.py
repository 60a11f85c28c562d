"""The index at corpus scale: a store of N x dim int8 vectors, mapped in place, against the same
vectors as one in-memory index, in one run on this machine.

    .venv/bin/python benchmarks/index_scale.py                         # 10M x 384
    .venv/bin/python benchmarks/index_scale.py --n 36000000 --dim 384  # PubMed size

1. Writes the store with the library's own shard writer (fastret.storage.store.write_shard + manifest):
   random int8 codes in [-127, 127], scales, document ids "pmid-<row>". Reused when a store of the
   same size is already there (--dir), written again with --rewrite; an interrupted write resumes.
2. In a fresh process (so resident memory is this load's alone): `Index.load(store, verify=False)`
   time and resident-memory growth, then growth after the first and after the tenth single query,
   single-query latency (median) and the QPS of a --batch query batch, all on the mapped store once
   its pages are resident; then `verify=True` load time (reads every byte).
3. The same vectors as one in-memory `fastret.Index` (when both fit in RAM): the same latency and
   QPS, and the results of the batch compared id for id and score for score.
Results as JSON in benchmarks/results/ (--json), with the CPU named.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import fastret
from fastret.storage import index_file, store

from harness import cpu_info, finish, verdict

SEED = 20261130


def rss_mib() -> float:
    """This process's resident memory (file-backed mapped pages included)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def write_store(directory: Path, n: int, dim: int, shard_size: int) -> float:
    """A store of n random int8 vectors in shards of shard_size; returns the seconds it took.

    Shard k's vectors come from its own seed, so an interrupted run resumes: finished shards of
    the same size and dimension are kept."""
    start = time.perf_counter()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / store.MANIFEST).unlink(missing_ok=True)
    for number, first in enumerate(range(0, n, shard_size)):
        rows = min(shard_size, n - first)
        shard = directory / f"{store.shard_name(number)}.frt"
        if shard.exists():
            header = index_file.read_header(shard)
            if (header.count, header.dim) == (rows, dim):
                continue
        rng = np.random.default_rng([SEED, number])
        codes = rng.integers(-127, 128, (rows, dim), dtype=np.int8)
        scales = rng.uniform(0.5, 1.5, rows).astype(np.float32) / 127
        store.write_shard(directory, number, [f"pmid-{first + i}" for i in range(rows)], first, codes, scales, None)
        print(f"  shard {number}: rows {first:,} .. {first + rows:,}", flush=True)
    store.write_manifest(directory, {"dim": dim, "float16": False, "synthetic_seed": SEED}, complete=True,
                         shards=list(range(-(-n // shard_size))))
    return time.perf_counter() - start


def queries_for(dim: int, count: int) -> np.ndarray:
    return np.random.default_rng(SEED + 1).standard_normal((count, dim)).astype(np.float32)


def search_timings(index, queries: np.ndarray, k: int, singles: int) -> dict:
    latencies = []
    for q in queries[:singles]:
        start = time.perf_counter()
        index.search(q, k)
        latencies.append(time.perf_counter() - start)
    start = time.perf_counter()
    scores, ids = index.search(queries, k)
    batch_seconds = time.perf_counter() - start
    return {"latency_ms": statistics.median(latencies) * 1000, "qps": len(queries) / batch_seconds,
            "batch_seconds": batch_seconds, "scores": scores, "ids": ids}


def measure(directory: Path, batch: int, k: int, singles: int, compare: bool) -> dict:
    """Run in a fresh process: everything about the mapped store, then the in-memory index."""
    dim = store.Store.open(directory).dim
    queries = queries_for(dim, batch)
    before = rss_mib()
    start = time.perf_counter()
    index = fastret.Index.load(directory, verify=False)
    load_seconds = time.perf_counter() - start
    after_load = rss_mib()
    index.search(queries[0], k)
    after_first = rss_mib()
    for q in queries[1:10]:
        index.search(q, k)
    after_tenth = rss_mib()
    index.search(queries, k)  # every page resident before timing
    mapped = search_timings(index, queries, k, singles)
    names = index.documents(mapped["ids"][:2, :3]).tolist()
    result = {
        "n": len(index), "dim": dim, "segments": index.segment_count,
        "load_seconds": load_seconds, "rss_before_mib": before, "rss_growth_load_mib": after_load - before,
        "rss_growth_first_query_mib": after_first - before, "rss_growth_tenth_query_mib": after_tenth - before,
        "mapped": {key: value for key, value in mapped.items() if key not in ("scores", "ids")},
        "example_documents": names,
    }
    start = time.perf_counter()
    fastret.Index.load(directory, verify=True)
    result["load_seconds_verify"] = time.perf_counter() - start
    if compare:
        segments = store.Store.open(directory).segments(verify=False)
        memory = fastret.Index(dim)
        memory.add((np.concatenate([s.codes for s in segments]), np.concatenate([s.scales for s in segments])),
                   ids=np.concatenate([s.ids for s in segments]))
        del segments
        in_memory = search_timings(memory, queries, k, singles)
        result["in_memory"] = {key: value for key, value in in_memory.items() if key not in ("scores", "ids")}
        result["identical"] = bool(np.array_equal(mapped["ids"], in_memory["ids"])
                                   and np.array_equal(mapped["scores"], in_memory["scores"]))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--shard-size", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, default=Path(__file__).resolve().parent / ".cache" / "scale-store")
    parser.add_argument("--rewrite", action="store_true", help="write the store even if one of this size exists")
    parser.add_argument("--batch", type=int, default=1000, help="queries in the batch")
    parser.add_argument("--singles", type=int, default=20, help="single queries timed (median)")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--no-compare", action="store_true", help="skip the in-memory index")
    parser.add_argument("--write-only", action="store_true", help="write the store and stop")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    compare = not args.no_compare
    if args.measure:
        print(json.dumps(measure(args.dir, args.batch, args.k, args.singles, compare)))
        return 0

    write_seconds = None
    try:
        existing = store.read_manifest(args.dir)
        reuse = not args.rewrite and existing.get("count") == args.n and existing.get("dim") == args.dim
    except (store.StoreError, FileNotFoundError):
        reuse = False
    if not reuse:
        print(f"writing {args.n:,} x {args.dim} to {args.dir}")
        write_seconds = write_store(args.dir, args.n, args.dim, args.shard_size)
    if args.write_only:
        return 0
    store_bytes = sum(p.stat().st_size for p in args.dir.iterdir())
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if compare and 2.2 * store_bytes > 0.85 * ram:
        print(f"the store ({store_bytes / 2**30:.1f} GiB) and an in-memory copy do not both fit in "
              f"{ram / 2**30:.1f} GiB of RAM: measuring the mapped store alone")
        compare = False
    command = [sys.executable, __file__, "--measure", "--dir", str(args.dir), "--batch", str(args.batch),
               "--singles", str(args.singles), "-k", str(args.k)] + ([] if compare else ["--no-compare"])
    result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])

    mapped = result["mapped"]
    print(f"\n{result['n']:,} x {result['dim']} in {result['segments']} segments, {store_bytes / 2**30:.2f} GiB on disk"
          + (f", written in {write_seconds:.0f} s" if write_seconds else ""))
    print(f"load (verify=False) {result['load_seconds'] * 1000:.0f} ms, resident memory +{result['rss_growth_load_mib']:.0f} MiB;"
          f" after 1 query +{result['rss_growth_first_query_mib']:.0f} MiB, after 10 +{result['rss_growth_tenth_query_mib']:.0f} MiB;"
          f" load with verify=True {result['load_seconds_verify']:.1f} s")
    print(f"| index | latency, 1 query | QPS, {args.batch}-query batch |\n|---|---:|---:|")
    print(f"| mapped store | {mapped['latency_ms']:.1f} ms | {mapped['qps']:.0f} |")
    checks = [(verdict(result["load_seconds"] < 1.0), f"load under 1 s: {result['load_seconds'] * 1000:.0f} ms"),
              (verdict(result["rss_growth_load_mib"] < 100),
               f"resident memory growth at load under 100 MiB: {result['rss_growth_load_mib']:.0f} MiB")]
    if "in_memory" in result:
        memory = result["in_memory"]
        print(f"| in-memory index | {memory['latency_ms']:.1f} ms | {memory['qps']:.0f} |")
        checks += [(verdict(result["identical"]), "mapped store results identical to the in-memory index"),
                   (verdict(mapped["qps"] >= 0.9 * memory["qps"]),
                    f"mapped batch QPS within 10% of in-memory: {mapped['qps'] / memory['qps']:.3f}x"),
                   (verdict(mapped["latency_ms"] <= 1.1 * memory["latency_ms"]),
                    f"mapped single-query latency within 10%: {mapped['latency_ms'] / memory['latency_ms']:.3f}x")]
    report = {"command": " ".join(sys.argv), "machine": cpu_info(), "simd_path": fastret.simd_path(),
              "threads": fastret.get_num_threads(), "store_bytes": store_bytes, "write_seconds": write_seconds,
              "load_average": os.getloadavg(), **result}
    return finish(checks, args.json, report)


if __name__ == "__main__":
    sys.exit(main())
