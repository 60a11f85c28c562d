"""pytest-benchmark suite: fastret's int8 search and quantization next to faiss.

    .venv/bin/python -m pytest benchmarks/bench_search.py --benchmark-only

Corpus: 200k x 768 random unit vectors (module fixtures, built once). Each benchmark checks its
engine's results before timing it: fastret must return exactly the ids of the numpy int8
reference `fastret.topk_int8_ref` and reach recall@10 >= 0.95 against exact float search; faiss
flat must match exact float search and faiss SQ8 reach recall@10 >= 0.95. fastret and faiss share
a benchmark group per workload so the report compares them side by side. Both libraries run
with the same number of threads (all usable cores). faiss benchmarks skip if faiss is missing.
"""

from __future__ import annotations

import os

# Before numpy/faiss/fastret load OpenMP: faiss bundles its own runtime, and with the default
# (active) wait policy each runtime's idle threads spin and steal the cores from the other.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import fastret  # noqa: E402

N, DIM, K = 200_000, 768, 10
BATCH = 256
QUANTIZE_ROWS = 10_000
CHECKED_QUERIES = 4  # queries compared id for id with the (slow) numpy int8 reference
THREADS = len(os.sched_getaffinity(0))

SINGLE_GROUP = f"search 1 query ({N // 1000}k x {DIM}, k={K})"
BATCH_GROUP = f"search {BATCH} queries ({N // 1000}k x {DIM}, k={K})"


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    """float32 [n, dim] standard-normal rows scaled to unit length."""
    x = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found_i & truth_i| / k (ids [q, k] each)."""
    return float((found[:, :, None] == truth[:, None, :]).any(axis=2).mean())


# ---------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def corpus() -> np.ndarray:
    return unit_vectors(N, DIM, seed=0)


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    return unit_vectors(BATCH, DIM, seed=1)


@pytest.fixture(scope="module")
def exact_ids(corpus, queries) -> np.ndarray:
    """Exact float32 top-K ids of every query, best first."""
    scores = queries @ corpus.T
    top = np.argpartition(-scores, K, axis=1)[:, :K]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


@pytest.fixture(scope="module")
def int8_corpus(corpus):
    return fastret.quantize_int8(corpus)


@pytest.fixture(scope="module")
def int8_reference_ids(int8_corpus, queries) -> np.ndarray:
    codes, scales = int8_corpus
    return fastret.topk_int8_ref(queries[:CHECKED_QUERIES], codes, scales, K)[1]


@pytest.fixture(scope="module")
def fastret_index(int8_corpus) -> fastret.Index:
    fastret.set_num_threads(THREADS)
    index = fastret.Index(DIM)
    index.add(int8_corpus)
    return index


@pytest.fixture(scope="module")
def faiss():
    faiss = pytest.importorskip("faiss", reason="faiss-cpu is not installed (pip install faiss-cpu)")
    faiss.omp_set_num_threads(THREADS)
    return faiss


@pytest.fixture(scope="module")
def faiss_flat(faiss, corpus):
    index = faiss.IndexFlatIP(DIM)
    index.add(corpus)
    return index


@pytest.fixture(scope="module")
def faiss_sq8(faiss, corpus):
    index = faiss.IndexScalarQuantizer(DIM, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    index.train(corpus)
    index.add(corpus)
    return index


# ---------------------------------------------------------------------------------------- checks


def check_fastret(index: fastret.Index, queries, int8_reference_ids, exact_ids) -> None:
    """Exact agreement with the numpy int8 reference, and recall@K vs float search."""
    ids = index.search(queries, K)[1]
    np.testing.assert_array_equal(ids[:CHECKED_QUERIES], int8_reference_ids)
    assert recall_at_k(ids, exact_ids[: len(ids)]) >= 0.95


def check_faiss(index, queries, exact_ids, min_recall: float) -> None:
    ids = index.search(queries, K)[1]
    assert recall_at_k(ids, exact_ids[: len(ids)]) >= min_recall


# ---------------------------------------------------------------------------------------- search


@pytest.mark.benchmark(group=SINGLE_GROUP)
def test_fastret_search_one(benchmark, fastret_index, queries, int8_reference_ids, exact_ids):
    check_fastret(fastret_index, queries, int8_reference_ids, exact_ids)
    benchmark.extra_info["threads"] = fastret.get_num_threads()
    scores, ids = benchmark(fastret_index.search, queries[:1], K)
    np.testing.assert_array_equal(ids, int8_reference_ids[:1])


@pytest.mark.benchmark(group=SINGLE_GROUP)
def test_faiss_flat_search_one(benchmark, faiss, faiss_flat, queries, exact_ids):
    check_faiss(faiss_flat, queries, exact_ids, min_recall=0.999)
    benchmark.extra_info["threads"] = faiss.omp_get_max_threads()
    benchmark(faiss_flat.search, queries[:1], K)


@pytest.mark.benchmark(group=BATCH_GROUP)
def test_fastret_search_batch(benchmark, fastret_index, queries, int8_reference_ids, exact_ids):
    check_fastret(fastret_index, queries, int8_reference_ids, exact_ids)
    benchmark.extra_info.update(threads=fastret.get_num_threads(), queries_per_call=BATCH)
    scores, ids = benchmark(fastret_index.search, queries, K)
    assert ids.shape == (BATCH, K)


@pytest.mark.benchmark(group=BATCH_GROUP)
def test_faiss_flat_search_batch(benchmark, faiss, faiss_flat, queries, exact_ids):
    check_faiss(faiss_flat, queries, exact_ids, min_recall=0.999)
    benchmark.extra_info.update(threads=faiss.omp_get_max_threads(), queries_per_call=BATCH)
    benchmark(faiss_flat.search, queries, K)


@pytest.mark.benchmark(group=BATCH_GROUP)
def test_faiss_sq8_search_batch(benchmark, faiss, faiss_sq8, queries, exact_ids):
    check_faiss(faiss_sq8, queries, exact_ids, min_recall=0.95)
    benchmark.extra_info.update(threads=faiss.omp_get_max_threads(), queries_per_call=BATCH)
    benchmark(faiss_sq8.search, queries, K)


# ---------------------------------------------------------------------------------------- quantize


@pytest.mark.benchmark(group=f"quantize_int8 {QUANTIZE_ROWS // 1000}k x {DIM}")
def test_quantize_int8(benchmark, corpus):
    x = corpus[:QUANTIZE_ROWS]
    codes, scales = benchmark(fastret.quantize_int8, x)
    assert codes.dtype == np.int8 and codes.shape == x.shape and scales.shape == (QUANTIZE_ROWS,)
    assert np.abs(codes.astype(np.int16)).max() <= 127
    error = np.abs(codes * scales[:, None] - x)
    assert (error <= scales[:, None] * (0.5 + 1e-5)).all()
