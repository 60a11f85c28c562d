"""Re-ranking the top 100 of a query with a cross-encoder: fastret.Reranker against
sentence-transformers' CrossEncoder on the same model, pairs and precision, in one run.

    .venv/bin/python benchmarks/rerank_vs_st.py --json benchmarks/results/DATE-cpu-rerank-vs-st.json

The pairs: NFCorpus test queries (--queries of them), each with its BM25 top 100 documents (title
and text), as a re-ranking stage receives them; each engine scores one query's 100 pairs per call
(batch size 32, CrossEncoder's default), and pairs per second is over all the queries. Two model
shapes, with MiniLM's tokenizer (no model can be downloaded here, so their heads are random; the
time does not depend on the weights):
    minilm     all-MiniLM-L6-v2's encoder (6 layers, 384 wide) with a one-logit head: the shape
               of cross-encoder/ms-marco-MiniLM-L-6-v2
    bert-base  12 layers, 768 wide, random: the shape of MedCPT-Cross-Encoder (PubMedBERT)
Precisions: float32 for both engines; bfloat16 for both where the CPU has bf16 instructions; and
fastret's int8 linear layers (its own row: no CrossEncoder counterpart). Scores are checked
against CrossEncoder's at float32.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

import fastret
from fastret.corpus import BUNDLED_NFCORPUS, load_beir
from fastret.cpu import bf16_instruction_sets
from fastret.encode.presets import default_model_path
from fastret.search.lexical import LexicalIndex
from harness import CACHE, cpu_info, finish, verdict

TOP = 100
BATCH = 32
TARGET = 1.5


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=8, help="NFCorpus test queries, each with its top 100")
    parser.add_argument("--shapes", default="minilm,bert-base")
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args()


def cross_encoder(shape: str) -> Path:
    """A one-logit BERT cross-encoder of `shape` saved under benchmarks/.cache (made once)."""
    import shutil

    from transformers import BertConfig, BertForSequenceClassification

    directory = CACHE / f"cross-encoder-{shape}"
    if (directory / "config.json").exists():
        return directory
    minilm = default_model_path()
    torch.manual_seed(0)
    if shape == "minilm":
        model = BertForSequenceClassification.from_pretrained(minilm, num_labels=1)
    else:
        model = BertForSequenceClassification(BertConfig(num_labels=1, max_position_embeddings=512))
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(Path(minilm) / name, partial / name)
    partial.rename(directory)
    return directory


def candidate_pairs(queries: int) -> list[list[tuple[str, str]]]:
    """Per query, (query, document) pairs of its BM25 top 100."""
    dataset = load_beir(BUNDLED_NFCORPUS, "test")
    documents = dataset.corpus.documents()
    texts = [dataset.queries[q] for q in list(dataset.queries)[:queries]]
    _, rows = LexicalIndex.build(documents).search(texts, TOP)
    return [[(text, documents[r]) for r in row if r >= 0] for text, row in zip(texts, rows)]


def pairs_per_second(score, per_query: list) -> tuple[float, list]:
    score(per_query[0][:8])  # warm up
    out, start = [], time.perf_counter()
    for pairs in per_query:
        out.append(np.asarray(score(pairs), np.float32))
    return sum(map(len, per_query)) / (time.perf_counter() - start), out


def measure_shape(shape: str, per_query: list) -> dict:
    from sentence_transformers import CrossEncoder

    path = cross_encoder(shape)
    precisions = ["float32"] + (["bfloat16"] if bf16_instruction_sets() else [])
    rows, reference = {}, None
    for precision in precisions:
        dtype = getattr(torch, precision)
        theirs = CrossEncoder(str(path), device="cpu", max_length=512, model_kwargs={"dtype": dtype})
        ours = fastret.Reranker(path, device="cpu", dtype=precision, max_length=512)
        st_rate, st_scores = pairs_per_second(lambda p: theirs.predict(p, batch_size=BATCH), per_query)
        our_rate, our_scores = pairs_per_second(lambda p: ours.predict(p, batch_size=BATCH), per_query)
        if precision == "float32":
            reference = st_scores
        rows[precision] = {"sentence_transformers_pairs_per_s": st_rate, "fastret_pairs_per_s": our_rate,
                           "speedup": our_rate / st_rate,
                           "max_abs_diff_to_st_float32": float(max(np.abs(a - b).max()
                                                                   for a, b in zip(our_scores, reference)))}
        print(f"  {shape:9s} {precision:8s}  CrossEncoder {st_rate:7.1f} pairs/s  fastret {our_rate:7.1f} pairs/s "
              f"({our_rate / st_rate:.2f}x)  max |diff| {rows[precision]['max_abs_diff_to_st_float32']:.2e}",
              flush=True)
    int8 = fastret.Reranker(path, device="cpu", quantize="int8", max_length=512)
    rate, scores = pairs_per_second(lambda p: int8.predict(p, batch_size=BATCH), per_query)
    rows["fastret int8"] = {"fastret_pairs_per_s": rate,
                            "vs_sentence_transformers_float32": rate / rows["float32"]["sentence_transformers_pairs_per_s"],
                            "max_abs_diff_to_st_float32": float(max(np.abs(a - b).max() for a, b in zip(scores, reference)))}
    print(f"  {shape:9s} int8      fastret {rate:7.1f} pairs/s "
          f"({rows['fastret int8']['vs_sentence_transformers_float32']:.2f}x CrossEncoder float32)", flush=True)
    return rows


def main() -> int:
    args = parse_args()
    per_query = candidate_pairs(args.queries)
    print(f"{len(per_query)} queries x their BM25 top {TOP} (NFCorpus test), threads {torch.get_num_threads()}",
          flush=True)
    results = {shape: measure_shape(shape, per_query) for shape in args.shapes.split(",")}
    checks = []
    for shape, rows in results.items():
        for precision in ("float32", "bfloat16"):
            if precision in rows:
                row = rows[precision]
                checks.append((verdict(row["speedup"] >= TARGET),
                               f"{shape}, {precision}: {row['speedup']:.2f}x CrossEncoder's pairs/s on the same "
                               f"pairs and precision (>= {TARGET}x)"))
        checks.append((verdict(rows["float32"]["max_abs_diff_to_st_float32"] < 1e-4),
                       f"{shape}: float32 scores within {rows['float32']['max_abs_diff_to_st_float32']:.1e} of "
                       "CrossEncoder's (< 1e-4)"))
    report = {"command": shlex.join([sys.executable, *sys.argv]), "machine": cpu_info(),
              "threads": torch.get_num_threads(), "queries": len(per_query), "top": TOP, "batch_size": BATCH,
              "results": results}
    return finish(checks, args.json, report)


if __name__ == "__main__":
    sys.exit(main())
