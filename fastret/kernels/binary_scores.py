"""The binary first stage's score of every row for every query, from packed sign bits (popcount).

A query is held as B bit planes of W = ceil(dim / 64) words (fastret.search.binary.query_planes),
a row as its W words of sign bits (fastret.storage.sign_bits); the score of a row with bits b is

    score = sum_p 2^p * (dim - 2 * popcount(plane_p xor b))
          = (2^B - 1) * dim - 2 * sum_p 2^p * popcount(plane_p xor b)

an integer (|score| <= dim * (2^B - 1) < 2^24), exactly the C++ core's (csrc/topk_binary.h).
Padding bits past dim are zero in planes and rows alike, so they never count.

Shapes and dtypes: planes int64 [q, B, W] (the uint64 words viewed as int64: torch has few uint64
ops); bits int64 [ceil(n / 8), W, 8], the kernels' blocked layout (row r, word w at
[r // 8, w, r % 8]); scores int32 [q, n].

The kernel: program (i, j) of grid (ceil(n / BLOCK_R), q) reads BLOCK_R rows' words (for each word
index, the 8 rows of a block lie side by side: coalesced) and the query's planes (a few words, from
cache), and counts bits with the SWAR popcount in 64-bit integers (the same code runs in Triton's
interpreter). One query reads the bits once: dim / 8 bytes per row, an eighth of the int8 codes.

Dispatch: CUDA tensors run the Triton kernel; CPU tensors run `binary_scores_ref` (plain torch), or
the Triton kernel in Triton's interpreter when TRITON_INTERPRET=1.
"""

import contextlib

import torch

from ._triton import require_triton, tl, triton, use_triton

BLOCK_ROWS = 8  # rows per block of the bits layout (fastret.storage.sign_bits.BLOCK_ROWS)
_MAX_GRID_Y = 65535  # CUDA limit on grid axis 1: queries per launch


# ------------------------------------------------------------------------------------- reference


def binary_scores_ref(planes: torch.Tensor, bits: torch.Tensor, n_rows: int, dim: int) -> torch.Tensor:
    """The scores in plain torch (bits unpacked to 0/1, counted with sums): the kernel's reference.

    Args and returns: as `binary_scores`.
    """
    _check_inputs(planes, bits, n_rows, dim)
    shifts = torch.arange(64, device=bits.device)
    rows = bits.permute(0, 2, 1).reshape(-1, bits.shape[1])[:n_rows]  # [n, W] row after row
    row_bits = ((rows[:, :, None] >> shifts) & 1).reshape(n_rows, -1)  # [n, 64 W] 0/1
    plane_bits = ((planes[:, :, :, None] >> shifts) & 1).reshape(planes.shape[0], planes.shape[1], -1)  # [q, B, 64 W]
    differ = (plane_bits[:, :, None, :] != row_bits[None, None, :, :]).sum(-1)  # [q, B, n] popcounts
    weights = (1 << torch.arange(planes.shape[1], device=bits.device))[None, :, None]
    return (weights * (dim - 2 * differ)).sum(1).to(torch.int32)


# --------------------------------------------------------------------------------------- kernels


