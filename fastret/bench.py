"""`fastret bench`: speed next to the usual baselines, measured in the same run, printed as ratios.

Search: exact int8 `Index` against faiss IndexFlatIP and 8-bit SQ (when faiss is installed) on random
unit vectors: batch QPS and one-query latency. With --gpu: the CUDA path against a chunked torch
float16 matmul + top-k (what a flat GPU index does). Encode: `Encoder` against sentence-transformers
(when installed) on NFCorpus documents: documents/s in the same dtype, and on the CPU also fastret
with int8 linear layers, and bf16 where the CPU has bf16 instructions.

The detailed, acceptance-checking versions are the scripts in benchmarks/.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import numpy as np

from .cpu import bf16_instruction_sets


def _best_seconds(run: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def _median_seconds(run_one: Callable[[int], object], count: int) -> float:
    times = []
    for i in range(count):
        start = time.perf_counter()
        run_one(i)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def search_engines(docs: np.ndarray, k: int, gpu: bool) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """name -> search(queries) returning ids [q, k]; the first entry is the baseline."""
    from .search.index import Index

    engines: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    if gpu:
        import torch

        device_docs = torch.from_numpy(docs).cuda().half()

        def torch_fp16(queries):
            scores = torch.from_numpy(queries).cuda().half() @ device_docs.T
            ids = scores.topk(k, dim=1).indices
            torch.cuda.synchronize()
            return ids.cpu().numpy()

        engines["torch fp16 matmul + topk (GPU)"] = torch_fp16
    else:
        try:
            import faiss
        except ImportError:
            faiss = None
        if faiss is not None:
            flat = faiss.IndexFlatIP(docs.shape[1])
            flat.add(docs)
            engines["faiss IndexFlatIP"] = lambda q: flat.search(q, k)[1]
            sq8 = faiss.IndexScalarQuantizer(docs.shape[1], faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
            sq8.train(docs)
            sq8.add(docs)
            engines["faiss SQ8"] = lambda q: sq8.search(q, k)[1]
    index = Index(docs.shape[1])
    index.add(docs)
    if gpu:
        import torch

        def fastret_gpu(queries):
            ids = index.search(torch.from_numpy(queries).cuda(), k)[1]
            torch.cuda.synchronize()
            return ids.cpu().numpy()

        engines["fastret int8 (GPU)"] = fastret_gpu
    else:
        engines["fastret int8"] = lambda q: index.search(q, k)[1]
    return engines


def bench_search(n: int, dim: int, n_queries: int, k: int = 10, repeats: int = 3, gpu: bool = False) -> list[dict]:
    """Batch QPS, one-query latency and recall@k against exact float32 search, per engine."""
    docs, queries = unit_vectors(n, dim, 0), unit_vectors(n_queries, dim, 1)
    truth = np.argsort(-(queries @ docs.T), axis=1)[:, :k]
    engines = search_engines(docs, k, gpu)
    rows = []
    for name, search in engines.items():
        found = search(queries)  # warm-up and correctness
        recall = float((found[:, :, None] == truth[:, None, :]).any(axis=2).mean())
        batch = _best_seconds(lambda: search(queries), repeats)
        single = _median_seconds(lambda i: search(queries[i % n_queries : i % n_queries + 1]), 30)
        rows.append({"engine": name, "qps": n_queries / batch, "latency_ms": single * 1e3, "recall": recall})
    base = rows[0]
    for row in rows:
        row["qps_vs_first"] = row["qps"] / base["qps"]
        row["latency_vs_first"] = row["latency_ms"] / base["latency_ms"]
    return rows


def bench_encode(model_path, docs: list[str], batch_size: int, gpu: bool, repeats: int = 2) -> list[dict]:
    """Documents/s of sentence-transformers (if installed) and fastret on the same texts and dtype."""
    import torch

    from .encode.encoder import Encoder

    device = "cuda" if gpu else "cpu"
    dtype = torch.float16 if gpu else torch.float32
    engines: dict[str, Callable[[], object]] = {}
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        SentenceTransformer = None
    if SentenceTransformer is not None:
        st = SentenceTransformer(str(model_path), device=device).to(dtype)
        engines[f"sentence-transformers ({dtype})"] = lambda: st.encode(docs, batch_size=batch_size)
    encoder = Encoder(model_path, device=device, dtype=dtype)
    engines[f"fastret ({dtype})"] = lambda: encoder.encode(docs, batch_size=batch_size)
    if not gpu:
        int8 = Encoder(model_path, device=device, quantize="int8")
        engines["fastret (int8 linear layers)"] = lambda: int8.encode(docs, batch_size=batch_size)
    if not gpu and bf16_instruction_sets():  # emulated, and slower than float32, elsewhere
        fast = Encoder(model_path, device=device, dtype=torch.bfloat16)
        engines["fastret (torch.bfloat16)"] = lambda: fast.encode(docs, batch_size=batch_size)
    for run in engines.values():  # warm-up
        run()
    seconds = {name: float("inf") for name in engines}
    for _ in range(repeats):  # interleaved, so noise hits every engine alike
        for name, run in engines.items():
            seconds[name] = min(seconds[name], _best_seconds(run, 1))
    base = next(iter(seconds.values()))
    return [{"engine": name, "docs_per_s": len(docs) / s, "vs_first": base / s} for name, s in seconds.items()]


def markdown(rows: list[dict], columns: dict[str, str]) -> str:
    """A markdown table of `rows`, with column headers from `columns` (key -> title)."""
    lines = ["| " + " | ".join(columns.values()) + " |", "|---" + "|---:" * (len(columns) - 1) + "|"]
    for row in rows:
        cells = []
        for key in columns:
            value = row[key]
            cells.append(value if isinstance(value, str) else (f"{value:.2f}x" if "vs" in key else f"{value:,.3f}"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
