"""The torch backend: exact int8 top-k on the queries' device (the CUDA path; it runs on the CPU
too), with the same ids and scores as the C++ core.

Two ways to search, picked per call by `search_kernel`:

- "scan" (CUDA, up to fastret.kernels.topk_int8_scan.MAX_K results): the fused int8 scan + top-k
  kernel over each segment's resident rows (`resident_rows`: every row, copied to the device once
  per segment and kept while the segment lives), deleted rows and a filter's left-out rows skipped
  by a bitmap (`skip_bitmap`: the segment's deletion words, or deleted | not allowed for one call),
  so a delete uploads a bitmap, never the rows again;
- "torch": an int8 matmul per chunk of the corpus and a chunked top-k (`topk_int8_torch`) over each
  segment's live rows (`device_arrays`: copied once per device and reused until its deletions
  change; a filter's rows are picked from that copy per call). The fallback for more results, for a
  machine without triton, and the CPU path.

The binary first stage (`binary_scan_candidates`) scores every row's resident sign bits with the
popcount kernel (fastret.kernels.binary_scores), keeps the best c x oversample rows of all segments
by that score (ties to the lower id) and ranks those by int8 score: `binary_candidates`' results.

Ties are ranked by 64-bit keys (`_rank_keys`: order-preserving score bits, then the inverted id
rank), the torch form of fastret.search.rules' tie rule; the scan kernel ranks by the same keys.
torch is imported inside the functions: nothing here loads it until a torch query comes.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .. import checks
from ..storage.segment import Segment
from . import binary
from .rules import check_score_range, float_products, max_scale, merge_candidates, query_codes, rank

# Corpus rows scored per torch matmul on the GPU: bounds the [queries, chunk] score buffers.
_TORCH_CHUNK_ELEMENTS = 1 << 27


# Corpus rows per group whose best score pre-selects candidates in the torch backend.
_CANDIDATE_GROUP = 128

# The share of a GPU's free memory that an index's resident rows may take (`make_resident`): the
# rest is left for search buffers, float16 copies and sign bits copied on first use, and the model.
RESIDENT_SHARE = 0.8

# The ways `torch_candidates` searches (module docstring).
SEARCH_KERNELS = ("scan", "torch")


def torch_candidates(segments: Sequence[Segment], q_codes, q_scales, c: int, q_floats=None,
                     allowed: Sequence[np.ndarray] | None = None, *, kernel: str | None = None):
    """`core_candidates` in torch on the device of `q_codes` (the CUDA path; runs on the CPU too).

    Each segment is searched on its own device copy with the fused scan kernel (`scan_candidates`)
    or with `topk_int8_torch` (module docstring), and the segments' top candidates are merged with
    `merge_candidates`. Results are numpy arrays, equal to those of `core_candidates` (float dot
    products up to float rounding: torch sums in its own order). `allowed` holds a filter's bool mask per
    segment (or None: every live row).

    Args:
        kernel: "scan" or "torch"; None: `search_kernel`'s choice for the device and c ("scan"
            runs in Triton's interpreter on CPU tensors when TRITON_INTERPRET=1).
    """
    import torch

    kernel = search_kernel(q_codes.device, c) if kernel is None else kernel
    if kernel not in SEARCH_KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(map(repr, SEARCH_KERNELS))} or None, got {kernel!r}")
    check_score_range(np.array([float(q_scales.max())]), max_scale(segments), q_codes.shape[1])
    if kernel == "scan":
        return scan_candidates(segments, q_codes, q_scales, c, q_floats, allowed)
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
    return _joined(scores, ids, exact, c)


def search_kernel(device: Any, c: int) -> str:
    """The way `torch_candidates` searches for c candidates on `device` by default: "scan" (the
    fused Triton kernel) where `kernels_on_device` and c <= its MAX_K, else "torch"."""
    from ..kernels.topk_int8_scan import MAX_K

    return "scan" if kernels_on_device(device) and c <= MAX_K else "torch"


def kernels_on_device(device: Any) -> bool:
    """Whether the Triton search kernels (the fused scan, the binary stage's popcount) run on
    `device`: a CUDA device, with triton installed."""
    import torch

    from ..kernels.topk_int8_scan import HAS_TRITON

    return torch.device(device).type == "cuda" and HAS_TRITON


def search_device(device: Any):
    """`device` checked as a place for an index to search (`Index.to`): the torch.device of a CUDA
    GPU that torch sees and the search kernels run on (`kernels_on_device`), "cuda" as the current one.

    Raises:
        ValueError: not a device name, not a CUDA device, no CUDA GPU (or not that many), no triton.
    """
    import torch

    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N' (or a torch.device), got {device!r}") from None
    if device.type != "cuda":
        raise ValueError(f"an index searches on 'cpu' (the C++ core) or on a CUDA GPU, not on {device}")
    if not torch.cuda.is_available():
        raise ValueError(f"searching on {device} needs a CUDA GPU, and torch sees none: search on 'cpu'")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"no {device}: torch sees {torch.cuda.device_count()} CUDA device(s), "
                         f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if not kernels_on_device(device):
        raise ValueError("searching on a GPU runs Triton kernels: pip install triton (torch's CUDA wheels bring it)")
    return _device(device)


def resident_bytes(segments: Sequence[Segment]) -> int:
    """Device bytes of the segments' `resident_rows` at most: codes (dim bytes a row), scales (4),
    ids (8) and the id order (12, when the ids do not ascend)."""
    return sum(len(segment) * (segment.codes.shape[1] + 24) for segment in segments)


def make_resident(segments: Sequence[Segment], device: Any) -> None:
    """Copy the segments' rows to `device` now (`resident_rows`), so that no search waits for
    them; on a GPU only once its free memory is known to hold them with a margin (RESIDENT_SHARE).

    Raises:
        ValueError: the rows would not fit, with the sizes and what to do.
    """
    import torch

    device = _device(device)
    if device.type == "cuda":
        needed = resident_bytes(segments)
        free, total = torch.cuda.mem_get_info(device)
        if needed > RESIDENT_SHARE * free:
            raise ValueError(f"the index's int8 rows take {needed / 2**30:.2f} GiB on {device}, which has "
                             f"{free / 2**30:.2f} GiB free of {total / 2**30:.2f} GiB (at most "
                             f"{RESIDENT_SHARE:.0%} of the free memory is used): search on 'cpu', free memory "
                             "on the GPU, or use a GPU with more")
    for segment in segments:
        if len(segment):
            resident_rows(segment, device)


def drop_resident(segments: Sequence[Segment], device: Any) -> None:
    """Forget the segments' copies on `device` (every kind: rows, float16, sign bits, bitmaps,
    live rows), so that the memory is freed once no search holds them."""
    name = str(_device(device))
    for segment in segments:
        for key in [key for key in segment.cache if isinstance(key, tuple) and key[1:] == (name,)]:
            del segment.cache[key]


def passing_segments(segments: Sequence[Segment], allowed: Sequence[np.ndarray] | None, device: Any):
    """(segment, its selection, its passing live rows, `resident_rows` on `device`) of each segment
    with a row that passes (`allowed`: a selection per segment, or None for every live row)."""
    for number, segment in enumerate(segments):
        selection = None if allowed is None else allowed[number]
        count = segment.passing_count(selection)
        if count:
            yield segment, selection, count, resident_rows(segment, device)


def scan_candidates(segments: Sequence[Segment], q_codes, q_scales, c: int, q_floats=None,
                    allowed: Sequence[np.ndarray] | None = None):
    """`torch_candidates` with the fused scan kernel (fastret.kernels.topk_int8_scan): each
    segment's resident rows (`resident_rows`) searched in one pass, skipping the rows of
    `skip_bitmap`; c <= MAX_K. Same arguments and results as `torch_candidates`."""
    from ..kernels.topk_int8_scan import topk_int8_scan

    device = q_codes.device
    q_codes, q_scales = q_codes.contiguous(), q_scales.float().contiguous()
    scores, ids, exact = [], [], []
    for segment, selection, count, (codes, scales, segment_ids, order) in passing_segments(segments, allowed, device):
        found, rows = topk_int8_scan(q_codes, q_scales, codes, scales, min(c, count), id_order=order,
                                     skip=skip_bitmap(segment, selection, device))
        scores.append(found)
        ids.append(segment_ids[rows])
        if q_floats is not None:
            exact.append(float_products(resident_rows(segment, device, float16=True)[rows], q_floats))
    return _joined(scores, ids, exact, c)


def binary_scan_candidates(segments: Sequence[Segment], q_codes, q_scales, c: int, q_floats=None,
                           allowed: Sequence[np.ndarray] | None = None, *, oversample: int,
                           query_bits: int = binary.DEFAULT_QUERY_BITS):
    """`fastret.search.core.binary_candidates` on the queries' device, with the same results: the
    first-stage score of every row (fastret.kernels.binary_scores over each segment's resident
    sign bits, `resident_bits`), the best min(c x oversample, rows) live (and allowed) rows of all
    segments by that score (ties to the lower id), and the top c of those by int8 score.

    Args:
        segments, q_codes, q_scales, c, q_floats, allowed: as `torch_candidates` (torch queries).
        oversample: first-stage candidates per result (an int >= 1: "auto" is resolved by the caller).
        query_bits: the planes of the queries' levels (fastret.search.binary).
    """
    import torch

    from ..kernels.binary_scores import binary_scores

    check_score_range(np.array([float(q_scales.max())]), max_scale(segments), q_codes.shape[1])
    device = q_codes.device
    planes = torch.from_numpy(binary.query_planes(q_codes.cpu().numpy(), query_bits).view(np.int64)).to(device)
    kept = min(c * oversample, sum(len(s) for s in segments))  # as binary_candidates
    first, ids, second, exact = [], [], [], []  # per segment [q, m]: first-stage score, id, int8 score, float
    for segment, selection, count, (codes, scales, segment_ids, order) in passing_segments(segments, allowed, device):
        n = len(segment)
        id_rank = torch.arange(n, device=device) if order is None else order[0].long()
        keys = (binary_scores(planes, resident_bits(segment, device), n, q_codes.shape[1]).long() << 32) | (
            0xFFFFFFFF - id_rank)  # [q, n] ordered like (score desc, id asc) within the segment
        skip = skip_bitmap(segment, selection, device)
        if skip is not None:
            rows = torch.arange(n, device=device)
            keys.masked_fill_(((skip[rows >> 3] >> (rows & 7).to(torch.uint8)) & 1).bool(), -(2**63))
        top = keys.topk(min(kept, count), dim=1).values  # the segment's best: a superset of its share
        rows = 0xFFFFFFFF - (top & 0xFFFFFFFF)
        rows = rows if order is None else order[1][rows]
        first.append(top >> 32)
        ids.append(segment_ids[rows])
        second.append(_int8_scores(q_codes, q_scales, codes, scales, rows))
        if q_floats is not None:
            exact.append(float_products(resident_rows(segment, device, float16=True)[rows], q_floats))
    first, ids, second = (torch.cat(parts, 1) for parts in (first, ids, second))
    exact = torch.cat(exact, 1) if exact else None
    candidates = rank(first, ids, kept)  # the first stage over every segment: (score, then id)
    ids, second = ids.gather(1, candidates), second.gather(1, candidates)
    exact = None if exact is None else exact.gather(1, candidates)
    best = rank(second, ids, c)
    return (second.gather(1, best).cpu().numpy(), ids.gather(1, best).cpu().numpy(),
            None if exact is None else exact.gather(1, best).cpu().numpy())


def _int8_scores(q_codes, q_scales, codes, scales, rows):
    """float32 [q, m]: the int8 scores of each query's rows [q, m], the core's float32 expression
    (dot products exact in float64, a chunk of queries at a time; NaN ranks as -inf)."""
    import torch

    out = torch.empty(rows.shape, dtype=torch.float32, device=rows.device)
    step = max(1, (1 << 25) // max(1, rows.shape[1] * codes.shape[1]))  # [step, m, d] float64: <= 256 MiB
    for start in range(0, rows.shape[0], step):
        picked = codes[rows[start:start + step]].double()  # [step, m, d]
        dots = torch.bmm(picked, q_codes[start:start + step].double()[:, :, None])[:, :, 0]
        out[start:start + step] = (dots.float() * q_scales[start:start + step, None]) * scales[rows[start:start + step]]
    return out.nan_to_num_(nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))


def _joined(scores: list, ids: list, exact: list, c: int):
    """Per-segment device results [q, c_i] as `merge_candidates`' numpy (scores, ids, exact or None)."""
    import torch

    parts = [torch.cat(found, 1).cpu().numpy() for found in (scores, ids)]
    return merge_candidates([(*parts, torch.cat(exact, 1).cpu().numpy() if exact else None)], c)


