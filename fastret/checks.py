"""Validation and conversion of user arrays (numpy arrays or torch tensors).

Every public entry point funnels its inputs through here so that bad input gets one kind of
message: what was expected, what came, and how to fix it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

FLOAT_DTYPES = (np.float16, np.float32, np.float64)


def is_torch(x: Any) -> bool:
    """True for a torch.Tensor, without importing torch."""
    return type(x).__module__.startswith("torch") and hasattr(x, "device")


def is_cuda(x: Any) -> bool:
    return is_torch(x) and x.device.type == "cuda"


def to_numpy(x: Any, name: str) -> np.ndarray:
    """A numpy view of `x` (numpy array, CPU torch tensor, or nested sequence of numbers)."""
    if isinstance(x, (np.ndarray, np.generic)):
        return np.asarray(x)
    if is_torch(x):
        if x.device.type != "cpu":
            raise ValueError(f"{name} is on {x.device}; move it to the CPU or pass every array on one device")
        import torch

        if x.dtype == torch.bfloat16:  # numpy has no bfloat16
            x = x.float()
        return x.detach().numpy()
    if isinstance(x, (list, tuple)):
        try:
            array = np.asarray(x)
        except ValueError as error:
            raise ValueError(f"{name} is a ragged sequence; every vector must have the same length") from error
        if array.dtype.kind not in "iuf":
            raise TypeError(f"{name} must hold numbers, got a sequence of {array.dtype}")
        return array
    raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")


def as_matrix(x: np.ndarray, name: str, dim: int | None = None) -> np.ndarray:
    """`x` as 2-D [n, dim]; a single 1-D vector becomes [1, dim]."""
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D [n, dim] (or one 1-D vector), got shape {tuple(x.shape)}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} has dimension {x.shape[1]} but the index has dimension {dim}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); pass at least one vector")
    return x


def float_matrix(x: Any, name: str, dim: int | None = None) -> np.ndarray:
    """Float vectors as a C-contiguous float32 [n, dim] array, checked finite."""
    array = as_matrix(to_numpy(x, name), name, dim)
    if array.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be float32, float16 or float64 vectors, got {array.dtype}; "
            "pass already-quantized vectors as a (codes int8, scales float32) tuple"
        )
    array = np.ascontiguousarray(array, dtype=np.float32)
    check_finite(array, name)
    return array


def check_finite(array: np.ndarray, name: str) -> None:
    if not np.isfinite(array).all():
        bad = np.flatnonzero(~np.isfinite(array).reshape(len(array), -1).all(axis=1))
        raise ValueError(f"{name} contains NaN or inf in {len(bad)} row(s), first at row {bad[0]}; clean the input")


def int8_codes(
    codes: Any, scales: Any, name: str, dim: int | None = None, *, queries: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Already-quantized vectors: C-contiguous int8 [n, dim] codes and float32 [n] scales.

    Query codes must lie in [-127, 127] (checked); corpus codes may be any int8, so a large
    corpus is never scanned on every search.
    """
    codes = as_matrix(to_numpy(codes, f"{name} codes"), f"{name} codes", dim)
    if codes.dtype != np.int8:
        raise TypeError(f"{name} codes must be int8, got {codes.dtype}; quantize with fastret.quantize_int8")
    if queries and (codes == -128).any():
        raise ValueError(
            f"{name} codes contain -128; fastret uses symmetric codes in [-127, 127] "
            "(quantize with fastret.quantize_int8, or clip)"
        )
    scales = to_numpy(scales, f"{name} scales")
    if scales.ndim == 0:
        scales = scales.reshape(1)
    if scales.ndim != 1 or scales.shape[0] != codes.shape[0]:
        raise ValueError(
            f"{name} scales must be 1-D with one scale per vector ({codes.shape[0]}), got shape {tuple(scales.shape)}"
        )
    if scales.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} scales must be floating point, got {scales.dtype}")
    scales = np.ascontiguousarray(scales, dtype=np.float32)
    if not np.isfinite(scales).all() or (scales < 0).any():
        raise ValueError(f"{name} scales must be finite and >= 0")
    return np.ascontiguousarray(codes), scales


def int64_ids(ids: Any, n: int) -> np.ndarray:
    """External ids as a C-contiguous int64 [n] array: integers only, and all of them fitting int64."""
    array = to_numpy(ids, "ids")
    if array.ndim != 1 or len(array) != n:
        raise ValueError(f"ids must be 1-D with one id per vector ({n}), got shape {tuple(array.shape)}")
    too_big = array.dtype.kind == "u" and array.dtype.itemsize == 8 and n and array.max() > np.iinfo(np.int64).max
    if array.dtype.kind not in "iu" or too_big:
        raise TypeError(f"ids must be integers that fit int64, got {array.dtype}")
    return np.ascontiguousarray(array, dtype=np.int64)


def check_k(k: Any, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if n == 0:
        raise ValueError("the index is empty; add vectors before searching")
    if k > n:
        raise ValueError(f"k = {k} exceeds the {n} vectors in the index; pass k <= {n}")
    return int(k)


def id_array(ids: Any) -> np.ndarray:
    """Ids to look up (e.g. search results), any shape: a numpy integer array of the same shape."""
    array = np.asarray(to_numpy(ids, "ids"))
    if array.dtype.kind not in "iu":
        raise TypeError(f"ids must be integers, got {array.dtype}")
    return array


def id_list(ids: Any) -> np.ndarray:
    """Ids to delete: one int, or any integer array or sequence, as a flat int64 [n] array."""
    if isinstance(ids, (int, np.integer)) and not isinstance(ids, bool):
        ids = [ids]
    array = to_numpy(ids, "ids").reshape(-1)
    return int64_ids(array, len(array))
