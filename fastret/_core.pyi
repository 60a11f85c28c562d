"""Type stub for the C++ extension fastret._core (csrc/bindings.cpp)."""

from typing import Optional, Sequence

import numpy as np
import numpy.typing as npt

# (codes int8 [n, d], scales float32 [n], ids int64 [n], deleted bitmap uint64 [ceil(n / 64)] or None
#  [, picked rows int64 [m] strictly ascending, or None: only those rows are scored])
Segment = (
    tuple[npt.NDArray[np.int8], npt.NDArray[np.float32], npt.NDArray[np.int64], Optional[npt.NDArray[np.uint64]]]
    | tuple[npt.NDArray[np.int8], npt.NDArray[np.float32], npt.NDArray[np.int64], Optional[npt.NDArray[np.uint64]],
            Optional[npt.NDArray[np.int64]]]
)

def topk_int8(
    queries: npt.NDArray[np.int8],
    query_scales: npt.NDArray[np.float32],
    segments: Sequence[Segment],
    k: int,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]: ...
def topk_binary(
    queries: npt.NDArray[np.int8],
    query_scales: npt.NDArray[np.float32],
    planes: npt.NDArray[np.uint64],
    segments: Sequence[Segment],
    bits: Sequence[npt.NDArray[np.uint64]],
    k: int,
    candidates: int,
    codes_files: Optional[Sequence[Optional[tuple[int, int]]]] = None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]: ...
def picked_rows(masks: Sequence[npt.NDArray[np.bool_]]) -> list[npt.NDArray[np.int64]]: ...
def simd_path() -> str: ...
def set_simd_path(name: str) -> None: ...
def simd_paths_compiled() -> list[str]: ...
def simd_paths_supported() -> list[str]: ...
def set_num_threads(n: int) -> None: ...
def num_threads() -> int: ...
def pack_int8_weights(weights: npt.NDArray[np.int8]) -> npt.NDArray[np.uint8]: ...
def gemm_int8(
    a: npt.NDArray[np.int8], packed: npt.NDArray[np.uint8], kernel: Optional[str] = None
) -> npt.NDArray[np.int32]: ...
def amx_usable() -> bool: ...
def linear_int8(
    x: npt.NDArray[np.float32],
    packed: npt.NDArray[np.uint8],
    weight_scales: npt.NDArray[np.float32],
    bias: Optional[npt.NDArray[np.float32]] = None,
) -> npt.NDArray[np.float32]: ...
def read_bandwidth(bytes: int, threads: int, repeats: int) -> float: ...
def int8_peak(threads: int, seconds: float, repeats: int, narrow: bool) -> float: ...
