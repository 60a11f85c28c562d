"""How to binarize for a 1-bit first stage, measured on NFCorpus: sign bits or sign bits after
subtracting the corpus's per-dimension mean, scored symmetrically (Hamming) or asymmetrically (the
float query against the bits), then re-ranked exactly by int8 score.

    .venv/bin/python benchmarks/binary_quality_nfcorpus.py \
        --json benchmarks/results/2026-12-06-cpu-binary-quality-nfcorpus.json

all-MiniLM-L6-v2 (fp32, fastret.Encoder) embeds the bundled NFCorpus once (cached under
benchmarks/.cache/). The documents' int8 codes (fastret.Index) give the reference ranking: exact
int8 search, as Index.search does it. Each document also gets one bit per dimension:

    sign            b_i = [code_i > 0]  (the int8 code of x_i, as fastret stores them)
    centered sign   b_i = [x_i - mean_i > 0], mean over the corpus's documents (stored beside the bits)

and each query is scored against the bits (ties to the lower row):

    hamming         d - popcount(bits(q) xor b)      (the query binarized the same way)
    asymmetric      sum_i q_i * (2 b_i - 1)           (the float query, uncentered: q . mean is the
                                                      same for every document of a query)
    B-bit query     sum_i v_i * (2 b_i - 1)           v: the query's int8 codes (as Index.search
                                                      makes them) on 2^B odd levels (B = 1 is the
                                                      Hamming score but for codes of 0, which
                                                      count as positive), what fastret's kernels
                                                      compute (fastret.search.binary.query_planes)

The best oversample * 10 documents of the first stage are re-ranked by their exact int8 scores.
Reported per split (dev chooses, test confirms), oversample 1, 2, 4, 10, 20: nDCG@10 (trec_eval)
and recall@10 against exact int8 search.

The small-corpus rule, applied on dev: the fewest query bits (the scan's cost grows with them) whose
nDCG@10 comes within 0.5% of exact int8 at an oversample of at most 20, with the smallest such
oversample; its oversample is the floor of oversample="auto" (fastret.search.binary.AUTO_MIN: a
small corpus keeps it; the query bits and the growth with the rows come from
benchmarks/binary_recall_scale.py). The script checks that floor, runs `Index.search(...,
first_stage="binary")` at the library's defaults (4-bit queries, "auto": the kernels themselves,
equal to the table's row at that oversample) and checks that both splits keep >= 0.99x exact int8's
nDCG@10.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

import fastret  # noqa: E402
from fastret.search import binary  # noqa: E402
from fastret.evaluate import as_run, trec_metrics  # noqa: E402
from fastret.search.rules import rank  # noqa: E402

from harness import cpu_info, embedded_nfcorpus, finish, json_argument, recall_at_k, verdict  # noqa: E402

K = 10
OVERSAMPLES = (1, 2, 4, 10, 20)
# The B-bit queries go with plain sign bits only (fastret's bits are the signs of the int8 codes).
QUERY_BITS = (1, 2, 3, 4, 5)
METHODS = {"sign": ("hamming", "asymmetric", *(f"{b}-bit query" for b in QUERY_BITS)),
           "centered sign": ("hamming", "asymmetric")}
WITHIN = 0.995  # the rule's nDCG@10 against exact int8, on dev


def binarize(vectors: np.ndarray, mean: np.ndarray | None) -> np.ndarray:
    """bool [n, d]: the sign bits of `vectors`, after subtracting `mean` when given."""
    return (vectors - mean if mean is not None else vectors) > 0


def first_stage_scores(queries: np.ndarray, doc_bits: np.ndarray, mean: np.ndarray | None, method: str) -> np.ndarray:
    """float64 [q, n]: the first stage's score of every document for every query (higher first)."""
    signs = np.where(doc_bits, 1.0, -1.0)
    if method == "asymmetric":
        return queries.astype(np.float64) @ signs.T
    if method.endswith("-bit query"):
        q_codes, _ = fastret.quantize_queries(queries)
        levels = binary.query_levels(np.asarray(q_codes), int(method.split("-")[0])).astype(np.float64)
        return levels @ signs.T
    query_signs = np.where(binarize(queries, mean), 1.0, -1.0)
    return (query_signs @ signs.T + doc_bits.shape[1]) / 2  # agreements = d - Hamming distance


