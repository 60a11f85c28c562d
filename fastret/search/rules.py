"""Exact int8 top-k inner-product search, and the rules every searcher shares (the search seam).

    score(q, d) = (float32(<q8, d8>) * s_q) * s_d

Results are ordered by score (higher first), then by id (lower first): `rank` is that rule, the
one place it is written in Python (the C++ core has its own; the torch backend ranks the 64-bit
keys of `_rank_keys`). Every backend returns the same ids and scores as `topk_int8_ref`.

The seam: `Searchable` is what `Index` and `fastret.search.distributed.ShardedIndex` both are, and what
every consumer (HybridSearcher, the CLI, the server, evaluation) takes. A searchable answers
`candidates` (its top c by int8 score, optionally with float dot products); `search_by_candidates`
turns those into `search` results, rescoring with `rescored` when asked and padding results that
a filter left short, for every searchable alike. A filter (fastret.search.filters) reaches the backends as
a bool mask of allowed rows per segment (None: every row), and `narrowed` picks each segment's
path: skipped when no live row passes, searched as it is when every live row does, only its
passing rows read when they are few (below PICK_FRACTION of its rows: the core's picked rows, so
the cost follows them), else searched with deleted | not-allowed as its bitmap. Never a post-filter.
`merge_candidates` joins the candidates of segments or shards by the same rule. Two backends search
a list of segments: `core_candidates` (the C++ core, one call over every segment) and
`torch_candidates` (torch on the queries' device: each segment's live rows are copied there once
and reused until its deletions change; a filter's rows are picked from that copy per call).
The binary first stage is a third way to pick candidates (`binary_candidates`): every searchable
takes `first_stage` and `oversample`, checked once by `check_first_stage`.

Scores must stay finite: a query whose scale could push a score past float32's range is refused
(`check_score_range`) rather than ranked by inf and NaN. The core itself ranks a NaN score as -inf,
so no input it is handed can make it return fewer than k rows or a made-up one.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np

from .. import _core, checks
from ..quant import quantize_queries, quantized_vectors
from ..storage import sign_bits
from ..storage.index_file import IndexFileError
from ..storage.segment import Segment

# Corpus rows scored per torch matmul on the GPU: bounds the [queries, chunk] score buffers.
_TORCH_CHUNK_ELEMENTS = 1 << 27
# Corpus rows per group whose best score pre-selects candidates in the torch backend.
_CANDIDATE_GROUP = 128
# The largest |<q8, d8>| per dimension: query codes in [-127, 127], corpus codes in [-128, 127].
_MAX_PRODUCT = 127 * 128
_FLOAT32_MAX = float(np.finfo(np.float32).max)
# A segment whose passing live rows are fewer than this fraction of its rows is searched by reading
# only those rows (the core's picked rows), not by scanning it with a bitmap. Measured on 1M x 384
# rows in memory, one query, 2 threads, AVX-512 VNNI (Zen 4): a scan (with or without a bitmap)
# 13-18 ms; picking 1/100 of the rows at random 0.011x a scan, 1/16 0.12x, 1/4 0.53x, 1/2 0.91x:
# 1/4 keeps a margin for mapped pages not in memory yet, which a picked row faults in one by one.
PICK_FRACTION = 1 / 4


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
    order = rank(scores, row_ids, k)
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


# ---------------------------------------------------------------------------------- the search seam

EMPTY_ID = -1  # the id of an empty slot in a short result (its score is -inf)


def rank(scores: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """The tie rule: positions of the k best entries of each row, higher score first, then lower id.

    Args:
        scores: float [q, n]. ids: int [q, n], or [n] shared by every row.
        k: entries kept per row (all n when k >= n).

    Returns:
        int64 [q, min(k, n)] positions into each row, best first.
    """
    return np.lexsort((np.broadcast_to(ids, scores.shape), -scores), axis=-1)[:, :k]


def take_top(k: int, scores: np.ndarray, ids: np.ndarray, *others: np.ndarray) -> tuple:
    """The k best entries of each row by `rank`: (scores, ids, *others), each [q, min(k, n)]
    (ids may be [n], shared by every row)."""
    ids = np.broadcast_to(ids, scores.shape)
    order = rank(scores, ids, k)
    return tuple(np.take_along_axis(a, order, axis=1) for a in (scores, ids, *others))


def pad(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Short results [q, n <= k] as (scores float32 [q, k], ids int64 [q, k]) ending in (-inf, EMPTY_ID)."""
    out_scores = np.full((len(scores), k), -np.inf, np.float32)
    out_ids = np.full((len(ids), k), EMPTY_ID, np.int64)
    out_scores[:, : scores.shape[1]], out_ids[:, : ids.shape[1]] = scores, ids
    return out_scores, out_ids


