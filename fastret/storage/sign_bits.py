"""Sign-bit codes of stored vectors: what the binary first stage (fastret.search.binary) scans.

Every stored vector may also carry one bit per dimension, the sign of its int8 code:

    bits[i] = 1 if codes[i] > 0 else 0            packed little-endian into words(dim) uint64 per
                                                  row (bit i of word i // 64), the padding zero

(from the int8 codes, so a store written long ago gets the same bits as a new one). A 384-dim
vector's bits take 48 bytes, an eighth of its int8 codes. They are kept in blocks of BLOCK_ROWS
rows, word-major within a block, so that one vector register of the kernels holds word w of 8
rows and no row needs a sum across lanes:

    blocked  uint64 [ceil(n / BLOCK_ROWS), words, BLOCK_ROWS]    row r, word w at
             [r // BLOCK_ROWS, w, r % BLOCK_ROWS]; the last block's padding rows zero
    rows     uint64 [n, words]                                   (`bit_rows`: one row after another)
"""

from __future__ import annotations

import numpy as np

# Rows per block of the kernels' layout (csrc/simd_paths.h: kBitBlock).
BLOCK_ROWS = 8
# Rows binarized at a time by `sign_bits` (a multiple of BLOCK_ROWS).
_SIGN_BLOCK = 1 << 16


def words(dim: int) -> int:
    """uint64 words per row of sign bits for vectors of `dim` dimensions."""
    return (dim + 63) // 64


def sign_bit_rows(codes: np.ndarray) -> np.ndarray:
    """uint64 [n, words(dim)]: the sign bits of int8 codes [n, dim], one row after another (bit i
    set when codes[:, i] > 0)."""
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.dtype != np.int8:
        raise TypeError(f"codes must be int8 [n, dim], got {codes.dtype} with shape {codes.shape}")
    n, dim = codes.shape
    packed = np.zeros((n, words(dim) * 8), np.uint8)
    packed[:, : (dim + 7) // 8] = np.packbits(codes > 0, axis=1, bitorder="little")
    return packed.view(np.uint64)


def blocked(rows: np.ndarray) -> np.ndarray:
    """Row-major sign bits uint64 [n, words] in the kernels' layout [ceil(n / 8), words, 8]."""
    n, n_words = rows.shape
    padded = np.zeros((-(-n // BLOCK_ROWS) * BLOCK_ROWS, n_words), np.uint64)
    padded[:n] = rows
    return np.ascontiguousarray(padded.reshape(-1, BLOCK_ROWS, n_words).transpose(0, 2, 1))


def sign_bits(codes: np.ndarray) -> np.ndarray:
    """uint64 [ceil(n / BLOCK_ROWS), words(dim), BLOCK_ROWS]: the sign bits of int8 codes [n, dim]
    in the kernels' blocked layout (module docstring), made a block of rows at a time (mapped
    codes are fine)."""
    codes = np.asarray(codes)  # a memmap stays mapped
    if codes.ndim != 2 or codes.dtype != np.int8:
        raise TypeError(f"codes must be int8 [n, dim], got {codes.dtype} with shape {codes.shape}")
    n, dim = codes.shape
    out = np.zeros((-(-n // BLOCK_ROWS), words(dim), BLOCK_ROWS), np.uint64)
    for start in range(0, n, _SIGN_BLOCK):  # bounds the temporaries ([block, dim] bytes)
        part = blocked(sign_bit_rows(np.asarray(codes[start:start + _SIGN_BLOCK])))
        out[start // BLOCK_ROWS : start // BLOCK_ROWS + len(part)] = part
    return out


def bit_rows(bits: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """uint64 [len(rows), words]: the sign bits of `rows` (int, any order; None: every row of
    every block, padding included) taken from blocked `bits`, one row after another."""
    if rows is None:
        return np.ascontiguousarray(np.asarray(bits).transpose(0, 2, 1).reshape(-1, bits.shape[1]))
    rows = np.asarray(rows, np.int64)
    return np.asarray(bits[rows // BLOCK_ROWS, :, rows % BLOCK_ROWS]).reshape(len(rows), bits.shape[1])


