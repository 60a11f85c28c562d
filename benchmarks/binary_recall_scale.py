"""Recall of the binary first stage against exact int8 search as the corpus grows (100k, 1M, 10M
rows), on three kinds of data, with single-query times: the evidence behind oversample="auto".

    .venv/bin/python benchmarks/binary_recall_scale.py \
        --json benchmarks/results/2026-12-06-cpu-binary-recall-scale.json --figure docs/binary-recall.png

The data (two mapped stores under --dir, written once and reused; each size is the first shards
of its store, so a smaller corpus is a prefix of a larger one):

    clustered    N x 384 unit vectors: one of 2,000 Gaussian centres (N(0, 1) per dimension) plus
                 noise 0.8 per dimension plus a common mean (N(0, 0.5^2) per dimension, as
                 embedding models' vectors are not centred), normalised. Queries are drawn the same
                 way.
    planted      the clustered store, with queries at cosine 0.9, 0.7 and 0.5 (a third each) to a
                 stored row among the first 100k (so it is in every size): how a near-duplicate, a
                 paraphrase and a loose match fare.
    embeddings   real all-MiniLM-L6-v2 embeddings (NFCorpus's 3,633 documents and the ~2,100
                 MeSH-labelled abstracts of ../shared/data) first, then distractors drawn from the
                 Gaussian fitted to them (their mean and covariance), normalised: the density of
                 competitors grows as it would in a real corpus. Queries: NFCorpus's test queries.

For each size, kind, query bits B (1, 2, 4) and oversample (5 .. 4,000; recall@100 up to 400): recall@10
and recall@100 of the binary first stage (k x oversample candidates by the B-bit score, re-ranked by exact int8
score: fastret.search.core.binary_candidates, as Index.search runs it) against exact int8 search,
the batch's queries per second, and one query's time (median of --singles; exact int8's beside it).

The rule behind oversample="auto" (fastret.search.binary.auto_oversample): at each size, the
smallest oversample of the grid whose recall@10 >= 0.99 on every kind, at the query bits whose
single query is then fastest; auto_oversample must reach it at every size measured (the script
checks, and checks recall and speed at the library's defaults). The figure: recall@10 against
oversample, one line per size, and the time of one query beside it. --grid JSON takes the sweep
from an earlier run and measures only exact int8 and the defaults (after a default changed).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

import fastret
from fastret.search import binary
from fastret.search.core import binary_candidates
from fastret.storage import index_file, store
from harness import CACHE, cached_embeddings, cpu_info, embedded_nfcorpus, finish, median_latency, recall_at_k, verdict

SEED = 20261206
KINDS = ("clustered", "planted", "embeddings")
STORE_OF = {"clustered": "clustered", "planted": "clustered", "embeddings": "embeddings"}
OVERSAMPLES = (5, 10, 20, 50, 100, 200, 400, 1000, 2000, 4000)
# recall@100 is measured up to this oversample (100 x 4,000 candidates a query would take hours at 10M)
RECALL_100_UP_TO = 400
QUERY_BITS = (1, 2, 4)
CENTRES = 2000
NOISE = 0.8
PLANTED_COSINES = (0.9, 0.7, 0.5)
RECALL_TARGET = 0.99
MESH_ABSTRACTS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mesh_abstracts"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000,10000000", help="corpus sizes, comma-separated")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=300, help="queries per kind (recall)")
    parser.add_argument("--singles", type=int, default=10, help="single queries timed per setting (median)")
    parser.add_argument("--oversamples", default=",".join(map(str, OVERSAMPLES)),
                        help="the grid (empty: only exact int8 and the defaults, e.g. for a 36M store)")
    parser.add_argument("--query-bits", default=",".join(map(str, QUERY_BITS)))
    parser.add_argument("--check-size", type=int, default=2_000_000,
                        help="the clustered size of the issue's table, checked at the defaults (0: skip)")
    parser.add_argument("--dir", type=Path, default=CACHE / "binary-recall", help="where the stores live")
    parser.add_argument("--grid", type=Path, default=None,
                        help="take the sweep from this earlier --json of the script (same sizes, kinds and queries) "
                             "and measure only exact int8 and the defaults: after a default changed")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--figure", type=Path, default=None, help="write the recall / time picture here (PNG)")
    args = parser.parse_args()
    args.sizes = sorted(int(s) for s in args.sizes.split(","))
    args.kinds = [k for k in args.kinds.split(",") if k]
    args.oversamples = [int(s) for s in args.oversamples.split(",") if s]
    args.query_bits = [int(s) for s in args.query_bits.split(",")]
    args.grid_report = json.loads(args.grid.read_text()) if args.grid else None
    if args.grid_report:
        cells = [c for kind in args.grid_report["results"].values() for size in kind.values()
                 for c in size["binary"].values()]
        args.oversamples = sorted({c["oversample"] for c in cells})
        args.query_bits = sorted({c["query_bits"] for c in cells})
    unknown = set(args.kinds) - set(KINDS)
    if unknown:
        parser.error(f"unknown kinds {sorted(unknown)}; choose from {', '.join(KINDS)}")
    return args


# ---------------------------------------------------------------------------------------- data


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


class Clustered:
    """The clustered generator: `draw(rng, rows)` float32 unit vectors [rows, dim]."""

    def __init__(self, dim: int):
        rng = np.random.default_rng(SEED)
        self.centres = rng.standard_normal((CENTRES, dim), dtype=np.float32)
        self.mean = rng.standard_normal(dim, dtype=np.float32) * 0.5

    def draw(self, rng: np.random.Generator, rows: int) -> np.ndarray:
        x = rng.standard_normal((rows, self.centres.shape[1]), dtype=np.float32)
        x *= NOISE
        x += self.centres[rng.integers(0, CENTRES, rows)]
        x += self.mean
        return unit(x)


def real_embeddings() -> tuple[np.ndarray, np.ndarray]:
    """(documents float32 [~5,700, 384], NFCorpus test queries float32 [323, 384]): all-MiniLM-L6-v2
    embeddings of NFCorpus's corpus and the MeSH-labelled abstracts, and of NFCorpus's test queries."""
    nfcorpus = embedded_nfcorpus()
    texts = []
    for path in sorted(MESH_ABSTRACTS.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            texts.append(f"{record.get('title', '')} {record.get('abstract', '')}".strip())
    abstracts = cached_embeddings(nfcorpus.encoder, texts, "mesh-abstracts") if texts else np.empty((0, 384))
    documents = np.concatenate([nfcorpus.doc_vectors, abstracts]).astype(np.float32)
    return documents, np.asarray(nfcorpus.queries["test"][2], np.float32)


class FittedGaussian:
    """Distractors from the Gaussian fitted to real embeddings (their mean and covariance), normalised."""

    def __init__(self, real: np.ndarray):
        self.mean = real.mean(axis=0)
        covariance = np.cov(real, rowvar=False) + 1e-6 * np.eye(real.shape[1])
        self.factor = np.linalg.cholesky(covariance).astype(np.float32)

    def draw(self, rng: np.random.Generator, rows: int) -> np.ndarray:
        z = rng.standard_normal((rows, len(self.mean)), dtype=np.float32)
        return unit(z @ self.factor.T + self.mean)


def shard_bounds(n: int) -> list[int]:
    """Row bounds of the store's shards: 100k, then 1M each, so every size asked for is a prefix."""
    return sorted({0, min(100_000, n), *range(1_000_000, n, 1_000_000), n})


