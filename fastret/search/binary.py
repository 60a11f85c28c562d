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

The defaults come from benchmarks/binary_recall_scale.py (recall against exact int8 search at 100k,
1M and 10M rows, on clustered vectors, planted neighbours and real MiniLM embeddings among
distractors drawn from the Gaussian fitted to them; docs/search.md has the table and the picture).
How many candidates keep the exact top 10 grows with the rows searched: the rows whose binary score
beats a true neighbour's grow with the corpus. The rule: at each size, the smallest oversample of
the grid with recall@10 >= 0.99 on every kind, at the query bits whose single query is then
fastest. 4-bit queries rank well enough to need a few times fewer candidates than 1-bit ones
(Hamming), which a single query pays for in re-ranking, while its scan reads the bits at memory
speed at any B; so B = 4, and

    at_c = AUTO_AT_1M * (rows / 1e6) ** AUTO_GROWTH                  what c = AUTO_C results need
    auto_oversample(rows, c) = clip(max(ceil(at_c * (AUTO_C / c) ** AUTO_C_GROWTH),
                                        min(ceil(at_c), AUTO_DEEP_FLOOR)), AUTO_MIN, AUTO_MAX)

for c results per query. at_c is over the recall@10 needs (the embeddings need the most: 100 at
100k, 400 at 1M, 2,000 at 10M: x4 and then x5 a decade of rows, the steeper growth kept for larger
corpora), never below NFCorpus's 20 (benchmarks/binary_quality_nfcorpus.py: 3,633 documents, where
c x oversample past the rows keeps them all). A deeper k needs fewer candidates per result:
recall@100 >= 0.99 needed 200 at 1M and more than 400 at 10M (at_c x 10^-0.4 gives 200 and 998,
which keep it), so that k = 100 does not cost more than exact search; but at 100k it needed 100,
as much as recall@10 (the deep floor). The rule is for one query: a batch scans B planes per row
for every query and re-ranks every query's candidates, and at 10M x 384 on 2 Zen 4 cores a batch of
200 at the defaults ran at half exact int8 search's queries per second (benchmarks/binary_search.py),
where exact search computes a batch as matrix products: batches keep first_stage="int8".
"""

from __future__ import annotations

import math

import numpy as np

from ..storage.sign_bits import words

# Query levels beyond 8 bits gain nothing over the int8 codes a second stage reads anyway.
MAX_QUERY_BITS = 8
# Defaults of the binary first stage, chosen by the rule in the module docstring
# (benchmarks/binary_recall_scale.py applies it).
DEFAULT_QUERY_BITS = 4
# oversample="auto": `auto_oversample` of the rows searched (constants from benchmarks/binary_recall_scale.py).
AUTO = "auto"
DEFAULT_OVERSAMPLE = AUTO
AUTO_MIN = 20  # NFCorpus's oversample (benchmarks/binary_quality_nfcorpus.py): small corpora keep it
AUTO_AT_1M = 500  # at 1M rows and c = AUTO_C
AUTO_C = 10
AUTO_C_GROWTH = 0.4  # per result: (AUTO_C / c) ** 0.4
AUTO_DEEP_FLOOR = 100
AUTO_GROWTH = 0.7  # x5 a decade of rows
AUTO_MAX = 100_000


def auto_oversample(rows: int, c: int) -> int:
    """The oversample of oversample="auto" for a search of `rows` live rows keeping `c` results
    (candidates) per query (module docstring: the rule and where its constants come from).

    Raises:
        ValueError: rows < 0, or c < 1.
    """
    if rows < 0:
        raise ValueError(f"rows must be >= 0, got {rows}")
    if c < 1:
        raise ValueError(f"c must be >= 1 (results per query), got {c}")
    at_c = AUTO_AT_1M * (max(rows, 1) / 1e6) ** AUTO_GROWTH  # what c = AUTO_C needs
    deep_floor = min(math.ceil(at_c), AUTO_DEEP_FLOOR)
    return int(min(max(AUTO_MIN, deep_floor, math.ceil(at_c * (AUTO_C / c) ** AUTO_C_GROWTH)), AUTO_MAX))


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
