"""Symmetric per-vector int8 quantization.

    scale_i = max_j |x_ij| / M              (float32; M = max_code, 127 by default)
    q_ij    = clip(rint(x_ij / scale_i), -M, M)    (int8; 0 where scale_i == 0)

so x_ij ~= q_ij * scale_i, and <x, y> ~= (float(<q_x, q_y>) * scale_x) * scale_y. Codes never take
-128, which keeps signed x signed products exact on every SIMD path.

Stored vectors use all of [-127, 127]. Search queries use M = QUERY_MAX_CODE = 63 (7 bits): on AVX2
the exact unsigned x signed byte multiply (maddubs) then needs no nibble split, which makes large
batches about 1.5x faster, and the extra query rounding moves NFCorpus nDCG@10 by less than the
noise (benchmarks/query_bits_nfcorpus.py). Every path, the reference included, searches with the same query codes, so
results stay identical across machines.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .checks import check_finite, float_matrix, int8_codes, is_torch, to_numpy

# The largest code of a quantized search query (see the module docstring).
QUERY_MAX_CODE = 63


def quantize_int8(x: Any, max_code: int = 127):
    """Quantize vectors to int8 codes with one float32 scale per vector (along the last axis).

    Args:
        x: float array or tensor [..., d] (float16/bfloat16/float32/float64; numpy or torch, any
            device). Values must be finite.
        max_code: the largest code magnitude, 1..127 (search queries use QUERY_MAX_CODE).

    Returns:
        (codes, scales): codes int8 [..., d] in [-max_code, max_code] and scales float32 [...], of
        the same kind as `x` (numpy in, numpy out; torch in, torch out on the same device).

    Raises:
        TypeError: `x` is not floating point, or max_code is not an int.
        ValueError: `x` is 0-dimensional or holds NaN/inf, or max_code is outside 1..127.
    """
    if isinstance(max_code, bool) or not isinstance(max_code, int):
        raise TypeError(f"max_code must be an int in 1..127, got {type(max_code).__name__}")
    if not 1 <= max_code <= 127:
        raise ValueError(f"max_code must be in 1..127, got {max_code}")
    if is_torch(x):
        return _quantize_torch(x, max_code)
    array = to_numpy(x, "x")
    if array.dtype.kind != "f":
        raise TypeError(f"quantize_int8 expects floating point vectors, got {array.dtype}")
    if array.ndim == 0:
        raise ValueError("quantize_int8 expects vectors [..., d], got a scalar")
    array = array.astype(np.float32, copy=False)
    check_finite(array.reshape(-1, array.shape[-1]) if array.size else array.reshape(0, 1), "x")
    scales = (np.abs(array).max(axis=-1, initial=0.0) / np.float32(max_code)).astype(np.float32)
    safe = np.where(scales > 0, scales, np.float32(1))
    codes = np.clip(np.rint(array / safe[..., None]), -max_code, max_code).astype(np.int8)
    return codes, scales


def quantize_queries(x: Any):
    """`quantize_int8(x, QUERY_MAX_CODE)`: search queries as every search path quantizes them."""
    return quantize_int8(x, QUERY_MAX_CODE)


def _quantize_torch(x, max_code: int):
    import torch

    from .kernels.pooling import quantize_rows_ref  # torch input: torch is loaded already

    if not x.dtype.is_floating_point:
        raise TypeError(f"quantize_int8 expects floating point vectors, got {x.dtype}")
    if x.ndim == 0:
        raise ValueError("quantize_int8 expects vectors [..., d], got a scalar")
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or inf; clean the input")
    return quantize_rows_ref(x, max_code)


def quantized_vectors(
    x: Any, name: str, dim: int | None = None, *, queries: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Float vectors (quantized here) or a (codes, scales) tuple -> (codes, scales, float32 or None).

    `queries`: float vectors are quantized as search queries (`quantize_queries`), and given codes
    follow the query rule of `int8_codes` (no code of -128).
    """
    if isinstance(x, tuple):
        if len(x) != 2:
            raise ValueError(f"{name} as a tuple must be (codes int8 [n, d], scales float32 [n]), got {len(x)} items")
        codes, scales = int8_codes(x[0], x[1], name, dim, queries=queries)
        return codes, scales, None
    floats = float_matrix(x, name, dim)
    codes, scales = quantize_queries(floats) if queries else quantize_int8(floats)
    return codes, scales, floats
