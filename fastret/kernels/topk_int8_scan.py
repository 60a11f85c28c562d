"""Exact top-k of int8 inner products in one pass over the codes: a fused scan + top-k.

For queries Q int8 [q, d] with scales s_q float32 [q] and rows C int8 [n, d] with scales s float32 [n]:

    score(i, r) = (float32(<Q_i, C_r>) * s_q[i]) * s[r]        int32 dot, float32 products in that order

the score of fastret's C++ core (a NaN ranks as -inf, -0.0 as +0.0). Each query's k best rows come
back, higher score first, then lower id: rows rank among equal scores by `id_order`'s rank (their
place in ascending id order; without it, the row order is the id order). Rows whose bit is set in
`skip` (deleted rows, rows a filter leaves out) are never scored; when fewer than k rows remain, the
last columns are (-inf, -1).

The ranking works on one int64 key per (query, row) that orders like (score desc, id asc):

    key = (ordered(score) << 32) | (0xFFFFFFFF - rank)     ordered: float32 bits -> order-preserving int32

so the tie rule is a plain comparison and keys are unique within a query; EMPTY (int64 min) is below
every key and fills slots that no row took.

The kernel: program (i, s) of grid (ceil(q / BLOCK_Q), splits) scores BLOCK_Q queries against the
rows of split s, BLOCK_N rows at a time (tl.dot on int8, int32 accumulation over BLOCK_D columns at a
time: tensor cores on a GPU), and keeps each query's KB best keys (KB = next power of two >= k) in
registers with their minimum as the bound a key must beat. A tile in which no key beats its query's
bound changes nothing; otherwise the keys above the bounds enter one at a time, each query's best first
(it replaces the bound; at most KB per tile), so a tile costs a few reductions once the bounds have
risen, which on random order they do after a few tiles (sorting networks, tl.sort/tl.topk, cost more
per tile, and in Triton's interpreter far more). A tile whose rows are all skipped is not read. Only
candidates leave the kernel, keys [splits, q, KB] (no [q, n] score matrix in memory); one top-k over
them in torch (`_merged`) gives the result. One to sixteen queries take the same kernel with one
query block and the rows split over ~4 programs per multiprocessor (the bandwidth configuration,
`scan_blocks`): the codes are read once, in [BLOCK_D, BLOCK_N] tiles of 16-byte loads; the empty
rows of the query block (tl.dot takes 16 at least) cost tensor-core time that a scan bound by memory
has to spare.

Dispatch: CUDA tensors run the Triton kernel; CPU tensors run `topk_int8_scan_ref` (plain torch), or
the Triton kernel in Triton's interpreter when TRITON_INTERPRET=1 (how the tests check the kernel on
machines without a GPU).
"""

import contextlib
from typing import NamedTuple, Optional, Tuple

import torch

from ._triton import IMPORT_ERROR, require_triton, tl, triton, use_triton

HAS_TRITON = IMPORT_ERROR is None  # else CUDA searches take fastret.search.torch_backend's torch path
MAX_K = 256  # results per query the kernel keeps (KB int64 keys per query live in registers)
_EMPTY = -(2**63)  # the key of a slot no row took: below every real key
_MAX_ROWS = 2**31 - 1  # id ranks are int32 (and take the low 32 bits of a key)


class ScanBlocks(NamedTuple):
    """A launch configuration of the scan kernel (`scan_blocks` picks one; benchmarks may pass others)."""

    block_q: int  # queries per program (tl.dot takes 16 at least, as for the other two)
    block_n: int  # rows per tile
    block_d: int  # code columns per tl.dot
    splits: int  # programs the rows are split over, per query block
    num_warps: int
    num_stages: int


# ------------------------------------------------------------------------------------- reference