def resident_rows(segment: Segment, device: Any, *, float16: bool = False):
    """Every row of `segment` (deleted ones too) as torch tensors on `device`: (codes, scales, ids,
    `id_order(ids)` or None when the ids ascend with the rows), or the float16 copies with
    `float16=True`. Copied once per device into the segment's cache, which every version of the
    segment shares (its arrays never change; deletions are `skip_bitmap`'s)."""
    import torch

    from ..kernels.topk_int8_scan import id_order

    device = _device(device)
    key = ("resident-float16" if float16 else "resident", str(device))
    if key not in segment.cache:
        if float16:
            segment.cache[key] = torch.tensor(np.asarray(segment.float16), device=device)
        else:
            ids = np.asarray(segment.ids)
            tensors = [torch.tensor(np.asarray(array), device=device) for array in (segment.codes, segment.scales, ids)]
            ascending = bool(np.all(ids[1:] >= ids[:-1]))
            segment.cache[key] = (*tensors, None if ascending else id_order(tensors[2]))
    return segment.cache[key]


def resident_bits(segment: Segment, device: Any):
    """The sign bits of every row of `segment` (`Segment.sign_bits`, blocked) as an int64 tensor on
    `device`, copied once per device into the segment's cache, like `resident_rows`."""
    import torch

    device = _device(device)
    key = ("resident-bits", str(device))
    if key not in segment.cache:
        segment.cache[key] = torch.tensor(np.asarray(segment.sign_bits()).view(np.int64), device=device)
    return segment.cache[key]