@runtime_checkable
class Searchable(Protocol):
    """What every searcher offers (`fastret.Index`, `fastret.search.distributed.ShardedIndex`), and what
    HybridSearcher, `fastret search`, `fastret serve` and evaluation take.

    `search` and `candidates` follow `Index.search` and `Index.candidates` (same arguments and
    errors, filters and the binary first stage included; the results are those of `Index`, except
    where a searcher's own docstring says how they may differ); `contains`, `documents` and
    `fields` follow `Index.contains`, `Index.documents` and `Index.fields`.
    """

    @property
    def dim(self) -> int: ...

    @property
    def store_float16(self) -> bool: ...

    @property
    def has_documents(self) -> bool: ...

    def __len__(self) -> int: ...

    def search(self, queries: Any, k: int = 10, *, rescore: bool = False, rescore_factor: int = 4,
               filter: Any = None, first_stage: str = "int8", oversample: int | None = None): ...

    def candidates(self, queries: Any, c: int, *, exact: bool = False, filter: Any = None,
                   first_stage: str = "int8", oversample: int | None = None): ...

    def contains(self, ids: Any, *, filter: Any = None) -> np.ndarray: ...

    def documents(self, ids: Any) -> np.ndarray: ...

    def fields(self, ids: Any, names: Sequence[str] | None = None) -> list: ...


class SearchableBase:
    """What `Index` and `ShardedIndex` keep alike: the vectors' dimension and whether float16 copies
    are kept for rescoring, both fixed when the index is made."""

    def __init__(self, dim: int, store_float16: bool):
        self._dim = int(dim)
        self._store_float16 = bool(store_float16)

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return self._dim

    @property
    def store_float16(self) -> bool:
        """Whether float16 copies are kept for rescoring."""
        return self._store_float16


def check_rescore(store_float16: bool, queries: Any, rescore_factor: Any) -> None:
    """Refuse rescoring that cannot be done: no float16 copies, (codes, scales) queries, a bad factor.

    Raises:
        ValueError: naming what is missing and how to get it.
    """
    if not store_float16:
        raise ValueError("rescore=True needs float16 copies; build the index with Index(dim, store_float16=True) "
                         "(a store: encode it with --float16)")
    if isinstance(queries, tuple):
        raise ValueError("rescore=True needs float queries, not (codes, scales)")
    if isinstance(rescore_factor, bool) or not isinstance(rescore_factor, (int, np.integer)) or rescore_factor < 1:
        raise ValueError(f"rescore_factor must be an int >= 1, got {rescore_factor!r}")


def query_codes(queries: Any, dim: int, device: Any = None):
    """Checked, quantized queries: (codes int8 [q, dim], scales float32 [q], float32 [q, dim] or None).

    Float queries are quantized with `quantize_queries` (and kept, for rescoring); a (codes, scales)
    tuple is taken as it is. One 1-D vector counts as q = 1. Numpy arrays come back for numpy and
    CPU torch input; torch tensors on the GPU for CUDA input, or on `device` when given.

    Raises:
        TypeError, ValueError: wrong dtype or shape, a dimension other than `dim`, NaN or inf.
    """
    cuda = checks.is_cuda(queries[0] if isinstance(queries, tuple) and queries else queries)
    if device is None and not cuda:
        return quantized_vectors(queries, "queries", dim, queries=True)
    import torch

    device = device if device is not None else (queries[0] if isinstance(queries, tuple) else queries).device
    floats = None
    if isinstance(queries, tuple):
        if len(queries) != 2:
            raise ValueError("queries as a tuple must be (codes int8 [q, d], scales float32 [q]), "
                             f"got {len(queries)} items")
        codes, scales = (torch.as_tensor(part, device=device) for part in queries)
        if codes.dtype != torch.int8:
            raise TypeError(f"query codes must be int8, got {codes.dtype}; quantize with fastret.quantize_queries")
        if codes.ndim == 1:
            codes, scales = codes[None], scales.reshape(1)
    else:
        floats = torch.as_tensor(queries, device=device)
        if not floats.dtype.is_floating_point:
            raise TypeError(f"queries must be floating point, got {floats.dtype}")
        floats = floats[None] if floats.ndim == 1 else floats
    shape = tuple((codes if floats is None else floats).shape)
    if len(shape) != 2 or shape[1] != dim or shape[0] == 0:
        raise ValueError(f"queries must be [q, {dim}] with q >= 1, got {shape}")
    if floats is None:
        if tuple(scales.shape) != shape[:1]:
            raise ValueError(f"query scales must be 1-D with one scale per query ({shape[0]}), "
                             f"got shape {tuple(scales.shape)}")
        if (codes == -128).any():
            raise ValueError("query codes contain -128; fastret uses symmetric codes in [-127, 127] "
                             "(quantize with fastret.quantize_queries, or clip)")
    else:
        if not torch.isfinite(floats).all():
            raise ValueError("queries contain NaN or inf; clean the input")
        floats = floats.float()
        codes, scales = quantize_queries(floats)
    return codes, scales.float(), floats


