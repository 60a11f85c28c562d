"""Re-ranking the top 100 of a query with a cross-encoder: fastret.Reranker against
sentence-transformers' CrossEncoder on the same model, pairs and precision, in one run.

    .venv/bin/python benchmarks/rerank_vs_st.py --json benchmarks/results/DATE-cpu-rerank-vs-st.json

The pairs: NFCorpus test queries (--queries of them), each with its BM25 top 100 documents (title
and text), as a re-ranking stage receives them; each engine scores one query's 100 pairs per call
(batch size 32, CrossEncoder's default), and pairs per second is over all the queries, best of
--rounds rounds in which the two engines take turns query by query. Two model
shapes, with MiniLM's tokenizer (no model can be downloaded here, so their heads are random; the
time does not depend on the weights):
    minilm     all-MiniLM-L6-v2's encoder (6 layers, 384 wide) with a one-logit head: the shape
               of cross-encoder/ms-marco-MiniLM-L-6-v2
    bert-base  12 layers, 768 wide, random: the shape of MedCPT-Cross-Encoder (PubMedBERT)
Precisions: float32 for both engines; bfloat16 for both where the CPU has bf16 instructions; and
fastret's int8 linear layers (its own row: no CrossEncoder counterpart). Scores are checked
against CrossEncoder's at float32. With --device cuda (benchmarks/gpu_check.py's rerank step):
float32, float16 and bfloat16 for both engines on the GPU, no int8 row, and the speed-ups
reported without the CPU's 1.5x target.

The ceiling: every engine that computes the same scores at the same precision does at least the
multiply-adds the scores need: every layer on the real (unpadded) tokens of the pairs, but the
last layer only for what reaches the first token (the one row the pooler reads: the keys and
values of every token, the rest for that token). The benchmark counts them (2 per multiply-add:
the linear layers and the attention products, from the model's config and each pair's token
count) and measures the fastest rate the device reaches at that precision (torch's own
matrix product, 2048^3 on a CPU and 8192^3 on a GPU, best of several: one matrix product at full
tiles, nothing else).
Useful FLOP/s over that rate is each engine's fraction of the machine; the rate over CrossEncoder's
useful FLOP/s is the most any engine doing that arithmetic can gain over CrossEncoder here, the
ceiling beside each speed-up.
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
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds per engine, best kept")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for the GPU rows")
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


def useful_flops(config, lengths: list[int]) -> float:
    """FLOPs (2 per multiply-add) that a cross-encoder's score needs over pairs of `lengths` real
    tokens. Every layer but the last, on every token: the four attention projections and the two
    feed-forward matrices, and per pair the attention products Q K^T and P V (L^2 x hidden each).
    The last layer only feeds the first token (all the pooler reads): keys and values of every
    token, then the first token's query, attention (2 x L x hidden), output projection and
    feed-forward."""
    hidden, inner, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    per_token = 2 * (4 * hidden * hidden + 2 * hidden * inner)
    first_layers = (layers - 1) * sum(n * per_token + 4 * n * n * hidden for n in lengths)
    last_layer = sum(n * 2 * (2 * hidden * hidden) + 2 * (2 * hidden * hidden + 2 * hidden * inner)
                     + 4 * n * hidden for n in lengths)
    return float(first_layers + last_layer)


def gemm_rate(dtype: torch.dtype, device: torch.device, repeats: int = 8) -> float:
    """FLOP/s of torch's size^3 matrix product at `dtype` on `device` (2048 on a CPU, 8192 on a
    GPU), best of `repeats`."""
    size = 8192 if device.type == "cuda" else 2048
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))
    a @ b
    best = min(timed_once(lambda: a @ b, device) for _ in range(repeats))
    return 2 * size**3 / best


def timed_once(fn, device: torch.device) -> float:
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def pairs_per_second(engines: dict, per_query: list, rounds: int) -> tuple[dict, dict]:
    """Pairs/s of each engine (name -> score function) over all queries' pairs, best of `rounds`
    rounds, the engines taking turns query by query (the order flipped every round) so that a
    shared machine's drift hits them alike; and each engine's scores per query."""
    for score in engines.values():
        score(per_query[0][:8])  # warm up
    seconds = {name: [0.0] * rounds for name in engines}
    scores = {name: [] for name in engines}
    for round_ in range(rounds):
        order = list(engines) if round_ % 2 == 0 else list(reversed(engines))
        for pairs in per_query:
            for name in order:
                start = time.perf_counter()
                out = np.asarray(engines[name](pairs), np.float32)
                seconds[name][round_] += time.perf_counter() - start
                if round_ == 0:
                    scores[name].append(out)
    total = sum(map(len, per_query))
    return {name: total / min(times) for name, times in seconds.items()}, scores


def measure_shape(shape: str, per_query: list, rounds: int, device: torch.device = torch.device("cpu")) -> dict:
    """Each precision's row for the cross-encoder of `shape` on `device` (module docstring)."""
    from sentence_transformers import CrossEncoder

    from transformers import AutoConfig

    path = cross_encoder(shape)
    on_gpu = device.type == "cuda"
    precisions = ["float32"] + (["float16", "bfloat16"] if on_gpu else ["bfloat16"] if bf16_instruction_sets() else [])
    rows, reference = {}, None
    probe = fastret.Reranker(path, device="cpu", max_length=512)
    lengths = [len(ids) for pairs in per_query for ids in probe.tokenize(pairs)[0]]
    flops_per_pair = useful_flops(AutoConfig.from_pretrained(path), lengths) / len(lengths)
    print(f"  {shape:9s} {np.mean(lengths):.0f} tokens per pair on average, "
          f"{flops_per_pair / 1e9:.2f} GFLOP of model arithmetic per pair", flush=True)
    for precision in precisions:
        dtype = getattr(torch, precision)
        theirs = CrossEncoder(str(path), device=str(device), max_length=512, model_kwargs={"dtype": dtype})
        ours = fastret.Reranker(path, device=device, dtype=precision, max_length=512)
        rates, scores = pairs_per_second({"st": lambda p: theirs.predict(p, batch_size=BATCH),
                                          "fastret": lambda p: ours.predict(p, batch_size=BATCH)}, per_query, rounds)
        (st_rate, st_scores), (our_rate, our_scores) = (rates["st"], scores["st"]), (rates["fastret"], scores["fastret"])
        if precision == "float32":
            reference = st_scores
        peak = gemm_rate(dtype, device)
        rows[precision] = {"sentence_transformers_pairs_per_s": st_rate, "fastret_pairs_per_s": our_rate,
                           "speedup": our_rate / st_rate,
                           "gemm_flops_per_s": peak,
                           "sentence_transformers_of_gemm_rate": st_rate * flops_per_pair / peak,
                           "fastret_of_gemm_rate": our_rate * flops_per_pair / peak,
                           "ceiling_vs_sentence_transformers": peak / (st_rate * flops_per_pair),
                           "max_abs_diff_to_st_float32": float(max(np.abs(a - b).max()
                                                                   for a, b in zip(our_scores, reference)))}
        print(f"  {shape:9s} {precision:8s}  CrossEncoder {st_rate:7.1f} pairs/s  fastret {our_rate:7.1f} pairs/s "
              f"({our_rate / st_rate:.2f}x)  max |diff| {rows[precision]['max_abs_diff_to_st_float32']:.2e}",
              flush=True)
        print(f"  {shape:9s} {precision:8s}  GEMM rate {peak / 1e9:.0f} GFLOP/s: CrossEncoder at "
              f"{rows[precision]['sentence_transformers_of_gemm_rate']:.0%}, fastret at "
              f"{rows[precision]['fastret_of_gemm_rate']:.0%}; ceiling "
              f"{rows[precision]['ceiling_vs_sentence_transformers']:.2f}x CrossEncoder", flush=True)
    if on_gpu:  # the int8 layers run on the CPU only
        return rows
    int8 = fastret.Reranker(path, device="cpu", quantize="int8", max_length=512)
    rates, all_scores = pairs_per_second({"int8": lambda p: int8.predict(p, batch_size=BATCH)}, per_query, rounds)
    rate, scores = rates["int8"], all_scores["int8"]
    rows["fastret int8"] = {"fastret_pairs_per_s": rate,
                            "vs_sentence_transformers_float32": rate / rows["float32"]["sentence_transformers_pairs_per_s"],
                            "max_abs_diff_to_st_float32": float(max(np.abs(a - b).max() for a, b in zip(scores, reference)))}
    print(f"  {shape:9s} int8      fastret {rate:7.1f} pairs/s "
          f"({rows['fastret int8']['vs_sentence_transformers_float32']:.2f}x CrossEncoder float32)", flush=True)
    return rows