@triton.jit
def _popcount(x):
    # uint64 -> uint64 bit count (SWAR: pairs, nibbles, bytes, then one multiply sums the bytes)
    x = x - ((x >> 1) & 0x5555555555555555)
    x = (x & 0x3333333333333333) + ((x >> 2) & 0x3333333333333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0F
    return (x * 0x0101010101010101) >> 56


@triton.jit
def _binary_scores_kernel(
    PLANES,  # [q, B, W] int64 query bit planes
    BITS,  # [ceil(n / 8), W, 8] int64 sign bits, blocked
    OUT,  # [q, n] int32 scores out (row stride n_rows)
    n_rows,
    dim,
    WORDS: tl.constexpr,
    QUERY_BITS: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    # grid (cdiv(n, BLOCK_R), q): program (i, j) scores rows [i*BLOCK_R, +BLOCK_R) for query j
    query = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # [BLOCK_R]
    valid = rows < n_rows
    offsets = (rows // 8).to(tl.int64) * (WORDS * 8) + rows % 8  # [BLOCK_R] word 0 of each row
    weighted = tl.zeros((BLOCK_R,), tl.uint64)  # sum_p 2^p popcount(plane_p xor b)
    for w in tl.static_range(WORDS):
        b = tl.load(BITS + offsets + w * 8, mask=valid, other=0).to(tl.uint64, bitcast=True)  # [BLOCK_R]
        for p in tl.static_range(QUERY_BITS):
            plane = tl.load(PLANES + (query * QUERY_BITS + p) * WORDS + w).to(tl.uint64, bitcast=True)  # scalar
            weighted += _popcount(plane ^ b) << p
    score = ((1 << QUERY_BITS) - 1) * dim - 2 * weighted.to(tl.int32)
    tl.store(OUT + query.to(tl.int64) * n_rows + rows, score, mask=valid)


# ------------------------------------------------------------------------------------ public API


def binary_scores(planes: torch.Tensor, bits: torch.Tensor, n_rows: int, dim: int) -> torch.Tensor:
    """The first-stage score of each of the first `n_rows` rows of `bits` for every query.

    Args:
        planes: int64 [q, B, W] query bit planes (`fastret.search.binary.query_planes` viewed as
            int64), 1 <= B <= 8, W = ceil(dim / 64).
        bits: int64 [ceil(n_rows / 8) or more, W, 8] sign bits in the blocked layout (a segment's
            `sign_bits()` viewed as int64), on the planes' device.
        n_rows: rows scored (a segment's length; the last block's padding rows are not).
        dim: the vectors' dimension.

    Returns:
        int32 [q, n_rows] scores (module docstring), on the inputs' device.

    Raises:
        TypeError: planes or bits not int64 tensors of those ranks.
        ValueError: shapes that disagree with dim and n_rows, inputs on two devices.
        RuntimeError: a CUDA tensor (or TRITON_INTERPRET=1) without triton installed.
    """
    _check_inputs(planes, bits, n_rows, dim)
    if not use_triton(bits.device):
        return binary_scores_ref(planes, bits, n_rows, dim)
    require_triton("binary_scores", bits.device, _binary_scores_kernel)
    n_queries, query_bits, words = planes.shape
    out = torch.empty((n_queries, n_rows), dtype=torch.int32, device=bits.device)
    block_r = 256 if bits.device.type == "cuda" else 1024  # the interpreter: few big programs
    planes, bits = planes.contiguous(), bits.contiguous()
    with torch.cuda.device(bits.device) if bits.device.type == "cuda" else contextlib.nullcontext():
        for first in range(0, n_queries, _MAX_GRID_Y):
            count = min(_MAX_GRID_Y, n_queries - first)
            _binary_scores_kernel[(triton.cdiv(n_rows, block_r), count)](
                planes[first:], bits, out[first:], n_rows, dim,
                WORDS=words, QUERY_BITS=query_bits, BLOCK_R=block_r, num_warps=4,
            )  # fmt: skip
    return out


def _check_inputs(planes, bits, n_rows: int, dim: int) -> None:
    for name, tensor in (("planes", planes), ("bits", bits)):
        if not isinstance(tensor, torch.Tensor) or tensor.dtype != torch.int64 or tensor.ndim != 3:
            raise TypeError(f"{name} must be an int64 tensor with 3 dimensions (uint64 words viewed as int64), got "
                            f"{type(tensor).__name__} {getattr(tensor, 'dtype', '')} "
                            f"{tuple(getattr(tensor, 'shape', ()))}")
    words = (dim + 63) // 64
    if dim < 1 or planes.shape[2] != words or not 1 <= planes.shape[1] <= 8 or planes.shape[0] == 0:
        raise ValueError(f"planes must be [q >= 1, 1 <= B <= 8, {words}] for dim {dim}, got {tuple(planes.shape)}")
    if bits.shape[1:] != (words, BLOCK_ROWS) or bits.shape[0] * BLOCK_ROWS < n_rows or n_rows < 1:
        raise ValueError(f"bits must be [>= {-(-max(n_rows, 1) // BLOCK_ROWS)}, {words}, {BLOCK_ROWS}] for "
                         f"{n_rows} rows of dim {dim} (n_rows >= 1), got {tuple(bits.shape)}")
    if planes.device != bits.device:
        raise ValueError(f"planes and bits must be on one device, got {planes.device} and {bits.device}")
