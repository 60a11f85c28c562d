"""pytest-benchmark suite: fused pooling + L2 normalization (+ int8) against plain torch.

    .venv/bin/python -m pytest benchmarks/bench_pooling.py --benchmark-only
    (on a GPU, keep the numbers: --benchmark-json benchmarks/results/<date>-<gpu>-pooling.json)

Workload: one batch as `encode_corpus` forms them for PubMed abstracts: B=64 rows x T=384 tokens x
D=768 (BERT-base width), lengths uniform in [T/2, T] with right padding; bfloat16 on CUDA,
float32 on CPU. One benchmark group per (mode, quantize), with, side by side:

    fastret triton   pool_normalize on CUDA: the fused kernels (skipped on CPU: Triton's
                     interpreter times Python, not the kernel)
    torch ref        pool_normalize_ref (+ fastret.quantize_int8)
    torch unfused    sentence-transformers' steps one after another: pooling as its Pooling module
                     computes it (h * mask, sum, divide), F.normalize, then quantize_int8

Each benchmark checks its result against the reference before it is timed. extra_info["GB/s"]
counts the bytes the op has to move: the real tokens of hidden (padding need not be read), the
mask, and the outputs; for the torch baselines it is the same count, i.e. an effective rate.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fastret
from fastret.kernels.pooling import pool_normalize, pool_normalize_ref
from harness import timed

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
DTYPE = torch.bfloat16 if CUDA else torch.float32
B, T, D = 64, 384, 768
CASES = [("mean", False), ("mean", True), ("cls", False), ("cls", True)]


def group(mode: str, quantize: bool) -> str:
    return f"{mode}{' + int8' if quantize else ''} {B}x{T}x{D} {str(DTYPE).removeprefix('torch.')} {DEVICE}"


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(B, T, D, generator=g).to(DTYPE).to(DEVICE)
    lengths = torch.randint(T // 2, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long().to(DEVICE)
    return hidden, mask


def bytes_moved(hidden, mask, quantize: bool) -> int:
    read = int(mask.sum()) * D * hidden.element_size() + mask.numel() * mask.element_size()
    written = B * D * 4 + (B * D + B * 4 if quantize else 0)
    return read + written


def check(out, hidden, mask, mode: str, quantize: bool) -> None:
    y = out[0] if quantize else out
    torch.testing.assert_close(y, pool_normalize_ref(hidden, mask, mode), atol=1e-5, rtol=1e-4)
    if quantize:
        codes, scales = fastret.quantize_int8(y)
        assert torch.equal(out[1], codes) and torch.equal(out[2], scales)


def report(benchmark, hidden, mask, quantize: bool) -> None:
    if benchmark.stats is not None:  # None under --benchmark-disable
        seconds = benchmark.stats.stats.mean
        benchmark.extra_info["GB/s"] = round(bytes_moved(hidden, mask, quantize) / seconds / 1e9, 1)


def ref_pipeline(hidden, mask, mode: str, quantize: bool):
    y = pool_normalize_ref(hidden, mask, mode)
    return (y, *fastret.quantize_int8(y)) if quantize else y


def unfused_pipeline(hidden, mask, mode: str, quantize: bool):
    if mode == "mean":  # sentence-transformers' Pooling, step by step
        m = mask.unsqueeze(-1).to(hidden.dtype)
        x = (hidden * m).sum(dim=1, dtype=torch.float32) / m.sum(dim=1, dtype=torch.float32).clamp(min=1e-9)
    else:
        first = mask.int().argmax(dim=1)
        x = hidden.gather(1, first[:, None, None].expand(-1, 1, D)).squeeze(1).float()
    y = F.normalize(x, p=2.0, dim=-1)
    return (y, *fastret.quantize_int8(y)) if quantize else y


@pytest.mark.parametrize("mode, quantize", CASES)
def test_fastret_triton(benchmark, batch, mode, quantize):
    if not CUDA:
        pytest.skip(
            "the Triton kernels need a CUDA GPU; under TRITON_INTERPRET their timing measures the interpreter"
        )
    hidden, mask = batch
    benchmark.group = group(mode, quantize)
    fn = timed(lambda: pool_normalize(hidden, mask, mode=mode, quantize=quantize))
    check(fn(), hidden, mask, mode, quantize)
    benchmark(fn)
    report(benchmark, hidden, mask, quantize)


@pytest.mark.parametrize("mode, quantize", CASES)
def test_torch_ref(benchmark, batch, mode, quantize):
    hidden, mask = batch
    benchmark.group = group(mode, quantize)
    fn = timed(lambda: ref_pipeline(hidden, mask, mode, quantize))
    check(fn(), hidden, mask, mode, quantize)
    benchmark(fn)
    report(benchmark, hidden, mask, quantize)


@pytest.mark.parametrize("mode, quantize", CASES)
def test_torch_unfused(benchmark, batch, mode, quantize):
    hidden, mask = batch
    benchmark.group = group(mode, quantize)
    fn = timed(lambda: unfused_pipeline(hidden, mask, mode, quantize))
    check(fn(), hidden, mask, mode, quantize)
    benchmark(fn)
    report(benchmark, hidden, mask, quantize)
