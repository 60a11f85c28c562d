"""Filtered exact search on a mapped store, against faiss with an IDSelectorBitmap at the same
selectivity, in one run on this machine.

    .venv/bin/python benchmarks/filtered_search.py                     # 10M x 384
    .venv/bin/python benchmarks/filtered_search.py --n 1000000 --json out.json

1. Writes (or reuses, under --dir) a store of N x dim vectors with the library's shard writer, in
   --shards shards, each with stored fields: `year` (1990-2025, ascending with the row: a
   year-ordered store, as PubMed is when written in PMID order) and `draw` (uniform in
   [0, 10000): rows selected at random). Vectors are random with a per-dimension mean (embedding
   models' vectors are not centred), unit length, int8 with per-vector scales.
2. Per filter (none; 1% and 50% of rows scattered at random; a year range on the ordered store):
   the filter's evaluation into row masks (`Filter.masks`: segments that the statistics decide
   are not read) is timed apart from the search, which then takes the masks; fastret
   `Index.search` single queries (median latency) and a batch of --queries; every result is
   checked to pass the filter, and k results come back.
3. faiss IndexFlatIP (float32, the exact float reference) and faiss SQ8 direct signed (int8 codes
   of the vectors times one global scale), each searched with SearchParameters(sel=
   IDSelectorBitmap) at the same selectivity; built one at a time (IndexFlatIP needs 4 x N x dim
   bytes of memory); --skip-faiss leaves them out.
Writes every number, the machine and the command as JSON (--json).
"""

from __future__ import annotations

import os

# Before numpy / faiss / fastret load OpenMP: faiss bundles its own runtime (see search_vs_faiss).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

import fastret  # noqa: E402
from fastret.storage import store  # noqa: E402
from fastret.storage.fields import StoredFields  # noqa: E402
from fastret.storage.segment_files import add_fields  # noqa: E402
from fastret.search.filters import Filter  # noqa: E402
from harness import batch_seconds, cpu_info, finish, median_latency  # noqa: E402