def topk_int8_scan_ref(q_codes: torch.Tensor, q_scales: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor,
                       k: int, *, id_order: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
                       skip: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """The exact top k in plain torch: the reference the kernel must equal, bit for bit.

    Every score is computed ([q, n] in memory), dots exactly in float64 (|<Q_i, C_r>| < 2^53), and
    the rows are ranked by two stable sorts: id rank ascending, then score descending.

    Args and returns: as `topk_int8_scan`.
    """
    n = _check_inputs(q_codes, q_scales, codes, scales, k, id_order, skip)
    dots = (q_codes.double() @ codes.double().T).float()  # exact in float64, then rounded once as int32 -> float32
    scores = (dots * q_scales.float()[:, None]) * scales.float()[None, :]
    scores = torch.where(torch.isnan(scores), float("-inf"), scores)
    kept = torch.ones(n, dtype=torch.bool, device=codes.device) if skip is None else ~_skipped_rows(skip, n)
    rows = torch.arange(n, device=codes.device)
    if id_order is not None:
        rows = id_order[1]  # rows in ascending id order
    rows = rows[kept[rows]]
    ordered = scores[:, rows]  # columns in id order: a stable sort by score keeps it among ties
    take = torch.sort(ordered, dim=1, descending=True, stable=True).indices[:, :k]
    found = rows[take]
    out_scores = torch.full((q_codes.shape[0], k), float("-inf"), dtype=torch.float32, device=codes.device)
    out_rows = torch.full((q_codes.shape[0], k), -1, dtype=torch.int64, device=codes.device)
    out_scores[:, : found.shape[1]] = scores.gather(1, found) + 0.0  # -0.0 + 0.0 = +0.0, as the kernel
    out_rows[:, : found.shape[1]] = found
    return out_scores, out_rows


def _skipped_rows(skip: torch.Tensor, n: int) -> torch.Tensor:
    """bool [n] from the bitmap: bit r % 8 of byte r // 8."""
    rows = torch.arange(n, device=skip.device)
    return ((skip[rows >> 3].to(torch.int32) >> (rows & 7).to(torch.int32)) & 1).bool()


# --------------------------------------------------------------------------------------- kernels


@triton.jit
def _row_keys(score, rank):
    # [BLOCK_Q, BLOCK_N] float32 scores, int32/int64 ranks broadcast -> int64 keys (module docstring)
    score = tl.where(score != score, float("-inf"), score)  # NaN ranks as -inf (the core's rule)
    score = tl.where(score == 0.0, 0.0, score)  # -0.0 ranks as +0.0
    bits = score.to(tl.int32, bitcast=True)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # float order as signed int order
    low = tl.full((1, 1), 4294967295, tl.int64) - rank.to(tl.int64)
    return (ordered.to(tl.int64) << 32) | low


@triton.jit
def _scan_kernel(
    Q,  # [q, d] int8 query codes (row stride stride_q, unit column stride)
    QS,  # [q] float32 query scales
    C,  # [n, d] int8 codes (row stride stride_c, unit column stride)
    CS,  # [n] float32 scales
    RANK,  # [n] int32 each row's place in ascending id order (not read when RANK_IS_ROW)
    SKIP,  # [>= ceil(n / 8)] uint8: bit r % 8 of byte r // 8 set = row r skipped (not read unless HAS_SKIP)
    OUT,  # [splits, q, KB] int64 keys out
    n_queries,
    n_rows,
    dim,
    stride_q,
    stride_c,
    tiles_per_split,
    EMPTY: tl.constexpr,  # _EMPTY (kernels read no globals)
    RANK_IS_ROW: tl.constexpr,
    HAS_SKIP: tl.constexpr,
    KB: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # grid (cdiv(q, BLOCK_Q), splits): program (i, s) keeps queries [i*BLOCK_Q, +BLOCK_Q)'s KB best
    # keys over the tiles [s*tiles_per_split, +tiles_per_split) of BLOCK_N rows
    pid_q = tl.program_id(0)
    split = tl.program_id(1)
    queries = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)  # [BLOCK_Q]
    q_valid = queries < n_queries
    q_scale = tl.load(QS + queries, mask=q_valid, other=0.0)  # [BLOCK_Q]
    columns = tl.arange(0, BLOCK_D)  # [BLOCK_D]
    slots = tl.arange(0, KB)  # [KB]
    best = tl.full((BLOCK_Q, KB), EMPTY, tl.int64)  # [BLOCK_Q, KB] running best keys, in no order
    bound = tl.full((BLOCK_Q,), EMPTY, tl.int64)  # [BLOCK_Q] min of best: what a key must beat
    q_rows = Q + queries.to(tl.int64)[:, None] * stride_q  # [BLOCK_Q, 1] pointers
    n_tiles = tl.cdiv(n_rows, BLOCK_N)
    first = split * tiles_per_split
    last = tl.minimum(first + tiles_per_split, n_tiles)
    for tile in range(first, last):
        rows = tile * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
        live = rows < n_rows
        if HAS_SKIP:
            skip_bits = tl.load(SKIP + (rows >> 3), mask=live, other=0)  # [BLOCK_N] uint8
            live = live & (((skip_bits >> (rows & 7).to(tl.uint8)) & 1) == 0)
        if tl.max(live.to(tl.int32), axis=0) > 0:  # a tile of skipped rows is not read
            c_rows = C + rows.to(tl.int64)[None, :] * stride_c  # [1, BLOCK_N] pointers (64-bit offsets)
            dots = tl.zeros((BLOCK_Q, BLOCK_N), tl.int32)  # [BLOCK_Q, BLOCK_N]
            for d0 in range(0, dim, BLOCK_D):
                d_valid = (d0 + columns) < dim
                q = tl.load(q_rows + (d0 + columns)[None, :], mask=q_valid[:, None] & d_valid[None, :],
                            other=0)  # [BLOCK_Q, BLOCK_D] int8
                c = tl.load(c_rows + (d0 + columns)[:, None], mask=d_valid[:, None] & live[None, :],
                            other=0)  # [BLOCK_D, BLOCK_N] int8
                dots = tl.dot(q, c, dots, out_dtype=tl.int32)
            scale = tl.load(CS + rows, mask=live, other=0.0)  # [BLOCK_N]
            scores = dots.to(tl.float32) * q_scale[:, None] * scale[None, :]  # the core's float32 expression
            if RANK_IS_ROW:
                rank = rows
            else:
                rank = tl.load(RANK + rows, mask=live, other=0)  # [BLOCK_N] int32
            keys = _row_keys(scores, rank[None, :])  # [BLOCK_Q, BLOCK_N] int64
            keys = tl.where(q_valid[:, None] & live[None, :], keys, EMPTY)
            # each query's new keys (those above its bound) enter one at a time, best first: at most
            # KB of them can enter (after KB, the best already holds this tile's KB best)
            above = tl.max(tl.sum((keys > bound[:, None]).to(tl.int32), axis=1), axis=0)
            for _ in range(tl.minimum(above, KB)):
                new = tl.max(keys, axis=1)  # [BLOCK_Q]
                is_bound = best == bound[:, None]  # [BLOCK_Q, KB]: the bound's slot (EMPTY ones: the first)
                slot = tl.min(tl.where(is_bound, slots[None, :], KB), axis=1)  # [BLOCK_Q]
                enters = (slots[None, :] == slot[:, None]) & (new > bound)[:, None]
                best = tl.where(enters, new[:, None], best)
                keys = tl.where(keys == new[:, None], EMPTY, keys)
                bound = tl.min(best, axis=1)
    out = OUT + (split.to(tl.int64) * n_queries + queries.to(tl.int64))[:, None] * KB + slots[None, :]
    tl.store(out, best, mask=q_valid[:, None])


# ------------------------------------------------------------------------------------- launchers


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def scan_blocks(n_queries: int, n_rows: int, dim: int, k: int, device: torch.device,
                multiprocessors: Optional[int] = None) -> ScanBlocks:
    """The launch configuration `topk_int8_scan` uses for n_queries x n_rows codes of `dim` columns
    and k results on `device`: on CUDA by the shape and the GPU's `multiprocessors` (default: the
    device's; one to sixteen queries: the bandwidth configuration), on the CPU the interpreter's."""
    kb = _pow2(k)
    if device.type != "cuda":
        # Triton's interpreter costs per operation, not per element: big tiles (small ones for few
        # rows, so that tests see many), and at least two splits where there are rows for them, so
        # that the merge of splits is always exercised
        block_n = max(32 if n_rows <= 512 else 128, kb)
        splits = max(1, min(3, triton.cdiv(n_rows, block_n)))
        return ScanBlocks(16, block_n, max(16, min(_pow2(dim), 256)), splits, 1, 1)
    sms = multiprocessors or torch.cuda.get_device_properties(device).multi_processor_count
    block_n = max(128, kb)
    tiles = triton.cdiv(n_rows, block_n)
    if n_queries <= 16:
        # the bandwidth configuration: one query block, rows over ~4 programs per multiprocessor,
        # each streaming [BLOCK_N, BLOCK_D] int8 tiles (16-byte loads per thread)
        return ScanBlocks(16, block_n, 128, max(1, min(tiles, 4 * sms)), 4, 4)
    # a batch: ~8 programs per multiprocessor (waves short enough that the last one costs little);
    # a split's query blocks run side by side (grid axis 0 first), so its rows come from HBM once
    block_q = 64 if kb <= 64 else 32 if kb <= 128 else 16
    q_blocks = triton.cdiv(n_queries, block_q)
    splits = max(1, min(tiles, triton.cdiv(8 * sms, q_blocks)))
    return ScanBlocks(block_q, block_n, 64, splits, 8, 3)


def _scan(q_codes, q_scales, codes, scales, k: int, id_order, skip, blocks: Optional[ScanBlocks]):
    """Launch the scan kernel and merge its candidates: (scores float32 [q, k], rows int64 [q, k])."""
    n_queries, dim = q_codes.shape
    n_rows = codes.shape[0]
    kb = _pow2(k)
    blocks = blocks or scan_blocks(n_queries, n_rows, dim, k, codes.device)
    if min(blocks.block_q, blocks.block_n, blocks.block_d) < 16 or blocks.splits < 1:
        raise ValueError(f"scan blocks need block_q, block_n and block_d >= 16 (tl.dot's smallest tiles) and "
                         f"splits >= 1, got {blocks}")
    tiles_per_split = triton.cdiv(triton.cdiv(n_rows, blocks.block_n), blocks.splits)
    splits = triton.cdiv(triton.cdiv(n_rows, blocks.block_n), tiles_per_split)
    out = torch.empty((splits, n_queries, kb), dtype=torch.int64, device=codes.device)
    rank = codes if id_order is None else id_order[0]  # not read when RANK_IS_ROW
    skip_bytes = codes if skip is None else skip  # not read without HAS_SKIP
    grid = (triton.cdiv(n_queries, blocks.block_q), splits)
    with torch.cuda.device(codes.device) if codes.device.type == "cuda" else contextlib.nullcontext():
        _scan_kernel[grid](
            q_codes, q_scales, codes, scales, rank, skip_bytes, out, n_queries, n_rows, dim,
            q_codes.stride(0), codes.stride(0), tiles_per_split,
            EMPTY=_EMPTY, RANK_IS_ROW=id_order is None, HAS_SKIP=skip is not None, KB=kb,
            BLOCK_Q=blocks.block_q, BLOCK_N=blocks.block_n, BLOCK_D=blocks.block_d,
            num_warps=blocks.num_warps, num_stages=blocks.num_stages,
        )  # fmt: skip
    return _merged(out, k, None if id_order is None else id_order[1])


def _merged(out: torch.Tensor, k: int, order: Optional[torch.Tensor]):
    """The k best of every split's keys [splits, q, KB] as (scores float32 [q, k], rows int64 [q, k])."""
    splits, n_queries, kb = out.shape
    keys = out.permute(1, 0, 2).reshape(n_queries, splits * kb).topk(k, dim=1).values  # sorted: best first
    empty = keys == _EMPTY
    ordered = (keys >> 32).to(torch.int32)
    scores = (ordered ^ ((ordered >> 31) & 0x7FFFFFFF)).view(torch.float32)  # the bit map is its own inverse
    rank = 0xFFFFFFFF - (keys & 0xFFFFFFFF)
    rows = rank if order is None else order[rank.clamp(0, order.shape[0] - 1)]
    return scores.masked_fill(empty, float("-inf")), rows.masked_fill(empty, -1)


# ------------------------------------------------------------------------------------ public API


def id_order(ids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The `id_order` argument of `topk_int8_scan` for rows with `ids` (int64 [n]): (each row's rank
    in ascending id order int32 [n], the rows in that order int64 [n]); equal ids rank by row.
    Made once per set of rows and reused by every search of them."""
    if not isinstance(ids, torch.Tensor) or ids.dtype != torch.int64 or ids.ndim != 1:
        raise TypeError(f"ids must be an int64 [n] tensor, got {type(ids).__name__} "
                        f"{getattr(ids, 'dtype', '')} {tuple(getattr(ids, 'shape', ()))}")
    if len(ids) > _MAX_ROWS:
        raise ValueError(f"at most {_MAX_ROWS} rows per scan, got {len(ids)}; split them into segments")
    order = torch.argsort(ids, stable=True)
    rank = torch.empty(len(ids), dtype=torch.int32, device=ids.device)
    rank[order] = torch.arange(len(ids), dtype=torch.int32, device=ids.device)
    return rank, order


def topk_int8_scan(q_codes: torch.Tensor, q_scales: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor,
                   k: int, *, id_order: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
                   skip: Optional[torch.Tensor] = None,
                   blocks: Optional[ScanBlocks] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Each query's k best rows by int8 score, in one pass over the codes (module docstring).

    Args:
        q_codes: int8 [q, d] query codes (unit column stride), q >= 1.
        q_scales: float32 [q] query scales.
        codes: int8 [n, d] row codes (unit column stride), n >= 1.
        scales: float32 [n] row scales.
        k: results per query, 1 <= k <= MAX_K (rows beyond those not skipped come back as (-inf, -1)).
        id_order: `id_order(ids)` of the rows' ids, which rank equal scores (lower id first);
            None: equal scores go to the lower row.
        skip: optional uint8 [>= ceil(n / 8)] bitmap, bit r % 8 of byte r // 8 set for a row never
            scored (a segment's uint64 deletion words viewed as uint8 are this layout).
        blocks: a launch configuration (`ScanBlocks`) instead of the one picked for the shape.

    Returns:
        (scores float32 [q, k], rows int64 [q, k]) on the inputs' device: best first, equal to
        `topk_int8_scan_ref` and to fastret's C++ core, id for id and bit for bit.

    Raises:
        TypeError: an input that is not a tensor of the dtype above.
        ValueError: shapes that disagree, inputs on several devices, k out of range, a bitmap too short.
        RuntimeError: a CUDA tensor (or TRITON_INTERPRET=1) without triton installed.
    """
    _check_inputs(q_codes, q_scales, codes, scales, k, id_order, skip)
    if use_triton(codes.device):
        require_triton("topk_int8_scan", codes.device, _scan_kernel)
        return _scan(q_codes, q_scales, codes, scales, k, id_order, skip, blocks)
    return topk_int8_scan_ref(q_codes, q_scales, codes, scales, k, id_order=id_order, skip=skip)


def _check_inputs(q_codes, q_scales, codes, scales, k, id_order, skip) -> int:
    """Raise on bad input (the messages say what was expected); the number of rows."""
    for name, tensor, dtype, ndim in (("q_codes", q_codes, torch.int8, 2), ("q_scales", q_scales, torch.float32, 1),
                                      ("codes", codes, torch.int8, 2), ("scales", scales, torch.float32, 1)):
        if not isinstance(tensor, torch.Tensor) or tensor.dtype != dtype or tensor.ndim != ndim:
            raise TypeError(f"{name} must be a {dtype} tensor with {ndim} dimension(s), got {type(tensor).__name__} "
                            f"{getattr(tensor, 'dtype', '')} {tuple(getattr(tensor, 'shape', ()))}")
    n, dim = codes.shape
    if q_codes.shape[1] != dim or q_codes.shape[0] == 0 or n == 0:
        raise ValueError(f"q_codes [q, d] and codes [n, d] need one d and q, n >= 1, got {tuple(q_codes.shape)} "
                         f"and {tuple(codes.shape)}")
    if q_scales.shape[0] != q_codes.shape[0] or scales.shape[0] != n:
        raise ValueError(f"one scale per vector: q_scales {tuple(q_scales.shape)} for {q_codes.shape[0]} queries, "
                         f"scales {tuple(scales.shape)} for {n} rows")
    if n > _MAX_ROWS:
        raise ValueError(f"at most {_MAX_ROWS} rows per scan, got {n}; split them into segments")
    if (q_codes.stride(1) != 1 and dim > 1) or (codes.stride(1) != 1 and dim > 1):
        raise ValueError("q_codes and codes need unit column stride; pass .contiguous() tensors")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise ValueError(f"k must be an int in [1, {MAX_K}], got {k!r}; search more results with "
                         "fastret.search.torch_backend.topk_int8_torch")
    tensors = [q_codes, q_scales, codes, scales]
    if id_order is not None:
        if (not isinstance(id_order, tuple) or len(id_order) != 2
                or not all(isinstance(t, torch.Tensor) for t in id_order)
                or id_order[0].dtype != torch.int32 or id_order[1].dtype != torch.int64
                or tuple(id_order[0].shape) != (n,) or tuple(id_order[1].shape) != (n,)):
            raise TypeError(f"id_order must be (rank int32 [{n}], rows int64 [{n}]) from id_order(ids)")
        tensors += list(id_order)
    if skip is not None:
        if not isinstance(skip, torch.Tensor) or skip.dtype != torch.uint8 or skip.ndim != 1:
            raise TypeError(f"skip must be a uint8 [ceil(n / 8)] bitmap tensor, got {type(skip).__name__} "
                            f"{getattr(skip, 'dtype', '')} {tuple(getattr(skip, 'shape', ()))}")
        if skip.shape[0] < -(-n // 8):
            raise ValueError(f"skip holds {skip.shape[0]} bytes, {-(-n // 8)} needed for {n} rows")
        tensors.append(skip)
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        raise ValueError(f"all inputs must be on one device, got {sorted(map(str, devices))}")
    return n
