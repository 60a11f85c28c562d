"""NFCorpus retrieval quality: fastret's pipeline next to sentence-transformers + exact float search.

In one process: embed the bundled NFCorpus (corpus and test queries) with sentence-transformers
and with `fastret.Encoder` (same model), search the sentence-transformers embeddings exactly in
float32 (the reference pipeline) and fastret's exactly in float32, int8, and int8 + rescoring;
score every run with trec_eval's nDCG@10 and check the targets:

    fastret float exact = reference +- 0.001;  int8 within 0.003 of float;  int8 + rescore within 0.0005

    .venv/bin/python benchmarks/quality_vs_st.py [--model DIR] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fastret import Encoder, Index  # noqa: E402
from fastret.corpus import BUNDLED_NFCORPUS, load_beir  # noqa: E402
from fastret.evaluate import as_run, exact_float_search, trec_metrics  # noqa: E402
from fastret.encode.presets import default_model_path  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    from sentence_transformers import SentenceTransformer

    model = args.model or default_model_path()
    dataset = load_beir(BUNDLED_NFCORPUS)
    documents, query_ids = dataset.corpus.documents(), list(dataset.queries)
    query_texts = [dataset.queries[q] for q in query_ids]

    def score(scores, rows):
        return trec_metrics(dataset.qrels, as_run(query_ids, dataset.corpus.ids, scores, rows))["nDCG@10"]

    st = SentenceTransformer(str(model), device="cpu")
    st_docs = st.encode(documents, batch_size=args.batch_size, convert_to_numpy=True)
    st_queries = st.encode(query_texts, batch_size=args.batch_size, convert_to_numpy=True)
    encoder = Encoder(model, device="cpu")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*were truncated")
        docs = encoder.encode(documents, batch_size=args.batch_size)
    queries = encoder.encode(query_texts, batch_size=args.batch_size)
    index = Index(docs.shape[1], store_float16=True)
    index.add(docs)

    ndcg = {
        "sentence-transformers + exact float32": score(*exact_float_search(st_queries, st_docs, 100)),
        "fastret float32 exact": score(*exact_float_search(queries, docs, 100)),
        "fastret int8": score(*index.search(queries, 100)),
        "fastret int8 + rescore (x4)": score(*index.search(queries, 100, rescore=True)),
    }
    reference, dense = ndcg["sentence-transformers + exact float32"], ndcg["fastret float32 exact"]
    checks = [
        (abs(dense - reference) <= 0.001, f"fastret float exact {dense:.4f} vs reference {reference:.4f} (+-0.001)"),
        (abs(ndcg["fastret int8"] - dense) <= 0.003, f"int8 {ndcg['fastret int8']:.4f} within 0.003 of float"),
        (abs(ndcg["fastret int8 + rescore (x4)"] - dense) <= 0.0005,
         f"int8 + rescore {ndcg['fastret int8 + rescore (x4)']:.4f} within 0.0005 of float"),
    ]
    print(f"command: {' '.join([sys.executable, *sys.argv])}\nmodel: {model}\n")
    print("| NFCorpus test, 323 queries | nDCG@10 |\n|---|---:|")
    for name, value in ndcg.items():
        print(f"| {name} | {value:.4f} |")
    print()
    for ok, text in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    if args.json:
        args.json.write_text(json.dumps({"command": sys.argv, "ndcg@10": ndcg,
                                         "checks": [{"pass": ok, "check": t} for ok, t in checks]}, indent=2) + "\n")
    return 0 if all(ok for ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
