"""What the benchmark scripts share: the machine's description, GPU-synchronized timing, cached
embeddings (of the bundled NFCorpus too), recall@k, and the acceptance verdicts with the JSON
report."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
import warnings
from pathlib import Path
from typing import Callable, NamedTuple

CACHE = Path(__file__).resolve().parent / ".cache"


def cpu_info() -> dict:
    """CPU model, its matmul-relevant flags, logical and usable CPUs, RAM and the Python version."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    models = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    mem_kb = next((int(line.split()[1]) for line in meminfo.splitlines() if line.startswith("MemTotal")), 0)
    return {
        "cpu": models[0] if models else platform.processor(),
        "cpu_matmul_flags": [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16") if f in flags],
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "ram_gib": round(mem_kb / 2**20, 1),
        "python": platform.python_version(),
    }


def median_latency(search: Callable, queries) -> float:
    """Median seconds of one-query searches: search(query[None]) for each query (numpy rows)."""
    times = []
    for query in queries:
        start = time.perf_counter()
        search(query[None])
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def batch_seconds(search: Callable, queries) -> float:
    """Seconds of one search(queries) call."""
    start = time.perf_counter()
    search(queries)
    return time.perf_counter() - start


def timed(fn):
    """fn, waiting for the GPU to finish so that the benchmark times the work, not the launch."""
    import torch  # here, so that the CPU-only search benchmark does not load torch

    if not torch.cuda.is_available():
        return fn

    def run():
        out = fn()
        torch.cuda.synchronize()
        return out

    return run


def chunked_matmul_topk(corpus, queries, k: int, chunk_rows: int):
    """Exact search the float way (what faiss's flat indexes do, on the CPU or a GPU): queries
    [q, d] x corpus [n, d] (torch tensors of one dtype) a chunk of corpus rows at a time, each
    chunk's top k merged with the best so far. Returns (scores float32 [q, k], row ids int64 [q, k])."""
    import torch

    best_scores = best_ids = None
    for start in range(0, corpus.shape[0], chunk_rows):
        top = (queries @ corpus[start:start + chunk_rows].T).topk(k, dim=1)
        values, ids = top.values.float(), top.indices + start
        if best_scores is not None:
            values, ids = torch.cat([best_scores, values], 1), torch.cat([best_ids, ids], 1)
            values, take = values.topk(k, dim=1)
            ids = ids.gather(1, take)
        best_scores, best_ids = values, ids
    return best_scores, best_ids


def cached_embeddings(encoder, texts: list[str], name: str):
    """`encoder.encode(texts)` as float32 numpy, cached under benchmarks/.cache/ by model and content
    (written to a temporary name and renamed, so an interrupted run leaves no half file)."""
    import numpy as np

    key = hashlib.sha256(("\n".join(texts) + str(encoder.model_dir)).encode()).hexdigest()[:16]
    path = CACHE / f"{name}-{key}.npy"
    if path.exists():
        return np.load(path)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*were truncated")
        vectors = encoder.encode(texts, batch_size=32, show_progress_bar=True)
    CACHE.mkdir(exist_ok=True)
    partial = path.with_suffix(".partial.npy")
    np.save(partial, vectors)
    os.replace(partial, path)
    return vectors


class EmbeddedNFCorpus(NamedTuple):
    splits: dict  # {"dev" | "test": BeirDataset}, sharing one corpus
    encoder: object  # the fastret.Encoder that embedded them
    documents: list  # the corpus's texts
    doc_vectors: object  # float32 [n, d]
    queries: dict  # {split: (query ids, query texts, float32 vectors [q, d])}


def embedded_nfcorpus() -> EmbeddedNFCorpus:
    """The bundled NFCorpus dev and test splits with their documents and queries embedded by
    all-MiniLM-L6-v2 (fp32 fastret.Encoder), through `cached_embeddings`."""
    import fastret
    from fastret.corpus import BUNDLED_NFCORPUS, load_beir
    from fastret.encode.presets import default_model_path

    splits = {split: load_beir(BUNDLED_NFCORPUS, split) for split in ("dev", "test")}
    encoder = fastret.Encoder(default_model_path())
    documents = splits["test"].corpus.documents()
    doc_vectors = cached_embeddings(encoder, documents, "nfcorpus-docs")
    queries = {}
    for split, dataset in splits.items():
        query_ids = list(dataset.queries)
        texts = [dataset.queries[q] for q in query_ids]
        queries[split] = (query_ids, texts, cached_embeddings(encoder, texts, f"nfcorpus-{split}-queries"))
    return EmbeddedNFCorpus(splits, encoder, documents, doc_vectors, queries)


def recall_at_k(found, truth) -> float:
    """Mean over queries of |found_i & truth_i| / k (ids [q, k] each, numpy)."""
    hits = (found[:, :, None] == truth[:, None, :]).any(axis=2)
    return float(hits.sum() / truth.size)


def json_argument(doc: str) -> Path | None:
    """The --json PATH of a script that takes nothing else (`doc`: its module docstring)."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=None, help="write every number to this JSON file")
    return parser.parse_args().json


def verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def finish(checks: list[tuple[str, str]], json_path: Path | None, report: dict) -> int:
    """Print the (status, description) checks, write `report` + the checks to `json_path` (if
    given), and return the exit status: 1 if any check FAILed, else 0."""
    print()
    for status, text in checks:
        print(f"{status}  {text}")
    if json_path:
        report = {**report, "acceptance": [{"status": status, "check": text} for status, text in checks]}
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {json_path}")
    return 1 if any(status == "FAIL" for status, _ in checks) else 0


def run_fuzz(doc: str, fuzz: Callable, cases: int, case_timeout: float) -> int:
    """The command line of a fuzz script (--cases, --seed, --case-timeout, --json): runs
    `fuzz(cases, seed, workdir, case_timeout)` in a temporary folder, prints the outcome counts it
    returns, and writes them with the command, seed and time to --json."""
    import argparse
    import sys
    import tempfile

    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=cases)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--case-timeout", type=float, default=case_timeout)
    parser.add_argument("--json", type=Path, default=None, help="write the outcome counts here")
    args = parser.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        counts = fuzz(args.cases, args.seed, Path(workdir), args.case_timeout)
    report = {"command": " ".join(sys.argv), "cases": args.cases, "seed": args.seed,
              "seconds": round(time.perf_counter() - start, 1), "failures": 0, "outcomes": dict(sorted(counts.items()))}
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0
