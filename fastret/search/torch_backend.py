"""The torch backend: exact int8 top-k on the queries' device (the CUDA path; it runs on the CPU
too), with the same ids and scores as the C++ core.

Each segment's live rows are copied to the device once (`device_arrays`) and reused until its
deletions change; a filter's rows are picked from that copy per call. Ties are ranked by 64-bit
keys (`_rank_keys`: order-preserving score bits, then the inverted id rank), the torch form of
fastret.search.rules' tie rule. torch is imported inside the functions: nothing here loads it
until a torch query comes.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .. import checks
from ..storage.segment import Segment
from .rules import check_score_range, float_products, max_scale, merge_candidates, query_codes

# Corpus rows scored per torch matmul on the GPU: bounds the [queries, chunk] score buffers.
_TORCH_CHUNK_ELEMENTS = 1 << 27


# Corpus rows per group whose best score pre-selects candidates in the torch backend.
_CANDIDATE_GROUP = 128


def torch_candidates(segments: Sequence[Segment], q_codes, q_scales, c: int, q_floats=None,
                     allowed: Sequence[np.ndarray] | None = None):
    """`core_candidates` in torch on the device of `q_codes` (the CUDA path; runs on the CPU too).

    Each segment is searched on its own device copy (`device_arrays`: live rows only, made once per
    device and reused until the segment's deletions change) with `topk_int8_torch`; the segments'
    top candidates are merged with `merge_candidates`. Results are numpy arrays, equal to
    `core_candidates`' (float dot products up to float rounding: torch sums in its own order).
    A filter's `allowed` rows are picked from the device copies for this call only (the copies
    stay those of the live rows; the ids' ranks keep their order on any subset).
    """
    import torch

    check_score_range(np.array([float(q_scales.max())]), max_scale(segments), q_codes.shape[1])
    device = q_codes.device
    scores, ids, exact = [], [], []
    for number, segment in enumerate(segments):
        codes, scales, segment_ids, id_rank = device_arrays(segment, device) if segment.live_count else (None,) * 4
        keep = None
        if allowed is not None and allowed[number] is not None and segment.live_count:
            live = segment.live_rows() if segment.deleted_count else np.arange(len(segment))
            keep = torch.as_tensor(np.flatnonzero(allowed[number][live]), device=device)
            codes, scales, segment_ids, id_rank = (t[keep] for t in (codes, scales, segment_ids, id_rank))
        count = segment.passing_count(None if allowed is None else allowed[number])
        if count == 0:
            continue
        found, rows = topk_int8_torch(q_codes, q_scales, codes, scales, min(c, count), segment_ids, id_rank=id_rank)
        scores.append(found)
        ids.append(segment_ids[rows])
        if q_floats is not None:
            float16 = device_arrays(segment, device, float16=True)
            exact.append(float_products((float16 if keep is None else float16[keep])[rows], q_floats))
    parts = [torch.cat(found, 1).cpu().numpy() for found in (scores, ids)]
    return merge_candidates([(*parts, torch.cat(exact, 1).cpu().numpy() if exact else None)], c)


def device_arrays(segment: Segment, device: Any, *, float16: bool = False):
    """The live rows of `segment` as torch tensors on `device`: (codes, scales, ids, the ids' ranks
    from `rank_ids`), or the float16 copies with `float16=True`. Copied once per device and kept in the segment's cache, which every
    version of the segment shares, with the deletion count they were made at: a version with other
    deletions (deletions only grow) makes fresh ones."""
    import torch

    device = torch.device(device)
    if device.type == "cuda" and device.index is None:  # "cuda" and "cuda:0" share one copy
        device = torch.device("cuda", torch.cuda.current_device())
    key = ("device-float16" if float16 else "device", str(device))
    cached = segment.cache.get(key)
    if cached is None or cached[0] != segment.deleted_count:
        rows = segment.live_rows() if segment.deleted_count else slice(None)
        fields = (segment.float16,) if float16 else (segment.codes, segment.scales, segment.ids)
        tensors = tuple(torch.tensor(np.asarray(array)[rows], device=device) for array in fields)
        cached = (segment.deleted_count, tensors[0] if float16 else (*tensors, rank_ids(tensors[2])))
        segment.cache[key] = cached
    return cached[1]


def topk_int8_torch_inputs(queries, db_int8, db_scales, k, ids):
    """`fastret.search.core.topk_int8` for CUDA tensors: checked, then `topk_int8_torch`."""
    import torch

    device = db_int8.device
    if db_int8.dtype != torch.int8 or db_int8.ndim != 2:
        raise TypeError(f"db_int8 must be an int8 [n, d] tensor, got {db_int8.dtype} {tuple(db_int8.shape)}")
    n, dim = db_int8.shape
    k = checks.check_k(k, n)
    q_codes, q_scales, _ = query_codes(queries, dim, device)
    row_ids = None if ids is None else torch.as_tensor(ids, device=device, dtype=torch.int64)
    scores, rows = topk_int8_torch(q_codes, q_scales, db_int8, db_scales.float(), k, row_ids)
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
