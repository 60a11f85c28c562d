"""Symmetric per-vector int8 quantization.

    scale_i = max_j |x_ij| / 127            (float32)
    q_ij    = clip(rint(x_ij / scale_i), -127, 127)    (int8; 0 where scale_i == 0)

so x_ij ~= q_ij * scale_i, and <x, y> ~= (float(<q_x, q_y>) * scale_x) * scale_y. Codes never take
-128, which keeps signed x signed products exact on every SIMD path.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .checks import check_finite, float_matrix, int8_codes, is_torch, to_numpy
from .kernels.pooling import quantize_rows_ref


def quantize_int8(x: Any):
    """Quantize vectors to int8 codes with one float32 scale per vector (along the last axis).

    Args:
        x: float array or tensor [..., d] (float16/bfloat16/float32/float64; numpy or torch, any
            device). Values must be finite.

    Returns:
        (codes, scales): codes int8 [..., d] in [-127, 127] and scales float32 [...], of the same
        kind as `x` (numpy in, numpy out; torch in, torch out on the same device).

    Raises:
        TypeError: `x` is not floating point.
        ValueError: `x` is 0-dimensional or holds NaN/inf.
    """
    if is_torch(x):
        return _quantize_torch(x)
    array = to_numpy(x, "x")
    if array.dtype.kind != "f":
        raise TypeError(f"quantize_int8 expects floating point vectors, got {array.dtype}")
    if array.ndim == 0:
        raise ValueError("quantize_int8 expects vectors [..., d], got a scalar")
    array = array.astype(np.float32, copy=False)
    check_finite(array.reshape(-1, array.shape[-1]) if array.size else array.reshape(0, 1), "x")
    scales = (np.abs(array).max(axis=-1, initial=0.0) / np.float32(127)).astype(np.float32)
    safe = np.where(scales > 0, scales, np.float32(1))
    codes = np.clip(np.rint(array / safe[..., None]), -127, 127).astype(np.int8)
    return codes, scales


def _quantize_torch(x):
    import torch

    if not x.dtype.is_floating_point:
        raise TypeError(f"quantize_int8 expects floating point vectors, got {x.dtype}")
    if x.ndim == 0:
        raise ValueError("quantize_int8 expects vectors [..., d], got a scalar")
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or inf; clean the input")
    return quantize_rows_ref(x)


def quantized_vectors(
    x: Any, name: str, dim: int | None = None, *, queries: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Float vectors (quantized here) or a (codes, scales) tuple -> (codes, scales, float32 or None).

    `queries` applies the query rule of `int8_codes` (no code of -128).
    """
    if isinstance(x, tuple):
        if len(x) != 2:
            raise ValueError(f"{name} as a tuple must be (codes int8 [n, d], scales float32 [n]), got {len(x)} items")
        codes, scales = int8_codes(x[0], x[1], name, dim, queries=queries)
        return codes, scales, None
    floats = float_matrix(x, name, dim)
    codes, scales = quantize_int8(floats)
    return codes, scales, floats