SEED = 20261204
YEARS = (1990, 2025)
DRAWS = 10_000
FILTERS = {
    "none": None,
    "1% scattered": {"draw": {"$lt": DRAWS // 100}},
    "50% scattered": {"draw": {"$lt": DRAWS // 2}},
    "year >= 2023 (ordered)": {"year": {"$gte": 2023}},
}


def add_store_arguments(parser: argparse.ArgumentParser) -> None:
    """--n, --dim, --shards and --dir: the store `write_store` writes (or reuses), which
    binary_search.py and binary_floor.py search too; `store_dir` resolves --dir."""
    parser.add_argument("--n", type=int, default=10_000_000, help="vectors in the store (default 10M)")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--shards", type=int, default=20, help="shards the store is written in")
    parser.add_argument("--dir", type=Path, help="the store (default benchmarks/.cache/filtered-N-dim, shared by "
                                                 "filtered_search.py, binary_search.py and binary_floor.py)")


def store_dir(args: argparse.Namespace) -> Path:
    """--dir, or the store's default place for --n and --dim."""
    return args.dir or Path(__file__).resolve().parent / ".cache" / f"filtered-{args.n}-{args.dim}"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_store_arguments(parser)
    parser.add_argument("--queries", type=int, default=100, help="batch size (default 100)")
    parser.add_argument("--singles", type=int, default=20, help="single queries timed (median)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--skip-faiss", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    args.dir = store_dir(args)
    return args


# ---------------------------------------------------------------------------------------- the store


def shard_vectors(rng: np.random.Generator, rows: int, dim: int, mean: np.ndarray) -> np.ndarray:
    """float32 [rows, dim] unit vectors around a common mean direction."""
    x = rng.standard_normal((rows, dim), dtype=np.float32) + mean
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_store(directory: Path, n: int, dim: int, shards: int) -> float:
    """The store with stored fields; shards already written (same size) are kept. Seconds taken."""
    start = time.perf_counter()
    directory.mkdir(parents=True, exist_ok=True)
    mean = np.random.default_rng(SEED).standard_normal(dim).astype(np.float32) * 0.5
    bounds = np.linspace(0, n, shards + 1).astype(np.int64)
    for number, (first, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
        path = directory / f"{store.shard_name(number)}.frt"
        if path.exists() and fastret.storage.index_file.read_header(path).count == stop - first:
            continue
        rng = np.random.default_rng([SEED, number])
        codes, scales = fastret.quantize_int8(shard_vectors(rng, int(stop - first), dim, mean))
        store.write_shard(directory, number, [f"pmid-{row}" for row in range(first, stop)], int(first), codes,
                          scales, None)
        rows = np.arange(first, stop)
        years = YEARS[0] + rows * (YEARS[1] - YEARS[0] + 1) // n
        table = pa.table({"year": pa.array(years, pa.int64()), "draw": pa.array(rng.integers(0, DRAWS, len(rows)))})
        add_fields(path, StoredFields(table, len(rows)))
        print(f"  shard {number}: rows {first:,} .. {stop:,}", flush=True)
    store.write_manifest(directory, {"dim": dim, "float16": False, "synthetic_seed": SEED}, complete=True,
                         shards=list(range(shards)))
    return time.perf_counter() - start


# ---------------------------------------------------------------------------------------- timing


def measure_fastret(index, queries: np.ndarray, args: argparse.Namespace) -> dict:
    """Per filter: evaluation seconds, single-query latency, batch time, and a check of the results."""
    out = {}
    for name, spec in FILTERS.items():
        start = time.perf_counter()
        masks = Filter(spec).masks(index.segments) if spec is not None else None
        evaluate = time.perf_counter() - start
        mask = None  # the passing rows of the whole store, for the check and for faiss
        if masks is not None:  # a segment whose every row passes has no mask (None)
            mask = np.concatenate([np.ones(len(s), bool) if m is None else m for s, m in zip(index.segments, masks)])
        passing = int(mask.sum()) if mask is not None else len(index)

        def search(q, masks=masks):
            return index.search(q, args.k, filter=masks)

        search(queries[:1])  # pages in what this filter reads
        single = median_latency(search, queries[: args.singles])
        batch = batch_seconds(search, queries)
        _, ids = search(queries)
        rows_ok = bool(mask is None or mask[ids].all()) and ids.shape == (len(queries), args.k)
        out[name] = {"passing_rows": passing, "selectivity": passing / len(index), "filter_seconds": evaluate,
                     "single_ms": single * 1e3, "batch_seconds": batch, "qps": len(queries) / batch,
                     "results_pass_the_filter": rows_ok, "mask": mask}
        print(f"fastret  {name:24s} passing {passing:>11,}  filter {evaluate * 1e3:8.1f} ms  "
              f"single {single * 1e3:8.2f} ms  batch {batch:7.3f} s", flush=True)
    return out


def faiss_engines(index, scale_rows: int = 1 << 16):
    """(name, build) pairs; build() returns a faiss index over the store's vectors (dequantized)."""
    import faiss

    segments = index.segments
    dim = index.dim

    def vectors():
        for segment in segments:
            for start in range(0, len(segment), scale_rows):
                codes = np.asarray(segment.codes[start:start + scale_rows], np.float32)
                yield codes * np.asarray(segment.scales[start:start + scale_rows])[:, None]

    def flat():
        # sized once and filled in place: add() in parts grows a std::vector, which may briefly
        # hold twice the 4 x N x dim bytes (more than this machine has at 10M x 384)
        built = faiss.IndexFlatIP(dim)
        built.codes.resize(len(index) * dim * 4)
        floats = faiss.rev_swig_ptr(built.codes.data(), len(index) * dim * 4).view(np.float32).reshape(-1, dim)
        start = 0
        for part in vectors():
            floats[start:start + len(part)] = part
            start += len(part)
        built.ntotal = len(index)
        return built

    def sq8_direct():
        largest = max(float(np.abs(part).max()) for part in vectors())
        built = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit_direct_signed, faiss.METRIC_INNER_PRODUCT)
        for part in vectors():
            built.add(np.clip(np.rint(part * (127.0 / largest)), -127, 127))
        return built

    return [("faiss IndexFlatIP", flat), ("faiss SQ8 direct signed", sq8_direct)]


def measure_faiss(index, queries: np.ndarray, fastret_results: dict, args: argparse.Namespace) -> dict:
    import faiss

    out = {}
    for engine, build in faiss_engines(index):
        start = time.perf_counter()
        built = build()
        print(f"{engine}: built in {time.perf_counter() - start:.1f} s", flush=True)
        out[engine] = {}
        for name, result in fastret_results.items():
            mask = result["mask"]
            params = None
            if mask is not None:
                bits = np.packbits(mask, bitorder="little")
                params = faiss.SearchParameters(sel=faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits)))

            def search(q, params=params):
                return built.search(np.ascontiguousarray(q, np.float32), args.k, params=params)

            single = median_latency(search, queries[: args.singles])
            batch = batch_seconds(search, queries)
            out[engine][name] = {"single_ms": single * 1e3, "batch_seconds": batch, "qps": len(queries) / batch}
            print(f"{engine:24s} {name:24s} single {single * 1e3:8.2f} ms  batch {batch:7.3f} s", flush=True)
        del built
    return out


def main() -> int:
    args = parse_args()
    command = shlex.join([sys.executable, *sys.argv])
    print(f"command: {command}\nstore: {args.dir}")
    write_seconds = write_store(args.dir, args.n, args.dim, args.shards)
    start = time.perf_counter()
    index = fastret.Index.load(args.dir, verify=False)
    load_seconds = time.perf_counter() - start
    queries = shard_vectors(np.random.default_rng(SEED + 1), args.queries, args.dim,
                            np.random.default_rng(SEED).standard_normal(args.dim).astype(np.float32) * 0.5)
    ours = measure_fastret(index, queries, args)
    theirs = {} if args.skip_faiss else measure_faiss(index, queries, ours, args)
    for name, result in ours.items():
        result.pop("mask")
        if name != "none":
            result["single_speedup_vs_unfiltered"] = ours["none"]["single_ms"] / result["single_ms"]
            result["batch_speedup_vs_unfiltered"] = ours["none"]["batch_seconds"] / result["batch_seconds"]
        for engine, rows in theirs.items():
            result[f"single_vs_{engine}"] = rows[name]["single_ms"] / result["single_ms"]
            result[f"batch_vs_{engine}"] = rows[name]["batch_seconds"] / result["batch_seconds"]
    print("\n| filter | passing | filter eval | fastret 1 query | vs unfiltered | fastret batch | vs unfiltered |"
          + "".join(f" {e} 1 query | {e} batch |" for e in theirs))
    print("|---|---:|---:|---:|---:|---:|---:|" + "---:|---:|" * len(theirs))
    for name, r in ours.items():
        cells = [name, f"{r['selectivity']:.2%}", f"{r['filter_seconds'] * 1e3:.1f} ms", f"{r['single_ms']:.2f} ms",
                 f"{r.get('single_speedup_vs_unfiltered', 1.0):.2f}x", f"{r['batch_seconds']:.3f} s",
                 f"{r.get('batch_speedup_vs_unfiltered', 1.0):.2f}x"]
        for engine, rows in theirs.items():
            cells += [f"{rows[name]['single_ms']:.2f} ms", f"{rows[name]['batch_seconds']:.3f} s"]
        print("| " + " | ".join(cells) + " |")
    report = {"command": command, "machine": cpu_info(), "simd_path": fastret.simd_path(),
              "n": args.n, "dim": args.dim, "shards": args.shards, "k": args.k, "batch": args.queries,
              "store_write_seconds": write_seconds, "load_seconds": load_seconds,
              "fastret": ours, "faiss": theirs, "load_average": os.getloadavg()}
    return finish([], args.json, report)


if __name__ == "__main__":
    sys.exit(main())