def search_by_candidates(candidates: Callable, live: int, store_float16: bool, queries: Any, k: int, *,
                         rescore: bool = False, rescore_factor: int = 4):
    """`search` for any searchable, from its `candidates`: the top k by int8 score, or the top
    min(live, k x rescore_factor) by int8 score re-ranked by their float dot products (`rescored`).

    Args:
        candidates: `candidates(queries, c, exact)` of the searchable, on one consistent state;
            under a filter it returns fewer than c columns when fewer rows pass, and the results
            are padded to k (`pad`).
        live: the searchable's live vectors in that state.
        store_float16: whether it keeps float16 copies.
        queries, k, rescore, rescore_factor: as `Index.search`.

    Returns:
        (scores float32 [q, k], ids int64 [q, k]): numpy arrays, or torch tensors on the queries'
        device for torch queries.

    Raises:
        TypeError, ValueError: as `Index.search`.
    """
    k = checks.check_k(k, live)
    wanted = k
    if rescore:
        check_rescore(store_float16, queries, rescore_factor)
        wanted = min(live, k * int(rescore_factor))
    found = candidates(queries, wanted, bool(rescore))
    scores, ids = rescored(found, k) if rescore else found[:2]
    if scores.shape[1] < k:  # a filter let fewer than k rows pass
        scores, ids = pad(scores, ids, k)
    if checks.is_torch(queries):
        import torch

        return torch.from_numpy(scores).to(queries.device), torch.from_numpy(ids).to(queries.device)
    return scores, ids


