"""Search quality with 7-bit query codes (fastret's query quantization) against 8-bit ones, on NFCorpus.

    .venv/bin/python benchmarks/query_bits_nfcorpus.py --json benchmarks/results/2026-11-30-cpu-query-bits-nfcorpus.json

all-MiniLM-L6-v2 (fp32, fastret.Encoder) embeds the bundled NFCorpus once (cached under
benchmarks/.cache/); the documents go into one int8 Index (8-bit codes, float16 kept for
rescoring). Each split's queries are searched three ways over the same index: exact float32, int8
with 8-bit query codes (quantize_int8, max code 127) and int8 with 7-bit query codes (what
Index.search does: quantize_queries, max code 63), each also with rescoring (the top 4k int8
candidates re-ranked by their float32 dot products).
Reported: nDCG@10, Recall@100 and MRR@10 (trec_eval definitions), recall@10 against the exact
float32 search, and how many top-10 lists the two query widths return identically.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

import fastret  # noqa: E402
from fastret.evaluate import as_run, exact_float_search, trec_metrics  # noqa: E402

from harness import cpu_info, embedded_nfcorpus, finish, json_argument, recall_at_k, verdict  # noqa: E402

K = 100
RESCORE_FACTOR = 4
TOLERANCE = 0.003  # nDCG@10, as for the int8 encoder


def main() -> int:
    json_path = json_argument(__doc__)

    splits, encoder, _, doc_vectors, queries = embedded_nfcorpus()
    doc_ids = splits["test"].corpus.ids
    index = fastret.Index(doc_vectors.shape[1])
    index.add(doc_vectors)

    def rescored(queries, vectors):
        _, ids, _ = index.candidates(queries, RESCORE_FACTOR * K)
        exact = np.einsum("qcd,qd->qc", doc_vectors[ids], vectors)
        order = np.argsort(-exact, axis=1, kind="stable")[:, :K]
        return np.take_along_axis(exact, order, axis=1), np.take_along_axis(ids, order, axis=1)

    results: dict = {}
    for split, dataset in splits.items():
        query_ids, _, vectors = queries[split]
        eight_bit = fastret.quantize_int8(vectors)
        runs = {
            "float32": exact_float_search(vectors, doc_vectors, K),
            "int8, 8-bit queries": index.search(eight_bit, K),
            "int8, 7-bit queries": index.search(vectors, K),
            "int8+rescore, 8-bit queries": rescored(eight_bit, vectors),
            "int8+rescore, 7-bit queries": rescored(vectors, vectors),
        }
        metrics = {name: trec_metrics(dataset.qrels, as_run(query_ids, doc_ids, scores, rows))
                   for name, (scores, rows) in runs.items()}
        same_top10 = float(np.mean([(a[:10] == b[:10]).all() for a, b in
                                    zip(runs["int8, 8-bit queries"][1], runs["int8, 7-bit queries"][1])]))
        truth = runs["float32"][1][:, :10]
        recall = {name: recall_at_k(rows[:, :10], truth) for name, (_, rows) in runs.items()}
        results[split] = {"queries": len(query_ids), "metrics": metrics, "recall@10_vs_float32": recall,
                          "identical_top10_lists": same_top10}
        print(f"\n{split} ({len(query_ids)} queries): identical top-10 lists, 7-bit vs 8-bit: {same_top10:.1%}")
        print("| method | nDCG@10 | Recall@100 | MRR@10 | recall@10 vs float32 |\n|---|---:|---:|---:|---:|")
        for name, m in metrics.items():
            print(f"| {name} | {m['nDCG@10']:.4f} | {m['Recall@100']:.4f} | {m['MRR@10']:.4f} | {recall[name]:.4f} |")

    checks = []
    for split in splits:
        m = results[split]["metrics"]
        for kind in ("int8", "int8+rescore"):
            diff = m[f"{kind}, 7-bit queries"]["nDCG@10"] - m[f"{kind}, 8-bit queries"]["nDCG@10"]
            checks.append((verdict(abs(diff) <= TOLERANCE),
                           f"{split}: {kind} nDCG@10 with 7-bit query codes differs from 8-bit by {diff:+.4f} "
                           f"(target within {TOLERANCE})"))
    report = {"command": " ".join(sys.argv), "machine": cpu_info(), "simd_path": fastret.simd_path(),
              "model": str(encoder.model_dir), "results": results, "load_average": os.getloadavg()}
    return finish(checks, json_path, report)


if __name__ == "__main__":
    sys.exit(main())