def write_store(directory: Path, n: int, dim: int, first_rows: np.ndarray | None, generator) -> None:
    """The store of `n` rows (shards already written with the right size are kept): `first_rows`
    (float32, optional) at the start, then `generator.draw` rows, shard s from seed [SEED, s]. A
    store of more rows is left as it is: its first shards are this one's."""
    if (directory / store.MANIFEST).exists() and len(store.read_manifest(directory)["shards"]) >= len(shard_bounds(n)) - 1:
        return
    directory.mkdir(parents=True, exist_ok=True)
    bounds = shard_bounds(n)
    for number, (first, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
        path = directory / f"{store.shard_name(number)}.frt"
        if path.exists() and index_file.read_header(path).count == stop - first:
            continue
        rng = np.random.default_rng([SEED, number])
        parts, done = [], first
        if first_rows is not None and first < len(first_rows):
            parts.append(first_rows[first:stop])
            done += len(parts[0])
        for start in range(done, stop, 250_000):
            parts.append(generator.draw(rng, min(250_000, stop - start)))
        codes, scales = fastret.quantize_int8(np.concatenate(parts))
        store.write_shard(directory, number, [f"row-{row}" for row in range(first, stop)], first, codes, scales, None)
        print(f"  {directory.name} shard {number}: rows {first:,} .. {stop:,}", flush=True)
    store.write_manifest(directory, {"dim": dim, "float16": False, "synthetic_seed": SEED}, complete=True,
                         shards=list(range(len(bounds) - 1)))
    store.write_missing_bits(directory, show_progress_bar=True)


def planted_queries(index, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """float32 [count, dim] unit queries at PLANTED_COSINES (a third each) to stored rows among the
    first 100k (as stored: codes x scale), and those rows' ids."""
    first = index.segments[0]
    rows = rng.choice(min(len(first), 100_000), count, replace=False)
    cosines = np.array(PLANTED_COSINES)[np.arange(count) % len(PLANTED_COSINES)]
    stored = unit(np.asarray(first.codes[np.sort(rows)], np.float32))[np.argsort(np.argsort(rows))]
    noise = rng.standard_normal(stored.shape).astype(np.float32)
    noise -= (noise * stored).sum(axis=1, keepdims=True) * stored
    noise = unit(noise)
    queries = cosines[:, None] * stored + np.sqrt(1 - cosines[:, None] ** 2) * noise
    return queries.astype(np.float32), np.asarray(first.ids)[rows]


# ---------------------------------------------------------------------------------------- measuring


def measure_size(index, queries: np.ndarray, args: argparse.Namespace, grid: dict | None = None) -> dict:
    """Exact int8's time and top-100, then recall@10 / @100 and times of every (query bits,
    oversample) on one prefix index (taken from `grid`, an earlier run's, when given), and the defaults."""
    q_codes, q_scales = (np.asarray(a) for a in fastret.quantize_queries(queries))
    index.search(queries[:1], 10)  # pages the codes in: every setting then runs with them in memory
    exact_single = median_latency(lambda q: index.search(q, 10), queries[: max(3, args.singles // 2)])
    _, truth = index.search(queries, 100)
    out = {"rows": len(index), "exact_int8": {"single_ms": exact_single * 1e3}, "binary": grid or {}}
    for bits in [] if grid or not args.oversamples else args.query_bits:
        for oversample in args.oversamples:
            def search(q, k=10, bits=bits, oversample=oversample):
                codes, scales = fastret.quantize_queries(q)
                return binary_candidates(index.segments, np.asarray(codes), np.asarray(scales), k,
                                         oversample=oversample, query_bits=bits)[1]
            start = time.perf_counter()
            found10 = binary_candidates(index.segments, q_codes, q_scales, 10, oversample=oversample,
                                        query_bits=bits)[1]
            batch = time.perf_counter() - start
            recall100 = None
            if oversample <= RECALL_100_UP_TO:
                recall100 = recall_at_k(binary_candidates(index.segments, q_codes, q_scales, 100, oversample=oversample,
                                                          query_bits=bits)[1], truth)
            row = {"recall@10": recall_at_k(found10, truth[:, :10]), "recall@100": recall100,
                   "batch_qps": len(queries) / batch, "single_ms": median_latency(search, queries[: args.singles]) * 1e3}
            out["binary"][f"{bits}-bit x{oversample}"] = {"query_bits": bits, "oversample": oversample, **row}
        cells = [out["binary"][f"{bits}-bit x{o}"] for o in args.oversamples]
        print(f"  {len(index):>11,} rows {bits}-bit: " + "  ".join(
            f"x{c['oversample']} {c['recall@10']:.3f}/{c['single_ms']:.1f}ms" for c in cells)
            + f"  (exact {exact_single * 1e3:.1f} ms)", flush=True)
    out["defaults"] = measure_defaults(index, queries, truth, args.singles)
    return out


def measure_defaults(index, queries: np.ndarray, truth: np.ndarray, singles: int) -> dict:
    """Index.search(first_stage="binary") at the library's defaults: recall@10 and @100 (k = 10 and
    100), and one query's time at each k (exact int8's at k = 100 beside it)."""
    found10 = index.search(queries, 10, first_stage="binary")[1]
    found100 = index.search(queries, 100, first_stage="binary")[1]
    single = median_latency(lambda q: index.search(q, 10, first_stage="binary"), queries[:singles])
    single100 = median_latency(lambda q: index.search(q, 100, first_stage="binary"), queries[:singles])
    exact100 = median_latency(lambda q: index.search(q, 100), queries[: max(3, singles // 2)])
    out = {"oversample": binary.auto_oversample(len(index), 10), "oversample_k100": binary.auto_oversample(len(index), 100),
           "query_bits": binary.DEFAULT_QUERY_BITS, "recall@10": recall_at_k(found10, truth[:, :10]),
           "recall@100": recall_at_k(found100, truth), "single_ms": single * 1e3, "single_ms_k100": single100 * 1e3,
           "exact_int8_single_ms_k100": exact100 * 1e3}
    print(f"  {len(index):>11,} rows defaults (oversample {out['oversample']}, {out['oversample_k100']} at k = 100): "
          f"recall@10 {out['recall@10']:.4f} @100 {out['recall@100']:.4f}, one query {out['single_ms']:.1f} ms "
          f"(k = 100: {out['single_ms_k100']:.1f} ms, exact {out['exact_int8_single_ms_k100']:.1f} ms)", flush=True)
    return out


def needed_oversample(results: dict, size: int, bits: int, kinds: list[str], oversamples: list[int]) -> int | None:
    """The smallest oversample of the grid with recall@10 >= RECALL_TARGET on every kind (None: none)."""
    for oversample in oversamples:
        if all(results[kind][str(size)]["binary"][f"{bits}-bit x{oversample}"]["recall@10"] >= RECALL_TARGET
               for kind in kinds):
            return oversample
    return None


def the_rule(results: dict, args: argparse.Namespace) -> dict:
    """Per size: the oversample each query-bit count needs, its single-query time (slowest kind),
    and the query bits whose needed oversample is fastest."""
    out = {}
    for size in args.sizes:
        per_bits = {}
        for bits in args.query_bits:
            needed = needed_oversample(results, size, bits, args.kinds, args.oversamples)
            time_ms = None if needed is None else max(
                results[kind][str(size)]["binary"][f"{bits}-bit x{needed}"]["single_ms"] for kind in args.kinds)
            per_bits[str(bits)] = {"needed_oversample": needed, "single_ms": time_ms}
        timed = [(row["single_ms"], int(bits)) for bits, row in per_bits.items() if row["single_ms"] is not None]
        out[str(size)] = {"per_query_bits": per_bits, "fastest_query_bits": min(timed)[1] if timed else None,
                          "auto_oversample": binary.auto_oversample(size, 10)}
        print(f"{size:>11,} rows: needed " + ", ".join(
            f"{b}-bit x{r['needed_oversample']}" for b, r in per_bits.items())
            + f"; fastest {out[str(size)]['fastest_query_bits']}-bit; auto gives x{out[str(size)]['auto_oversample']}")
    return out


def draw_figure(results: dict, args: argparse.Namespace, path: Path) -> None:
    """recall@10 against oversample (one line per size, the worst kind, 1-bit queries) and one
    query's time against oversample, with exact int8's times as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bits = binary.DEFAULT_QUERY_BITS
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for position, size in enumerate(args.sizes):
        color = f"C{position}"
        rows = [[results[kind][str(size)]["binary"][f"{bits}-bit x{o}"] for o in args.oversamples] for kind in args.kinds]
        worst = [min(r[i]["recall@10"] for r in rows) for i in range(len(args.oversamples))]
        slowest = [max(r[i]["single_ms"] for r in rows) for i in range(len(args.oversamples))]
        label = f"{size:,} rows"
        left.plot(args.oversamples, worst, "o-", color=color, label=label)
        auto = binary.auto_oversample(size, 10)
        left.axvline(auto, color=color, linestyle=":", linewidth=1)
        right.plot(args.oversamples, slowest, "o-", color=color, label=f"binary, {label}")
        exact = max(results[kind][str(size)]["exact_int8"]["single_ms"] for kind in args.kinds)
        right.axhline(exact, color=color, linestyle="--", linewidth=1, label=f"exact int8, {label}")
    left.axhline(RECALL_TARGET, color="grey", linewidth=0.8)
    for axis in (left, right):
        axis.set_xscale("log")
        axis.set_xlabel("oversample (candidates per result)")
    left.set_ylabel("recall@10 vs exact int8 (worst of the kinds)")
    left.set_title("recall; dotted: oversample=\"auto\"")
    right.set_yscale("log")
    right.set_ylabel("one query, ms (slowest kind)")
    right.set_title("time of one query (mapped store, in memory)")
    left.legend(fontsize=8)
    right.legend(fontsize=7)
    machine = cpu_info()
    figure.suptitle(f"fastret binary first stage, {bits}-bit queries, k = 10, dim {args.dim}: {machine['cpu']}, "
                    f"{machine['usable_cpus']} cores", fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    figure.savefig(partial, dpi=110, format="png")
    partial.replace(path)
    print(f"wrote {path}")


# ---------------------------------------------------------------------------------------- the run


def main() -> int:
    args = parse_args()
    command = shlex.join([sys.executable, *sys.argv])
    print(f"command: {command}")
    largest = max(args.sizes + [args.check_size])
    rng = np.random.default_rng(SEED + 1)
    clustered = Clustered(args.dim)
    stores, queries_of, planted_ids = {}, {}, None
    if {"clustered", "planted"} & set(args.kinds):
        stores["clustered"] = args.dir / f"clustered-{args.dim}"
        write_store(stores["clustered"], largest, args.dim, None, clustered)
        queries_of["clustered"] = clustered.draw(rng, args.queries)
    if "embeddings" in args.kinds:
        real, real_queries = real_embeddings()
        stores["embeddings"] = args.dir / f"embeddings-{args.dim}"
        write_store(stores["embeddings"], max(args.sizes), args.dim, real, FittedGaussian(real))
        queries_of["embeddings"] = real_queries[: args.queries]

    results: dict = {}
    for kind in args.kinds:
        whole = fastret.Index.load(stores[STORE_OF[kind]], verify=False)
        if kind == "planted":
            queries_of["planted"], planted_ids = planted_queries(whole, args.queries, rng)
        results[kind] = {}
        for size in args.sizes:
            bounds = shard_bounds(size)
            index = fastret.Index.from_segments(whole.segments[: len(bounds) - 1], args.dim, False)
            print(f"{kind}, {len(index):,} rows, {len(queries_of[kind])} queries", flush=True)
            grid = args.grid_report["results"][kind][str(size)]["binary"] if args.grid_report else None
            results[kind][str(size)] = measure_size(index, queries_of[kind], args, grid)
            if kind == "planted":
                found = index.search(queries_of[kind], 10, first_stage="binary")[1]
                results[kind][str(size)]["defaults"]["planted_row_in_top_10"] = {
                    str(c): float((found == planted_ids[:, None]).any(axis=1)[i::len(PLANTED_COSINES)].mean())
                    for i, c in enumerate(PLANTED_COSINES)}
        del whole

    rule = the_rule(results, args) if args.oversamples else {}
    check_run = None
    if args.check_size and "clustered" in args.kinds:
        whole = fastret.Index.load(stores["clustered"], verify=False)
        index = fastret.Index.from_segments(whole.segments[: len(shard_bounds(args.check_size)) - 1], args.dim, False)
        queries = queries_of["clustered"]
        index.search(queries[:1], 10)
        exact_ms = median_latency(lambda q: index.search(q, 10), queries[: args.singles]) * 1e3
        truth = index.search(queries, 100)[1]
        check_run = {"rows": len(index), "exact_int8_single_ms": exact_ms, **measure_defaults(index, queries, truth,
                                                                                                args.singles)}
    if args.figure and args.oversamples:
        draw_figure(results, args, args.figure)

    checks = []
    for size in args.sizes:
        for kind in args.kinds:
            defaults = results[kind][str(size)]["defaults"]
            checks.append((verdict(size < 1_000_000 or defaults["recall@10"] >= RECALL_TARGET),
                           f"{kind}, {size:,} rows: recall@10 at the defaults {defaults['recall@10']:.4f} "
                           f"(>= {RECALL_TARGET} from 1M rows), @100 {defaults['recall@100']:.4f}"))
        if not rule:
            continue
        needed = rule[str(size)]["per_query_bits"][str(binary.DEFAULT_QUERY_BITS)]["needed_oversample"]
        auto = rule[str(size)]["auto_oversample"]
        checks.append((verdict(needed is not None and auto >= needed),
                       f"{size:,} rows: auto oversample x{auto} >= x{needed}, the smallest of the grid with "
                       f"recall@10 >= {RECALL_TARGET} on every kind at {binary.DEFAULT_QUERY_BITS}-bit queries"))
        checks.append((verdict(rule[str(size)]["fastest_query_bits"] == binary.DEFAULT_QUERY_BITS),
                       f"{size:,} rows: the fastest query bits at the needed oversample is "
                       f"{rule[str(size)]['fastest_query_bits']} (the default {binary.DEFAULT_QUERY_BITS})"))
    largest_size = str(max(args.sizes))
    for kind in args.kinds:
        row = results[kind][largest_size]
        speedup = row["exact_int8"]["single_ms"] / row["defaults"]["single_ms"]
        checks.append((verdict(int(largest_size) < 10_000_000 or speedup >= 5),
                       f"{kind}, {int(largest_size):,} rows mapped: one query at the defaults {speedup:.1f}x faster "
                       f"than exact int8 (>= 5x at 10M)"))
    if check_run:
        speedup = check_run["exact_int8_single_ms"] / check_run["single_ms"]
        checks.append((verdict(check_run["recall@10"] >= 0.95 and speedup >= 4),
                       f"clustered {check_run['rows']:,} rows (the issue's set): recall@10 at the defaults "
                       f"{check_run['recall@10']:.4f} (>= 0.95), one query {speedup:.1f}x faster than exact (>= 4x)"))
    report = {"command": command, "machine": cpu_info(), "simd_path": fastret.simd_path(),
              "threads": fastret.get_num_threads(), "dim": args.dim, "queries": args.queries,
              "data": {"centres": CENTRES, "noise": NOISE, "planted_cosines": PLANTED_COSINES},
              "recall_target": RECALL_TARGET, "results": results, "rule": rule, "issue_check": check_run,
              "auto": {"min": binary.AUTO_MIN, "at_1m": binary.AUTO_AT_1M, "growth": binary.AUTO_GROWTH},
              "grid_from": None if args.grid_report is None else {"file": str(args.grid),
                                                                   "command": args.grid_report["command"]}}
    return finish(checks, args.json, report)


if __name__ == "__main__":
    sys.exit(main())