def rescored(candidates: tuple, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rescoring: candidates (int8 scores, ids, float dot products) [q, c] re-ranked by their float
    dot products: (float scores float32 [q, k], ids int64 [q, k]), ties to the lower id."""
    _, ids, exact = candidates
    exact, ids = take_top(k, exact, ids)
    return exact, ids


def merge_candidates(parts: Sequence[tuple], c: int) -> tuple:
    """Join the candidates of several segments or shards as one index would rank them.

    Args:
        parts: per segment or shard (int8 scores float32 [q, c_i], ids int64 [q, c_i], float dot
            products float32 [q, c_i] or None).
        c: candidates kept per query (at most the sum of the c_i).

    Returns:
        (int8 scores float32 [q, c], ids int64 [q, c], float dot products [q, c] or None), best
        int8 score first, ties to the lower id.
    """
    joined = [np.concatenate([p[i] for p in parts], axis=1) for i in range(2)]
    if parts[0][2] is None:
        return (*take_top(c, *joined), None)
    return take_top(c, *joined, np.concatenate([p[2] for p in parts], axis=1))


def float_products(float16: Any, queries: Any):
    """float32 [q, c]: dot products of float queries [q, d] with their candidates' float16 copies
    [q, c, d] (numpy arrays, or torch tensors of one device).

    Raises:
        IndexFileError: a copy holds NaN or inf (a corrupted file read without verification).
    """
    if checks.is_torch(float16):
        import torch

        vectors = float16.float()
        finite = bool(torch.isfinite(vectors).all())
    else:
        vectors = float16.astype(np.float32)
        finite = bool(np.isfinite(vectors).all())
    if not finite:
        raise IndexFileError("the float16 copies of some candidates hold NaN or inf: the index file is "
                             "corrupted (load it with verify=True to find out which)")
    # A sum over each row, not a batched matmul: its summation order depends on the batch's shape,
    # and a candidate must get the same score from every shard and segment it is searched in.
    return (vectors * queries[:, None, :]).sum(-1)


FIRST_STAGES = ("int8", "binary")


def check_first_stage(first_stage: Any, oversample: Any) -> int | None:
    """The oversample a search with `first_stage` uses (None for "int8"), or a clear error.

    Raises:
        ValueError, TypeError: an unknown first stage, an oversample that is not an int >= 1, or
            one given without first_stage="binary".
    """
    if first_stage not in FIRST_STAGES:
        raise ValueError(f"first_stage must be one of {', '.join(map(repr, FIRST_STAGES))}, got {first_stage!r}")
    if first_stage == "int8":
        if oversample is not None:
            raise ValueError("oversample (binary candidates per result) applies to the binary first stage only: "
                             "ask for it too (first_stage='binary', --binary, \"binary\": true) or drop oversample")
        return None
    if oversample is None:
        return sign_bits.DEFAULT_OVERSAMPLE
    if isinstance(oversample, bool) or not isinstance(oversample, (int, np.integer)):
        raise TypeError(f"oversample must be an int >= 1 (binary candidates per result), got {oversample!r}")
    if oversample < 1:
        raise ValueError(f"oversample must be >= 1 (binary candidates per result), got {oversample}")
    return int(oversample)


def segment_candidates(segments: Sequence[Segment], q_codes: Any, q_scales: Any, c: int, q_floats: Any = None,
                       allowed: Sequence[np.ndarray] | None = None, *, oversample: int | None = None):
    """The top c of every segment together: the C++ core for numpy queries (`core_candidates`, or
    `binary_candidates` with an `oversample` from `check_first_stage`), torch on the queries'
    device for torch ones (`torch_candidates`); same arguments and results.

    `allowed` (a filter's bool mask per segment or None for every row, see fastret.search.filters)
    narrows the search to those rows (`narrowed` picks each segment's way): the results are those
    of an index holding only the allowed live rows, with min(c, such rows) columns (none when no
    row passes).
    """
    if oversample is not None and checks.is_torch(q_codes):
        raise ValueError("first_stage='binary' runs in the C++ core on the CPU: pass CPU queries, or search "
                         "GPU queries with first_stage='int8'")
    if allowed is not None:
        # the binary first stage reads every row's bits, skipping those a filter leaves out
        pick = oversample is None and not checks.is_torch(q_codes)
        segments, allowed, passing = narrowed(segments, allowed, pick=pick)
        c = min(c, passing)
        if c == 0:
            q = len(q_codes)
            return (np.empty((q, 0), np.float32), np.empty((q, 0), np.int64),
                    None if q_floats is None else np.empty((q, 0), np.float32))
        if all(mask is None for mask in allowed):
            allowed = None
    if checks.is_torch(q_codes):
        return torch_candidates(segments, q_codes, q_scales, c, q_floats, allowed)
    if oversample is not None:
        return binary_candidates(segments, q_codes, q_scales, c, q_floats, allowed, oversample=oversample)
    return core_candidates(segments, q_codes, q_scales, c, q_floats, allowed)


def narrowed(segments: Sequence[Segment], allowed: Sequence[np.ndarray | None], *,
             pick: bool) -> tuple[list[Segment], list[np.ndarray | None], int]:
    """The segments a filtered search reads, and how: (segments, their selections, passing live rows).

    A segment without a passing live row is left out; one whose every live row passes is searched
    with its plain deletion bitmap (selection None); with `pick`, one whose passing live rows are
    fewer than PICK_FRACTION of its rows gets those rows (int64, ascending: the core reads only
    them, so the search's cost follows them); the others keep their bool mask (deleted | not
    allowed skipped by the core). Results over the segments returned are those over the allowed
    live rows of `segments`, id for id and score for score.

    Args:
        segments: the segments searched.
        allowed: per segment a bool mask over its rows, or None (every row).
        pick: give few passing rows as a row list (the C++ core; the torch backend picks rows
            from its device copies with the mask instead).
    """
    kept: list[Segment] = []
    selections: list[np.ndarray | None] = []
    passing = 0
    allowed = [mask if mask is None or not segment.deleted_count else mask & ~segment.deleted_mask()
               for segment, mask in zip(segments, allowed)]
    counts = [segment.live_count if mask is None else int(np.count_nonzero(mask))
              for segment, mask in zip(segments, allowed)]
    few = [number for number, (segment, mask, count) in enumerate(zip(segments, allowed, counts))
           if pick and mask is not None and 0 < count < PICK_FRACTION * len(segment)]
    picked: list = [None] * len(segments)  # the rows of the masks that pass few
    if few:
        found = _core.picked_rows([np.ascontiguousarray(allowed[i], bool) for i in few])
        for number, rows in zip(few, found):
            picked[number] = rows
    for segment, mask, rows, count in zip(segments, allowed, picked, counts):
        passing += count
        if count == 0:
            continue
        kept.append(segment)
        if count == segment.live_count:
            selections.append(None)
        else:
            selections.append(rows if rows is not None else mask)
    return kept, selections, passing


def core_candidates(segments: Sequence[Segment], q_codes: np.ndarray, q_scales: np.ndarray, c: int,
                    q_floats: np.ndarray | None = None, allowed: Sequence[np.ndarray] | None = None):
    """The top c by int8 score over `segments` (deleted rows skipped), one call of the C++ core.

    Args:
        segments: the segments, searched as one concatenated index.
        q_codes, q_scales: queries from `query_codes` (numpy).
        c: candidates per query, 1 <= c <= the segments' live (and allowed) rows.
        q_floats: float32 [q, dim] queries: also compute the float dot products with the
            candidates' float16 copies (which the segments must have).
        allowed: optional selection per segment (`narrowed`): None (every live row), a bool mask
            (rows outside it are skipped like deleted ones) or int64 ascending live rows (only
            those are read); see `Segment.core_view`.

    Returns:
        (int8 scores float32 [q, c], ids int64 [q, c], float dot products float32 [q, c] or None).

    Raises:
        ValueError: query scales that could overflow float32 (`check_score_range`).
    """
    check_score_range(q_scales, _max_scale(segments), q_codes.shape[1])
    masks = [None] * len(segments) if allowed is None else allowed
    scores, rows = _core.topk_int8(q_codes, q_scales, [s.core_view(a) for s, a in zip(segments, masks)], c)
    return _found(segments, scores, rows, q_floats)


def binary_candidates(segments: Sequence[Segment], q_codes: np.ndarray, q_scales: np.ndarray, c: int,
                      q_floats: np.ndarray | None = None, allowed: Sequence[np.ndarray] | None = None, *,
                      oversample: int, query_bits: int = sign_bits.DEFAULT_QUERY_BITS):
    """The top c by int8 score among the top c x oversample by the binary first stage's score
    (fastret.storage.sign_bits), one call of the C++ core: the same arguments and results as
    `core_candidates`, and `allowed` as bool masks or None only (no picked rows)."""
    check_score_range(q_scales, _max_scale(segments), q_codes.shape[1])
    masks = [None] * len(segments) if allowed is None else allowed
    planes = sign_bits.query_planes(q_codes, query_bits)
    # c x oversample beyond the live rows keeps every live row, as an exact search would; capped at
    # the rows, so that no oversample, however large, overflows the core's sizes
    kept = min(c * oversample, sum(len(s) for s in segments))
    # mapped segments' candidate rows are read with pread: only those rows, no page mapped in
    scores, rows = _core.topk_binary(q_codes, q_scales, planes, [s.core_view(a) for s, a in zip(segments, masks)],
                                     [s.sign_bits() for s in segments], c, kept, [s.codes_file() for s in segments])
    return _found(segments, scores, rows, q_floats)


def _found(segments: Sequence[Segment], scores: np.ndarray, rows: np.ndarray, q_floats: np.ndarray | None) -> tuple:
    """The core's (scores, global rows) as candidates: (scores, ids, float dot products or None)."""
    starts = np.cumsum([0] + [len(s) for s in segments])
    which = np.searchsorted(starts, rows, side="right") - 1
    local = rows - starts[which]

    def gather(field: str) -> np.ndarray:
        first = getattr(segments[0], field)
        out = np.empty(which.shape + first.shape[1:], first.dtype)
        for number in np.unique(which):
            mask = which == number
            out[mask] = np.asarray(getattr(segments[number], field)[local[mask]])
        return out

    exact = None if q_floats is None else float_products(gather("float16"), q_floats)
    return scores, gather("ids"), exact


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

    check_score_range(np.array([float(q_scales.max())]), _max_scale(segments), q_codes.shape[1])
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


def _max_scale(segments: Sequence[Segment]) -> float:
    return max((s.max_scale() for s in segments), default=0.0)


def _topk_int8_torch_inputs(queries, db_int8, db_scales, k, ids):
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