def int8_scores(queries: np.ndarray, codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """float32 [q, n]: exact int8 scores as the core computes them, queries as Index.search codes them."""
    q_codes, q_scales = fastret.quantize_queries(queries)
    dots = (q_codes.astype(np.int64) @ codes.astype(np.int64).T).astype(np.float32)
    return (dots * q_scales[:, None]) * scales[None, :]


def two_stage(first: np.ndarray, exact: np.ndarray, candidates: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows) [q, K]: the `candidates` best rows by `first`, re-ranked by `exact`."""
    rows = np.arange(first.shape[1], dtype=np.int64)
    found_scores, found_rows = [], []
    for q in range(first.shape[0]):
        chosen = rows[rank(first[q][None], rows[None], candidates)[0]]
        order = rank(exact[q, chosen][None], chosen[None], K)[0]
        found_rows.append(chosen[order])
        found_scores.append(exact[q, chosen[order]])
    return np.array(found_scores), np.array(found_rows)


def main() -> int:
    json_path = json_argument(__doc__)

    splits, encoder, _, doc_vectors, queries = embedded_nfcorpus()
    doc_ids = splits["test"].corpus.ids
    codes, scales = fastret.quantize_int8(doc_vectors)
    mean = doc_vectors.mean(axis=0)
    # fastret's bits are the signs of the stored int8 codes (a value rounding to code 0 counts as negative)
    bits = {"sign": (np.asarray(codes) > 0, None), "centered sign": (binarize(doc_vectors, mean), mean)}

    results: dict = {}
    for split, dataset in splits.items():
        query_ids, _, vectors = queries[split]
        exact = int8_scores(vectors, codes, scales)
        all_rows = np.broadcast_to(np.arange(len(doc_ids), dtype=np.int64), exact.shape)
        reference_rows = np.array([all_rows[0][rank(exact[q][None], all_rows[:1], K)[0]] for q in range(len(vectors))])
        reference = trec_metrics(dataset.qrels, as_run(query_ids, doc_ids,
                                                       np.take_along_axis(exact, reference_rows, 1), reference_rows))
        rows_out = {}
        for bits_name, (doc_bits, bits_mean) in bits.items():
            for method in METHODS[bits_name]:
                first = first_stage_scores(vectors, doc_bits, bits_mean, method)
                for oversample in OVERSAMPLES:
                    found_scores, found_rows = two_stage(first, exact, oversample * K)
                    metrics = trec_metrics(dataset.qrels, as_run(query_ids, doc_ids, found_scores, found_rows))
                    rows_out[f"{bits_name}, {method}, oversample {oversample}"] = {
                        "bits": bits_name, "score": method, "oversample": oversample,
                        "nDCG@10": metrics["nDCG@10"], "nDCG@10_vs_int8": metrics["nDCG@10"] / reference["nDCG@10"],
                        "recall@10_vs_int8": recall_at_k(found_rows, reference_rows)}
        results[split] = {"queries": len(query_ids), "exact_int8": reference, "two_stage": rows_out}
        print(f"\n{split} ({len(query_ids)} queries): exact int8 nDCG@10 {reference['nDCG@10']:.4f}")
        print("| bits | first-stage score | " + " | ".join(f"x{o}" for o in OVERSAMPLES) + " |")
        print("|---|---|" + "---:|" * len(OVERSAMPLES))
        for bits_name in bits:
            for method in METHODS[bits_name]:
                cells = [rows_out[f"{bits_name}, {method}, oversample {o}"] for o in OVERSAMPLES]
                print(f"| {bits_name} | {method} | " + " | ".join(
                    f"{c['nDCG@10']:.4f} ({c['recall@10_vs_int8']:.3f})" for c in cells) + " |")

    query_bits, oversample = choose_defaults(results["dev"]["two_stage"])
    index = fastret.Index(doc_vectors.shape[1])
    index.add(doc_vectors)
    auto = binary.auto_oversample(len(index), K)
    checks = [(verdict(oversample == binary.AUTO_MIN),
               f"dev picks {query_bits}-bit queries at oversample {oversample}; the floor of oversample='auto': "
               f"{binary.AUTO_MIN}")]
    for split, dataset in splits.items():
        query_ids, _, vectors = queries[split]
        exact = int8_scores(vectors, codes, scales)
        first = first_stage_scores(vectors, bits["sign"][0], None, f"{binary.DEFAULT_QUERY_BITS}-bit query")
        table = trec_metrics(dataset.qrels, as_run(query_ids, doc_ids, *two_stage(first, exact, auto * K)))
        scores, rows = index.search(vectors, K, first_stage="binary")
        metrics = trec_metrics(dataset.qrels, as_run(query_ids, doc_ids, scores, rows))
        ratio = metrics["nDCG@10"] / results[split]["exact_int8"]["nDCG@10"]
        results[split]["fastret_binary_defaults"] = {"query_bits": binary.DEFAULT_QUERY_BITS, "oversample": auto,
                                                     "nDCG@10": metrics["nDCG@10"], "nDCG@10_vs_int8": ratio}
        checks.append((verdict(abs(metrics["nDCG@10"] - table["nDCG@10"]) < 1e-12),
                       f"{split}: Index.search(first_stage='binary') nDCG@10 {metrics['nDCG@10']:.4f} equals the "
                       f"table's {table['nDCG@10']:.4f} ({binary.DEFAULT_QUERY_BITS}-bit queries, oversample {auto})"))
        checks.append((verdict(ratio >= 0.99), f"{split}: nDCG@10 at the defaults {ratio:.4f}x exact int8 (>= 0.99x)"))
    report = {"command": " ".join(sys.argv), "machine": cpu_info(), "model": str(encoder.model_dir),
              "documents": len(doc_ids), "k": K, "rule": f"fewest query bits within {WITHIN} of exact int8 "
              "nDCG@10 on dev at oversample <= 20, smallest oversample (the floor of oversample='auto')",
              "chosen": {"query_bits": query_bits, "oversample": oversample}, "results": results}
    return finish(checks, json_path, report)


def choose_defaults(dev: dict) -> tuple[int, int]:
    """(query bits, oversample) by the rule of the module docstring, from dev's two-stage rows."""
    for bits in QUERY_BITS:
        for oversample in OVERSAMPLES:
            if dev[f"sign, {bits}-bit query, oversample {oversample}"]["nDCG@10_vs_int8"] >= WITHIN:
                return bits, oversample
    raise SystemExit(f"no query bits in {QUERY_BITS} come within {WITHIN} of exact int8 on dev")


if __name__ == "__main__":
    sys.exit(main())