def main() -> int:
    args = parse_args()
    device = torch.device(args.device)
    per_query = candidate_pairs(args.queries)
    print(f"{len(per_query)} queries x their BM25 top {TOP} (NFCorpus test), threads {torch.get_num_threads()}, "
          f"on {device}", flush=True)
    results = {shape: measure_shape(shape, per_query, args.rounds, device) for shape in args.shapes.split(",")}
    checks = []
    for shape, rows in results.items():
        for precision in ("float32", "float16", "bfloat16"):
            if precision in rows:
                row = rows[precision]
                target = "" if device.type == "cuda" else f">= {TARGET}x; "
                checks.append(("INFO" if device.type == "cuda" else verdict(row["speedup"] >= TARGET),
                               f"{shape}, {precision}: {row['speedup']:.2f}x CrossEncoder's pairs/s on the same "
                               f"pairs and precision ({target}the arithmetic at this {device.type.upper()}'s GEMM "
                               f"rate allows at most {row['ceiling_vs_sentence_transformers']:.2f}x)"))
        checks.append((verdict(rows["float32"]["max_abs_diff_to_st_float32"] < 1e-4),
                       f"{shape}: float32 scores within {rows['float32']['max_abs_diff_to_st_float32']:.1e} of "
                       "CrossEncoder's (< 1e-4)"))
    report = {"command": shlex.join([sys.executable, *sys.argv]), "machine": cpu_info(), "device": str(device),
              "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "threads": torch.get_num_threads(), "queries": len(per_query), "top": TOP, "batch_size": BATCH,
              "rounds": args.rounds,
              "results": results}
    return finish(checks, args.json, report)


if __name__ == "__main__":
    sys.exit(main())
