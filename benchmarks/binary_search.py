"""The binary first stage against exact int8 search, faiss IndexBinaryFlat and usearch b1 on a
mapped store, in one run on this machine.

    .venv/bin/python benchmarks/binary_search.py                                # 10M x 384
    .venv/bin/python benchmarks/binary_search.py --scale-dir benchmarks/.cache/scale-store-36m

1. The store of benchmarks/filtered_search.py (written, or reused, under --dir): N x dim unit
   vectors around a common mean direction (embedding models' vectors are not centred), int8 with
   per-vector scales, in --shards shards, with their sign bits (`fastret index --binary` makes
   them for a store written before bits were kept). Queries are drawn the same way.
2. In a fresh process (so resident memory is the binary search's alone): `Index.load(store,
   verify=False)`, then --rss-queries single queries with first_stage="binary": the resident set
   before the store is opened (`import fastret` loads torch), after, and how much of it is the
   store's bits and its index files' pages (scales and ids; /proc/self/smaps). The check: what the
   store and the queries added is at most a quarter of the int8 codes.
3. Exact int8 (`Index.search`) and the binary first stage with its defaults (4-bit queries,
   oversample "auto"; then the candidates' exact int8 scores): single-query latency (median of
   --singles) and a batch of --queries; recall@k of the binary stage against exact int8 at
   oversample 1, 2, 4, 10, 20 (benchmarks/binary_recall_scale.py measures recall at scale).
4. The same sign bits in faiss IndexBinaryFlat and searched by usearch's exact `search` (metric
   Hamming, b1), with the query's signs: k x oversample candidates, the size of fastret's first
   stage, without the re-ranking fastret's time includes. usearch's exact search is the slowest
   here (0.5 s a query at 10M) and ran out of memory on 1,000 queries at once: its batch is the
   first --baseline-batch queries and its single-query median is of 10, compared by queries per
   second.
5. With --scale-dir (a store as benchmarks/index_scale.py writes it, 36M x 384 for PubMed; written
   there when missing, with --scale-n rows): single-query latency of exact int8 and of the binary
   first stage, in the same run.
Exact int8 runs before the binary stage in steps 3 and 5, so both search with the store's files in
the page cache (where the machine has the memory); with the codes on disk, each binary candidate
costs one random read. Drop the page cache before a run (echo 1 > /proc/sys/vm/drop_caches) so
that another store's pages do not crowd this one's out.
Writes every number, the machine and the command as JSON (--json).
"""

from __future__ import annotations

import os

# Before numpy / faiss / fastret load OpenMP: faiss bundles its own runtime (see search_vs_faiss).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import numpy as np  # noqa: E402

import fastret  # noqa: E402
from fastret.search import binary  # noqa: E402
from fastret.storage import sign_bits, store  # noqa: E402
from filtered_search import SEED, add_store_arguments, shard_vectors, store_dir, write_store  # noqa: E402
from harness import batch_seconds, cpu_info, finish, median_latency, recall_at_k, verdict  # noqa: E402

OVERSAMPLES = (1, 2, 4, 10, 20)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_store_arguments(parser)
    parser.add_argument("--queries", type=int, default=1000, help="batch size (default 1,000)")
    parser.add_argument("--singles", type=int, default=50, help="single queries timed (median)")
    parser.add_argument("--rss-queries", type=int, default=1000, help="single queries before the resident set is read")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--scale-dir", type=Path, default=None, help="a PubMed-size store to time single queries on")
    parser.add_argument("--scale-n", type=int, default=36_000_000, help="rows of the --scale-dir store if written")
    parser.add_argument("--scale-singles", type=int, default=5)
    parser.add_argument("--baseline-batch", type=int, default=20,
                        help="usearch's batch (default 20: its exact search of 1,000 queries at 10M ran out of memory)")
    parser.add_argument("--skip-baselines", action="store_true", help="leave faiss and usearch out")
    parser.add_argument("--simd-path", default=None,
                        help="run fastret on this SIMD path (fastret.available_simd_paths(); default: the best)")
    parser.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    args.dir = store_dir(args)
    return args