def skip_bitmap(segment: Segment, allowed: np.ndarray | None, device: Any):
    """uint8 bitmap on `device` of the rows a scan of `segment` skips (bit r % 8 of byte r // 8):
    the deleted rows (their words, uploaded once per deletion count), or deleted | not `allowed`
    (a bool [n] mask, uploaded for this call); None when no row is skipped."""
    import torch

    device = _device(device)
    if allowed is not None:
        words = segment.core_view(allowed)[3]
        return torch.tensor(words.view(np.uint8), device=device)
    if segment.deleted is None or not segment.deleted_count:
        return None
    key = ("resident-deleted", str(device))
    cached = segment.cache.get(key)
    if cached is None or cached[0] != segment.deleted_count:
        cached = (segment.deleted_count, torch.tensor(np.asarray(segment.deleted).view(np.uint8), device=device))
        segment.cache[key] = cached
    return cached[1]


def _device(device: Any):
    """`device` as a torch.device, "cuda" as the current CUDA device (so "cuda" and "cuda:0" share copies)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def device_arrays(segment: Segment, device: Any, *, float16: bool = False):
    """The live rows of `segment` as torch tensors on `device`: (codes, scales, ids, the ids' ranks
    from `rank_ids`), or the float16 copies with `float16=True`. Copied once per device and kept in
    the segment's cache, which every version of the segment shares, with the deletion count they
    were made at: a version with other deletions (deletions only grow) makes fresh ones."""
    import torch

    device = _device(device)
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
    """`fastret.search.core.topk_int8` for CUDA tensors: checked, then the scan kernel
    (fastret.kernels.topk_int8_scan) or `topk_int8_torch` as `search_kernel` picks."""
    import torch

    device = db_int8.device
    if db_int8.dtype != torch.int8 or db_int8.ndim != 2:
        raise TypeError(f"db_int8 must be an int8 [n, d] tensor, got {db_int8.dtype} {tuple(db_int8.shape)}")
    n, dim = db_int8.shape
    k = checks.check_k(k, n)
    q_codes, q_scales, _ = query_codes(queries, dim, device)
    row_ids = None if ids is None else torch.as_tensor(ids, device=device, dtype=torch.int64)
    if search_kernel(device, k) == "scan":
        from ..kernels.topk_int8_scan import id_order, topk_int8_scan

        scores, rows = topk_int8_scan(q_codes.contiguous(), q_scales.float().contiguous(), db_int8.contiguous(),
                                      db_scales.float().contiguous(), k,
                                      id_order=None if row_ids is None else id_order(row_ids))
    else:
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

    positions = torch.empty_like(ids)
    positions[torch.argsort(ids, stable=True)] = torch.arange(len(ids), device=ids.device)
    return positions


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
