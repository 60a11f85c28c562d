"""The score of the binary first stage: a query's levels against the rows' sign bits
(fastret.storage.sign_bits), and its defaults.

A query is put on 2^B odd levels (B = query bits, 1 <= B <= MAX_QUERY_BITS):

    m_i = clip(floor((q_i / max|q| + 1) / 2 * 2^B), 0, 2^B - 1)      v_i = 2 m_i - (2^B - 1)

and held as B planes: plane p has bit i set when bit p of m_i is. The first-stage score of a row
with bits b is the query's levels against its signs:

    score = sum_i v_i * (2 b_i - 1) = sum_p 2^p * (dim - 2 * popcount(plane_p xor b))

an integer (exact in float32: |score| <= dim * (2^B - 1) < 2^24), higher first, ties to the lower
id. B = 1 is dim - 2 * Hamming(sign(q), b); B >= 2 is an asymmetric score that keeps the query's
magnitudes (benchmarks/binary_quality_nfcorpus.py measures how each B ranks).

The defaults: the scan's cost grows with B (B planes per row: at 10M x 384 on 2 Zen 4 cores a
batch runs about 2.7x the queries per second at B = 1 as at B = 4; a single query reads the bits
at memory speed at any B), so the search uses the fewest query bits whose nDCG@10 on NFCorpus dev
comes within 0.5% of exact int8 search at an oversample of at most 20, with the smallest such
oversample: B = 1 (Hamming) at oversample 20 (0.999x exact int8 on dev, 0.996x on test; B = 4
at oversample 10 gives 0.997x and 0.999x, at 2.7x the batch cost).
"""

from __future__ import annotations

import numpy as np

from ..storage.sign_bits import words

# Query levels beyond 8 bits gain nothing over the int8 codes a second stage reads anyway.
MAX_QUERY_BITS = 8
# Defaults of the binary first stage, chosen on NFCorpus dev by the rule in the module docstring
# (benchmarks/binary_quality_nfcorpus.py applies it).
DEFAULT_QUERY_BITS = 1
DEFAULT_OVERSAMPLE = 20


def check_query_bits(query_bits: object) -> int:
    """`query_bits` as an int in [1, MAX_QUERY_BITS]; ValueError / TypeError otherwise."""
    if isinstance(query_bits, bool) or not isinstance(query_bits, (int, np.integer)):
        raise TypeError(f"query_bits must be an int in [1, {MAX_QUERY_BITS}], got {query_bits!r}")
    if not 1 <= query_bits <= MAX_QUERY_BITS:
        raise ValueError(f"query_bits must be in [1, {MAX_QUERY_BITS}], got {query_bits}")
    return int(query_bits)


def query_levels(queries: np.ndarray, query_bits: int) -> np.ndarray:
    """int32 [q, dim]: each query on 2^B odd levels v in [-(2^B - 1), 2^B - 1] (module docstring)."""
    queries = np.asarray(queries, np.float64)
    scale = np.max(np.abs(queries), axis=1, keepdims=True)
    scale[scale == 0] = 1.0  # a zero query: every level 1 (any order is as good)
    top = (1 << check_query_bits(query_bits)) - 1
    m = np.clip(np.floor((queries / scale + 1.0) / 2.0 * (top + 1)), 0, top).astype(np.int32)
    return 2 * m - top


def query_planes(queries: np.ndarray, query_bits: int) -> np.ndarray:
    """uint64 [q, B, words(dim)]: the bit planes of `query_levels` (plane p: bit p of m_i)."""
    levels = query_levels(queries, query_bits)
    m = (levels + (1 << query_bits) - 1) // 2
    n, dim = m.shape
    planes = np.zeros((n, query_bits, words(dim) * 8), np.uint8)
    for p in range(query_bits):
        planes[:, p, : (dim + 7) // 8] = np.packbits((m >> p) & 1, axis=1, bitorder="little")
    return planes.view(np.uint64)


def binary_scores_ref(planes: np.ndarray, bits: np.ndarray, dim: int) -> np.ndarray:
    """int64 [q, n]: the first-stage score of every row of `bits` (row-major uint64 [n, words],
    `sign_bit_rows` or `bit_rows`) for every query, the slow way (the reference the C++ kernels
    must equal)."""
    planes = np.asarray(planes, np.uint64)
    bits = np.asarray(bits, np.uint64)
    differ = np.bitwise_xor(planes[:, :, None, :], bits[None, None, :, :])  # [q, B, n, words]
    counts = np.unpackbits(differ.view(np.uint8), axis=-1).sum(axis=-1, dtype=np.int64)  # [q, B, n]
    weights = (1 << np.arange(planes.shape[1], dtype=np.int64))[None, :, None]
    return (weights * (dim - 2 * counts)).sum(axis=1)
