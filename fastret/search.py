"""Exact int8 top-k inner-product search: the C++ core on the CPU, torch on CUDA, and the reference.

    score(q, d) = (float32(<q8, d8>) * s_q) * s_d

Results are ordered by score (higher first), then by id (lower first); every backend returns the
same ids and scores as `topk_int8_ref`.

Scores must stay finite: a query whose scale could push a score past float32's range is refused
(`check_score_range`) rather than ranked by inf and NaN. The core itself ranks a NaN score as -inf,
so no input it is handed can make it return fewer than k rows or a made-up one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _core, checks
from .quant import quantize_queries, quantized_vectors

# Corpus rows scored per torch matmul on the GPU: bounds the [queries, chunk] score buffers.
_TORCH_CHUNK_ELEMENTS = 1 << 27
# Corpus rows per group whose best score pre-selects candidates in the torch backend.
_CANDIDATE_GROUP = 128
# The largest |<q8, d8>| per dimension: query codes in [-127, 127], corpus codes in [-128, 127].
_MAX_PRODUCT = 127 * 128
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_score_range(query_scales: np.ndarray, max_corpus_scale: float, dim: int) -> None:
    """Refuse queries whose scores could overflow float32 (and turn into inf or NaN).

    A score is (float(<q8, d8>) * s_q) * s_d with |<q8, d8>| <= dim * 127 * 128; both products must
    stay finite. Real embeddings are many orders of magnitude inside this bound.

    Raises:
        ValueError: naming the largest query value and the bound.
    """
    largest_query = float(np.max(query_scales, initial=0.0))
    bound = dim * _MAX_PRODUCT * largest_query
    if bound > _FLOAT32_MAX or bound * float(max_corpus_scale) > _FLOAT32_MAX:
        raise ValueError(
            f"queries with scales up to {largest_query:.3g} against vectors with scales up to "
            f"{float(max_corpus_scale):.3g} (value / code) could give scores beyond float32's range "
            f"({_FLOAT32_MAX:.3g}); normalize the vectors (embeddings are usually unit length)"
        )


def topk_int8(queries: Any, db_int8: Any, db_scales: Any, k: int, *, ids: Any = None):
    """Exact top-k of int8 inner products with per-vector scales.

    Args:
        queries: float [q, d] (quantized here with `quantize_queries`) or a (codes int8 [q, d],
            scales float32 [q]) tuple; codes within [-63, 63] take the fastest kernels. One 1-D vector counts as q = 1.
        db_int8: int8 [n, d] codes in [-127, 127].
        db_scales: float32 [n] scales.
        k: results per query, 1 <= k <= n.
        ids: optional int64 [n] ids returned instead of row numbers (ties go to the lower id).

    Returns:
        (scores float32 [q, k], ids int64 [q, k]): numpy arrays, or torch tensors on the GPU when
        the inputs are CUDA tensors.

    Raises:
        TypeError, ValueError: wrong dtype, shape or dimension, NaN/inf, codes of -128, bad k.
    """
    if checks.is_cuda(db_int8):
        return _topk_int8_torch_inputs(queries, db_int8, db_scales, k, ids)
    q_codes, q_scales, db_codes, db_scale, row_ids, k = _checked(queries, db_int8, db_scales, k, ids)
    scores, rows = _core.topk_int8(q_codes, q_scales, [(db_codes, db_scale, row_ids, None)], k)
    return scores, row_ids[rows]


def topk_int8_ref(queries: Any, db_int8: Any, db_scales: Any, k: int, *, ids: Any = None):
    """Plain numpy reference for `topk_int8` (same arguments, same results, slow)."""
    q_codes, q_scales, db_codes, db_scale, row_ids, k = _checked(queries, db_int8, db_scales, k, ids)
    dots = q_codes.astype(np.int64) @ db_codes.astype(np.int64).T
    scores = (dots.astype(np.float32) * q_scales[:, None]) * db_scale[None, :]
    order = np.lexsort((np.broadcast_to(row_ids, scores.shape), -scores), axis=-1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), row_ids[order]


def _checked(queries, db_int8, db_scales, k, ids):
    """Validated numpy inputs of topk_int8 and its reference; ids default to row numbers."""
    db_codes, db_scale = checks.int8_codes(db_int8, db_scales, "db")
    k = checks.check_k(k, len(db_codes))
    q_codes, q_scales, _ = quantized_vectors(queries, "queries", db_codes.shape[1], queries=True)
    check_score_range(q_scales, db_scale.max(initial=0.0), db_codes.shape[1])
    if ids is None:
        row_ids = np.arange(len(db_codes), dtype=np.int64)
    else:
        row_ids = checks.int64_ids(ids, len(db_codes))
    return q_codes, q_scales, db_codes, db_scale, row_ids, k


def _topk_int8_torch_inputs(queries, db_int8, db_scales, k, ids):
    import torch

    device = db_int8.device
    if db_int8.dtype != torch.int8 or db_int8.ndim != 2:
        raise TypeError(f"db_int8 must be an int8 [n, d] tensor, got {db_int8.dtype} {tuple(db_int8.shape)}")
    n, dim = db_int8.shape
    k = checks.check_k(k, n)
    if isinstance(queries, tuple):
        q_codes, q_scales = (torch.as_tensor(part, device=device) for part in queries)
    else:
        q_codes, q_scales = quantize_queries(torch.as_tensor(queries, device=device))
    if q_codes.ndim == 1:
        q_codes, q_scales = q_codes[None], q_scales.reshape(1)
    if q_codes.ndim != 2 or q_codes.shape[1] != dim or q_codes.shape[0] == 0:
        raise ValueError(f"queries must be [q, {dim}] with q >= 1, got {tuple(q_codes.shape)}")
    row_ids = None if ids is None else torch.as_tensor(ids, device=device, dtype=torch.int64)
    scores, rows = topk_int8_torch(q_codes, q_scales.float(), db_int8, db_scales.float(), k, row_ids)
    return scores, rows if row_ids is None else row_ids[rows]


def topk_int8_torch(q_codes, q_scales, db_codes, db_scales, k: int, ids=None, *, id_rank=None):
    """`topk_int8` in torch on tensors of one device (the GPU path; also runs on the CPU).

    Returns (scores float32 [q, k], corpus rows int64 [q, k]); `ids` only ranks ties, and
    `id_rank` (`rank_ids(ids)`, for callers that search the same rows again) saves ranking them.
    Scores use the same float32 expression as the C++ core. Per chunk of the corpus, a few
    candidates per query are picked from the scores (`_chunk_candidates`) and ranked exactly by
    64-bit keys (`_rank_keys`: order-preserving score bits, then the inverted id rank: no ties);
    the best k of every chunk's candidates are the result.
    """
    import torch

    if id_rank is None:
        id_rank = rank_ids(ids) if ids is not None else torch.arange(db_codes.shape[0], device=db_codes.device)
    n = db_codes.shape[0]
    chunk = max(8, min(n, _TORCH_CHUNK_ELEMENTS // max(1, q_codes.shape[0])))
    best_keys = best_pos = None
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        # [q, chunk] float32: (float(<q8, d8>) * s_q) * s_d, rounded as the C++ core rounds it
        scores = torch.mul(int8_matmul(q_codes, db_codes[start:stop]), q_scales[:, None])
        scores.mul_(db_scales[None, start:stop])
        pos = _chunk_candidates(scores, id_rank[start:stop], min(k, stop - start))
        keys = _rank_keys(scores.gather(1, pos), id_rank[start:stop][pos])
        pos = pos + start
        if best_keys is not None:
            keys, pos = torch.cat([best_keys, keys], 1), torch.cat([best_pos, pos], 1)
        keys, take = keys.topk(min(k, keys.shape[1]), dim=1)  # sorted: best first
        best_keys, best_pos = keys, pos.gather(1, take)
    return _key_scores(best_keys), best_pos


def rank_ids(ids):
    """int64 tensor: each id's position in ascending id order (the tie rule's order)."""
    import torch

    rank = torch.empty_like(ids)
    rank[torch.argsort(ids, stable=True)] = torch.arange(len(ids), device=ids.device)
    return rank


def _chunk_candidates(scores, id_rank, k: int):
    """int64 [q, m], m >= k: columns of `scores` [q, n] that include each row's k best (higher
    score, then lower id rank).

    Columns are grouped _CANDIDATE_GROUP at a time; the k groups with the highest maxima hold
    every score of the k best unless the k-th and (k+1)-th maxima are equal (a group left out
    could then hold a tied score with a lower id): such rows, and small chunks, take all columns.
    One read of the scores (the group maxima) replaces a top-k over all of them.
    """
    import torch

    q, n = scores.shape
    groups = n // _CANDIDATE_GROUP
    every = torch.arange(n, device=scores.device).expand(q, n)
    if 2 * (k + 1) > groups:
        return every
    body = groups * _CANDIDATE_GROUP
    maxima = scores[:, :body].reshape(q, groups, _CANDIDATE_GROUP).amax(dim=2)  # [q, groups]
    top = maxima.topk(k + 1, dim=1)  # sorted
    offsets = torch.arange(_CANDIDATE_GROUP, device=scores.device)
    picked = (top.indices[:, :k, None] * _CANDIDATE_GROUP + offsets).reshape(q, k * _CANDIDATE_GROUP)
    tail = every[:, body:]  # the columns after the last whole group
    candidates = torch.cat([picked, tail], dim=1)
    tied = (top.values[:, k - 1] == top.values[:, k]).nonzero().squeeze(1)
    if len(tied):  # rare: those rows rank all their columns
        candidates[tied] = _rank_keys(scores[tied], id_rank[None, :]).topk(
            candidates.shape[1], dim=1, sorted=False).indices
    return candidates


def _rank_keys(scores, id_rank):
    """int64 keys ordered like (score descending, id ascending) under a plain descending sort.

    `id_rank` (int64, broadcastable to `scores`) ranks the ids; -0.0 counts as +0.0."""
    import torch

    bits = (scores + 0.0).view(torch.int32)  # -0.0 + 0.0 = +0.0
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # float order as signed int order
    return (ordered.to(torch.int64) << 32) | (0xFFFFFFFF - id_rank)


def _key_scores(keys):
    """The float32 scores inside `_rank_keys` keys (the bit map is its own inverse)."""
    import torch

    ordered = (keys >> 32).to(torch.int32)
    return (ordered ^ ((ordered >> 31) & 0x7FFFFFFF)).view(torch.float32)


def int8_matmul(a, b):
    """int32 [m, n] = a int8 [m, d] @ b int8 [n, d].T, exact.

    CUDA uses cuBLASLt's int8 GEMM (`torch._int_mm`); elsewhere, and for the shapes cuBLASLt
    refuses, an exact float64 matmul (every |product sum| < 2^53).
    """
    import torch

    if a.device.type == "cuda":
        try:
            return int_mm_padded(a, b)
        except RuntimeError as error:  # cuBLASLt has no int8 kernel for some shapes (seen: d=96, n=65784)
            if "CUBLAS_STATUS_NOT_SUPPORTED" not in str(error):
                raise
    return (a.double() @ b.double().T).round_().to(torch.int32)


def int_mm_padded(a, b):
    """`torch._int_mm(a, b.T)` with zero padding to its shape rules (m > 16; d, n multiples of 8)."""
    import torch

    m, d = a.shape
    n = b.shape[0]
    pad_d = (-d) % 8 + (8 if d < 8 else 0)
    a_padded = torch.nn.functional.pad(a, (0, pad_d, 0, max(0, 17 - m)))
    if pad_d or n % 8:  # a corpus chunk is copied only when its shape needs padding
        b = torch.nn.functional.pad(b, (0, pad_d, 0, (-n) % 8))
    return torch._int_mm(a_padded, b.T)[:m, :n]
