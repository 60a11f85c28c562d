"""The CPU backend: exact int8 top-k on the C++ core (and the binary first stage), over a list of
segments, and the functional API (`topk_int8`) with its numpy reference.

A filter (fastret.search.filters) reaches the backends as a bool mask of allowed rows per segment
(None: every row), and `narrowed` picks each segment's path: skipped when no live row passes,
searched as it is when every live row does, only its passing rows read when they are few (below
PICK_FRACTION of its rows: the core's picked rows, so the cost follows them), else searched with
deleted | not-allowed as its bitmap. Never a post-filter. `segment_candidates` is what a searcher
calls: the C++ core for numpy queries (`core_candidates`, or `binary_candidates` behind the binary
first stage), fastret.search.torch_backend for torch ones.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .. import _core, checks
from ..quant import quantized_vectors
from ..storage.segment import Segment
from . import binary, row_sets, torch_backend
from .rules import check_score_range, float_products, max_scale, rank

# A segment whose passing live rows are fewer than this fraction of its rows is searched by reading
# only those rows (the core's picked rows), not by scanning it with a bitmap. Measured on 1M x 384
# rows in memory, one query, 2 threads, AVX-512 VNNI (Zen 4): a scan (with or without a bitmap)
# 13-18 ms; picking 1/100 of the rows at random 0.011x a scan, 1/16 0.12x, 1/4 0.53x, 1/2 0.91x:
# 1/4 keeps a margin for mapped pages not in memory yet, which a picked row faults in one by one.
PICK_FRACTION = 1 / 4


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
        return torch_backend.topk_int8_torch_inputs(queries, db_int8, db_scales, k, ids)
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


def segment_candidates(segments: Sequence[Segment], q_codes: Any, q_scales: Any, c: int, q_floats: Any = None,
                       allowed: Sequence[np.ndarray] | None = None, *, oversample: int | str | None = None):
    """The top c of every segment together: the C++ core for numpy queries (`core_candidates`, or
    `binary_candidates` with an `oversample` from `check_first_stage`), torch on the queries'
    device for torch ones (`torch_candidates`); same arguments and results.

    `allowed` (a filter's bool mask per segment or None for every row, see fastret.search.filters)
    narrows the search to those rows (`narrowed` picks each segment's way): the results are those
    of an index holding only the allowed live rows, with min(c, such rows) columns (none when no
    row passes). An oversample of "auto" is `binary.auto_oversample` of those rows. The binary first
    stage of torch queries runs on their CUDA device (`torch_backend.binary_scan_candidates`).
    """
    if oversample is not None and checks.is_torch(q_codes) and not torch_backend.kernels_on_device(q_codes.device):
        raise ValueError(f"first_stage='binary' runs in the C++ core on the CPU or on a CUDA GPU with triton, not on "
                         f"torch tensors on {q_codes.device}: pass numpy queries, or search these with "
                         "first_stage='int8'")
    passing = None
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
    if oversample == binary.AUTO:
        searched = sum(s.live_count for s in segments) if passing is None else passing
        oversample = binary.auto_oversample(searched, c)
    if checks.is_torch(q_codes):
        if oversample is not None:
            return torch_backend.binary_scan_candidates(segments, q_codes, q_scales, c, q_floats, allowed,
                                                        oversample=oversample)
        return torch_backend.torch_candidates(segments, q_codes, q_scales, c, q_floats, allowed)
    if oversample is not None:
        return binary_candidates(segments, q_codes, q_scales, c, q_floats, allowed, oversample=oversample)
    return core_candidates(segments, q_codes, q_scales, c, q_floats, allowed)


def narrowed(segments: Sequence[Segment], allowed: Sequence[np.ndarray | None], *,
             pick: bool) -> tuple[list[Segment], list[np.ndarray | None], int]:
    """The segments a filtered search reads, and how: (segments, their selections, passing live rows).

    A segment without a passing live row is left out; one whose every live row passes is searched
    with its plain deletion bitmap (selection None); with `pick`, one whose passing live rows are
    fewer than PICK_FRACTION of its rows gets those rows (int64, ascending: the core reads only
    them, so the search's cost follows them); the others get a bool mask (deleted | not allowed
    skipped by the core). Results over the segments returned are those over the allowed live rows
    of `segments`, id for id and score for score.

    Args:
        segments: the segments searched.
        allowed: per segment its allowed rows as a row set (fastret.search.row_sets: int64
            ascending rows or a bool mask over its rows), or None (every row).
        pick: give few passing rows as a row list (the C++ core; the torch backend and the
            binary first stage take masks).
    """
    live = [selection if selection is None or not segment.deleted_count else _live_only(segment, selection)
            for segment, selection in zip(segments, allowed)]
    counts = [segment.live_count if selection is None else row_sets.count(selection)
              for segment, selection in zip(segments, live)]
    few = [number for number, (segment, selection, count) in enumerate(zip(segments, live, counts))
           if pick and selection is not None and not row_sets.is_rows(selection)
           and 0 < count < PICK_FRACTION * len(segment)]
    if few:  # masks that pass few rows: their rows, in one call of the core
        for number, rows in zip(few, _core.picked_rows([np.ascontiguousarray(live[i], bool) for i in few])):
            live[number] = rows
    kept: list[Segment] = []
    selections: list[np.ndarray | None] = []
    for segment, selection, count in zip(segments, live, counts):
        if count == 0:
            continue
        kept.append(segment)
        if count == segment.live_count:
            selections.append(None)
        elif pick and row_sets.is_rows(selection) and count < PICK_FRACTION * len(segment):
            selections.append(selection)
        else:
            selections.append(row_sets.as_mask(selection, len(segment)))
    return kept, selections, sum(counts)


def _live_only(segment: Segment, selection: np.ndarray) -> np.ndarray:
    """The row set `selection` of `segment` without its deleted rows."""
    if row_sets.is_rows(selection):
        return selection[~segment.is_deleted(selection)]
    return selection & ~segment.deleted_mask()


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
    check_score_range(q_scales, max_scale(segments), q_codes.shape[1])
    masks = [None] * len(segments) if allowed is None else allowed
    scores, rows = _core.topk_int8(q_codes, q_scales, [s.core_view(a) for s, a in zip(segments, masks)], c)
    return _found(segments, scores, rows, q_floats)


def binary_candidates(segments: Sequence[Segment], q_codes: np.ndarray, q_scales: np.ndarray, c: int,
                      q_floats: np.ndarray | None = None, allowed: Sequence[np.ndarray] | None = None, *,
                      oversample: int, query_bits: int = binary.DEFAULT_QUERY_BITS):
    """The top c by int8 score among the top c x oversample by the binary first stage's score
    (fastret.search.binary), one call of the C++ core: the same arguments and results as
    `core_candidates`, and `allowed` as bool masks or None only (no picked rows)."""
    check_score_range(q_scales, max_scale(segments), q_codes.shape[1])
    masks = [None] * len(segments) if allowed is None else allowed
    planes = binary.query_planes(q_codes, query_bits)
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
