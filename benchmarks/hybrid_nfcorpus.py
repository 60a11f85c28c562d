"""Hybrid retrieval on NFCorpus: choose the fusion setting on the dev split, report it on test.

    .venv/bin/python benchmarks/hybrid_nfcorpus.py --json benchmarks/results/2026-11-30-cpu-hybrid-nfcorpus.json

all-MiniLM-L6-v2 (fp32, fastret.Encoder) embeds the bundled NFCorpus once (cached under
benchmarks/.cache/); the dense side is the exact int8 index with float16 rescoring (x4), the
lexical side bm25s (fastret.search.lexical). Every setting (RRF with k = 60, and weighted fusion with alpha
0.1 .. 0.9, each with 50 / 100 / 200 candidates per side) is scored on dev (324 queries); the one
with the best dev nDCG@10 is then the only one looked at on test (323 queries). Also: single-query
latency of dense-only and hybrid search (median; query encoding excluded, BM25 included).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import fastret  # noqa: E402
from fastret.evaluate import as_run, trec_metrics  # noqa: E402
from fastret.search.hybrid import HybridSearcher  # noqa: E402
from fastret.search.lexical import LexicalIndex  # noqa: E402

from harness import cpu_info, embedded_nfcorpus, finish, verdict  # noqa: E402

ALPHAS = [round(0.1 * i, 1) for i in range(1, 10)]
CANDIDATES = [50, 100, 200]


def ndcg(dataset, query_ids, scores, ids) -> float:
    return trec_metrics(dataset.qrels, as_run(query_ids, dataset.corpus.ids, scores, ids))["nDCG@10"]


def median_ms(search, count: int = 100) -> float:
    times = []
    for i in range(count):
        start = time.perf_counter()
        search(i)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    splits, encoder, documents, doc_vectors, queries = embedded_nfcorpus()
    index = fastret.Index(doc_vectors.shape[1], store_float16=True)
    index.add(doc_vectors, documents=splits["test"].corpus.ids)
    lexical = LexicalIndex.build(documents)
    searcher = HybridSearcher(index, lexical)

    results: dict = {"dev": {}, "test": {}}
    for split, dataset in splits.items():
        query_ids, texts, vectors = queries[split]
        results[split]["dense int8+rescore"] = ndcg(dataset, query_ids, *index.search(vectors, 10, rescore=True))
        results[split]["bm25"] = ndcg(dataset, query_ids, *lexical.search(texts, 10))

    dev = splits["dev"]
    query_ids, texts, vectors = queries["dev"]
    sweep = []
    for candidates in CANDIDATES:
        settings = [("rrf", None)] + [("weighted", alpha) for alpha in ALPHAS]
        for method, alpha in settings:
            fused = searcher.search(texts, vectors, 10, method=method, alpha=alpha or 0.5, candidates=candidates)
            sweep.append({"method": method, "alpha": alpha, "candidates": candidates,
                          "dev_ndcg10": ndcg(dev, query_ids, *fused)})
            print(f"dev  {method:8s} alpha={alpha}  N={candidates:3d}  nDCG@10 {sweep[-1]['dev_ndcg10']:.4f}")
    best = max(sweep, key=lambda s: (s["dev_ndcg10"], -s["candidates"]))
    chosen = {"method": best["method"], "alpha": best["alpha"] or 0.5, "candidates": best["candidates"]}
    for split, dataset in splits.items():
        query_ids, texts, vectors = queries[split]
        results[split]["hybrid"] = ndcg(dataset, query_ids, *searcher.search(texts, vectors, 10, **chosen))

    query_ids, texts, vectors = queries["test"]
    latency = {
        "dense int8+rescore": median_ms(lambda i: index.search(vectors[i], 10, rescore=True)),
        "bm25": median_ms(lambda i: lexical.search([texts[i]], 10)),
        "hybrid": median_ms(lambda i: searcher.search([texts[i]], vectors[i : i + 1], 10, **chosen)),
    }
    print(f"\nchosen on dev: {chosen}")
    print("| NFCorpus nDCG@10 | dev (324 q) | test (323 q) | latency, 1 query |\n|---|---:|---:|---:|")
    for name in ("bm25", "dense int8+rescore", "hybrid"):
        print(f"| {name} | {results['dev'][name]:.4f} | {results['test'][name]:.4f} | {latency[name]:.2f} ms |")
    margin = results["test"]["hybrid"] - max(results["test"]["bm25"], results["test"]["dense int8+rescore"])
    checks = [(verdict(margin >= 0.01), f"test: hybrid >= max(BM25, dense int8+rescore) + 0.01 (margin {margin:+.4f})")]
    report = {"command": " ".join(sys.argv), "machine": cpu_info(), "simd_path": fastret.simd_path(),
              "model": str(encoder.model_dir), "chosen_on_dev": chosen, "ndcg10": results,
              "latency_ms": latency, "dev_sweep": sweep, "load_average": os.getloadavg()}
    return finish(checks, args.json, report)


if __name__ == "__main__":
    sys.exit(main())