def planted_queries(index, count: int, cosine: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """float32 [count, dim] unit queries, each at `cosine` to one stored row (as stored: codes x
    scale), and those rows' ids int64 [count]."""
    segments = index.segments
    which = rng.integers(0, len(segments), count)
    queries, ids = [], []
    for number, segment in zip(which, (segments[i] for i in which)):
        row = int(rng.integers(0, len(segment)))
        stored = np.asarray(segment.codes[row], np.float32) * float(segment.scales[row])
        stored /= np.linalg.norm(stored)
        noise = rng.standard_normal(len(stored)).astype(np.float32)
        noise -= (noise @ stored) * stored
        noise /= np.linalg.norm(noise)
        queries.append(cosine * stored + np.sqrt(1 - cosine**2) * noise)
        ids.append(int(segment.ids[row]))
    return np.array(queries, np.float32), np.array(ids, np.int64)


def planted_recall(index, k: int, count: int) -> dict:
    """How often the planted row is in the top k: exact int8, and binary at each oversample."""
    out = {}
    for cosine in (0.8, 0.5):
        queries, planted = planted_queries(index, count, cosine, np.random.default_rng(int(cosine * 10)))
        found = {"exact int8": index.search(queries, k)[1]}
        for factor in OVERSAMPLES:
            found[f"binary x{factor}"] = index.search(queries, k, first_stage="binary", oversample=factor)[1]
        out[f"cosine {cosine}"] = {name: float((ids == planted[:, None]).any(axis=1).mean())
                                   for name, ids in found.items()}
        print(f"planted at cosine {cosine}: " + ", ".join(f"{n} {v:.3f}" for n, v in out[f"cosine {cosine}"].items()),
              flush=True)
    return out


def make_queries(count: int, dim: int) -> np.ndarray:
    """float32 [count, dim]: unit vectors drawn as the store's are (filtered_search's generator)."""
    mean = np.random.default_rng(SEED).standard_normal(dim).astype(np.float32) * 0.5
    return shard_vectors(np.random.default_rng(SEED + 1), count, dim, mean)


# ---------------------------------------------------------------------------------------- timing


def timings(search: Callable[[np.ndarray], object], queries: np.ndarray, singles: int) -> dict:
    search(queries[:1])  # pages in what it reads
    single = median_latency(search, queries[:singles])
    batch = batch_seconds(search, queries)
    return {"single_ms": single * 1e3, "batch_seconds": batch, "qps": len(queries) / batch}


# ---------------------------------------------------------------------------------------- memory


def resident_mib() -> float:
    """This process's resident memory (VmRSS, file-backed mapped pages included)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def resident_by_suffix(directory: Path) -> dict:
    """MiB resident in this process of the store's files, by kind (from /proc/self/smaps)."""
    out = {"codes file (.frt)": 0.0, "bits (.bits)": 0.0, "other store files": 0.0}
    current = None
    prefix = str(directory.resolve())
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and "-" in fields[0] and ":" in fields[3]:  # a mapping's first line
            path = fields[5]
            current = None
            if path.startswith(prefix):
                current = ("bits (.bits)" if path.endswith(".bits") else
                           "codes file (.frt)" if path.endswith(".frt") else "other store files")
        elif current and fields[0] == "Rss:":
            out[current] += int(fields[1]) / 1024
    return out


def rss_child(args: argparse.Namespace) -> int:
    """Step 2, in its own process: prints one JSON line."""
    before_load = resident_mib()
    index = fastret.Index.load(args.dir, verify=False)
    loaded = resident_mib()
    queries = make_queries(args.rss_queries, args.dim)
    start = time.perf_counter()
    for query in queries:
        index.search(query[None], args.k, first_stage="binary")
    seconds = time.perf_counter() - start
    print(json.dumps({"rss_before_load_mib": before_load, "rss_after_load_mib": loaded,
                      "rss_after_queries_mib": resident_mib(), "queries": len(queries),
                      "mean_single_ms": seconds / len(queries) * 1e3,
                      "store_resident_mib": resident_by_suffix(args.dir)}))
    return 0


def measure_rss(args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--rss-child", "--dir", str(args.dir), "--dim", str(args.dim),
               "--rss-queries", str(args.rss_queries), "--k", str(args.k)]
    if args.simd_path:
        command += ["--simd-path", args.simd_path]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------- baselines


def packed_sign_bits(index) -> np.ndarray:
    """uint8 [n, dim / 8]: every row's sign bits, one row after another (faiss' and usearch's layout)."""
    parts = [sign_bits.bit_rows(np.asarray(s.sign_bits()))[: len(s)] for s in index.segments]
    return np.ascontiguousarray(np.concatenate(parts)).view(np.uint8)[:, : (index.dim + 7) // 8]


def query_sign_bits(queries: np.ndarray) -> np.ndarray:
    return np.packbits(queries > 0, axis=1, bitorder="little")


def faiss_timings(built, dataset: np.ndarray, q_bits: np.ndarray, candidates: int, singles: int) -> dict:
    """`timings` of a faiss binary index holding `dataset` (freed when this returns)."""
    built.add(dataset)
    return timings(lambda q: built.search(q, candidates), q_bits, singles)


def measure_baselines(index, queries: np.ndarray, candidates: int, singles: int, usearch_batch: int) -> dict:
    import faiss
    from usearch.index import MetricKind
    from usearch.index import search as usearch_search

    dataset = packed_sign_bits(index)
    q_bits = query_sign_bits(queries)
    out = {"faiss IndexBinaryFlat": faiss_timings(faiss.IndexBinaryFlat(index.dim), dataset, q_bits, candidates,
                                                  singles)}
    threads = len(os.sched_getaffinity(0))

    def usearch_exact(q):
        return usearch_search(dataset, q[0] if len(q) == 1 else q, candidates, MetricKind.Hamming, exact=True,
                              threads=threads)

    out["usearch b1 exact"] = {**timings(usearch_exact, q_bits[:usearch_batch], min(singles, 10)),
                               "batch": usearch_batch}
    for engine, row in out.items():
        print(f"{engine:24s} single {row['single_ms']:8.2f} ms  batch {row['batch_seconds']:7.3f} s", flush=True)
    return out


# ---------------------------------------------------------------------------------------- the run


def measure_scale(args: argparse.Namespace) -> dict:
    """Step 5: single-query latency of exact int8 and binary on the PubMed-size store."""
    from index_scale import write_store as write_scale_store

    if not (args.scale_dir / store.MANIFEST).exists():
        write_scale_store(args.scale_dir, args.scale_n, args.dim, 1_000_000)
    store.write_missing_bits(args.scale_dir, show_progress_bar=True)
    start = time.perf_counter()
    index = fastret.Index.load(args.scale_dir, verify=False)
    load = time.perf_counter() - start
    queries = np.random.default_rng(7).standard_normal((args.scale_singles, args.dim)).astype(np.float32)
    out = {"n": len(index), "segments": index.segment_count, "load_seconds": load}
    for name, kwargs in (("exact int8", {}), ("binary", {"first_stage": "binary"})):  # exact pages the codes in
        index.search(queries[:1], args.k, **kwargs)  # pages in what it reads
        out[name] = {"single_ms": median_latency(lambda q: index.search(q, args.k, **kwargs), queries) * 1e3}
        print(f"{len(index):,} rows: {name:12s} single {out[name]['single_ms']:8.1f} ms", flush=True)
    return out


def main() -> int:
    args = parse_args()
    if args.simd_path:
        fastret.set_simd_path(args.simd_path)
    if args.rss_child:
        return rss_child(args)
    command = shlex.join([sys.executable, *sys.argv])
    print(f"command: {command}\nstore: {args.dir}")
    write_store(args.dir, args.n, args.dim, args.shards)
    written = store.write_missing_bits(args.dir, show_progress_bar=True)
    rss = measure_rss(args)
    print(f"resident after {rss['queries']} binary single queries: {rss['rss_after_queries_mib']:.0f} MiB "
          f"(after load {rss['rss_after_load_mib']:.0f} MiB); store pages: {rss['store_resident_mib']}", flush=True)

    index = fastret.Index.load(args.dir, verify=False)
    queries = make_queries(args.queries, args.dim)
    oversample = binary.auto_oversample(len(index), args.k)  # what the default, "auto", resolves to here
    # exact int8 first: its first query reads every code, so both run with the codes in the page cache
    exact = timings(lambda q: index.search(q, args.k), queries, args.singles)
    print(f"exact int8               single {exact['single_ms']:8.2f} ms  batch {exact['batch_seconds']:7.3f} s",
          flush=True)
    binary_search = timings(lambda q: index.search(q, args.k, first_stage="binary"), queries, args.singles)
    print(f"binary x{oversample:<3d}             single {binary_search['single_ms']:8.2f} ms  "
          f"batch {binary_search['batch_seconds']:7.3f} s", flush=True)
    _, truth = index.search(queries, args.k)
    recall = {}
    for factor in OVERSAMPLES:
        _, found = index.search(queries, args.k, first_stage="binary", oversample=factor)
        recall[factor] = recall_at_k(found, truth)
        print(f"recall@{args.k} vs exact int8, oversample {factor:2d}: {recall[factor]:.4f}", flush=True)
    planted = planted_recall(index, args.k, args.queries)
    baselines = {} if args.skip_baselines else measure_baselines(index, queries, args.k * oversample, args.singles,
                                                                   args.baseline_batch)
    scale = measure_scale(args) if args.scale_dir else None

    codes_mib = len(index) * index.dim / 2**20
    searched_mib = rss["rss_after_queries_mib"] - rss["rss_before_load_mib"]
    checks = [
        (verdict(exact["single_ms"] >= 5 * binary_search["single_ms"]),
         f"single query {exact['single_ms'] / binary_search['single_ms']:.1f}x faster than exact int8 (>= 5x)"),
        (verdict(binary_search["qps"] >= 4 * exact["qps"]),
         f"batch of {args.queries}: {binary_search['qps'] / exact['qps']:.1f}x exact int8's QPS (>= 4x)"),
        (verdict(searched_mib <= codes_mib / 4),
         f"resident memory the store and {rss['queries']} single binary queries added to the process: "
         f"{searched_mib:.0f} MiB <= a quarter of the int8 codes ({codes_mib / 4:.0f} MiB); the process "
         f"{rss['rss_after_queries_mib']:.0f} MiB in all, {rss['rss_before_load_mib']:.0f} MiB of it before "
         "the store was opened (Python, numpy, torch)"),
    ]
    for engine, row in baselines.items():
        checks.append((verdict(row["single_ms"] >= 1.5 * binary_search["single_ms"]),
                       f"single query {row['single_ms'] / binary_search['single_ms']:.2f}x faster than {engine} "
                       "(>= 1.5x)"))
        checks.append((verdict(binary_search["qps"] >= 1.5 * row["qps"]),
                       f"batch {binary_search['qps'] / row['qps']:.2f}x the QPS of {engine} (>= 1.5x)"))
    if scale:
        checks.append((verdict(scale["binary"]["single_ms"] <= 250),
                       f"{scale['n']:,} rows: single query {scale['binary']['single_ms']:.0f} ms <= 250 ms (exact "
                       f"int8 {scale['exact int8']['single_ms']:.0f} ms)"))
    report = {"command": command, "machine": cpu_info(), "simd_path": fastret.simd_path(),
              "threads": fastret.get_num_threads(),
              "n": len(index), "dim": index.dim, "shards": index.segment_count, "k": args.k, "batch": args.queries,
              "oversample": oversample, "query_bits": binary.DEFAULT_QUERY_BITS,
              "bits_written_for": [str(p) for p in written], "codes_mib": codes_mib,
              "binary": binary_search, "exact_int8": exact, "recall_vs_exact_int8": recall,
              "planted_neighbour_in_top_k": planted,
              "resident_memory": rss, "baselines": baselines, "scale": scale, "load_average": os.getloadavg()}
    return finish(checks, args.json, report)


if __name__ == "__main__":
    sys.exit(main())
