"""Fused token pooling + L2 normalization (+ int8 quantization) of encoder hidden states.

For row b of hidden [B, T, D] with attention mask m [B, T] (1 = real token, 0 = padding):

    first_b = min{t : m_bt = 1}       last_b = max{t : m_bt = 1}       n_b = sum_t m_bt

    mean:  x_b = sum_t m_bt * h_bt / max(n_b, 1e-9)
    cls:   x_b = h_{b, first_b}           (position 0 with right padding, as sentence-transformers)
    last:  x_b = h_{b, last_b}            (sentence-transformers' "lasttoken": either padding side)
    a row with no real token (n_b = 0) gives x_b = 0 in every mode.

    normalize:  y_b = x_b / max(||x_b||_2, 1e-12)          (torch.nn.functional.normalize)
    quantize:   s_b = max_i |y_bi| / 127,   q_bi = clip(rint(y_bi / s_b), -127, 127)
                (q_b = 0 and s_b = 0 where s_b == 0; exactly `fastret.quantize_int8(y)`)

Shapes and dtypes: hidden [B, T, D] float16/bfloat16/float32 (any strides); attention_mask [B, T]
bool or integer holding 0/1, anywhere in the row (left padding, right padding, packed rows, holes);
y float32 [B, D] (accumulation is float32 for every input dtype); q int8 [B, D]; s float32 [B].
Padding positions never contribute, even when they hold garbage (NaN, inf). The float output is
differentiable with respect to hidden; the int8 outputs are not.

Packed layout (`pool_normalize_packed`): hidden [N, D] holds the B sequences back to back, with
no padding; sequence b is rows cu_seqlens[b] .. cu_seqlens[b + 1] - 1 (cu_seqlens [B + 1], int32 or
int64, cu_seqlens[0] = 0, nondecreasing, cu_seqlens[B] = N). Then first_b = cu_seqlens[b],
last_b = cu_seqlens[b + 1] - 1, n_b = last_b - first_b + 1, and every formula above holds as is. The
same forward kernel serves both layouts (no mask is read in the packed one).

Dispatch: a CUDA tensor runs the Triton kernels; a CPU tensor runs `pool_normalize_ref` (plain
torch), or the Triton kernels in Triton's interpreter when TRITON_INTERPRET=1 (how the tests check
the kernels on machines without a GPU).

No host synchronisation on a GPU: checks of values (a mask holding only 0/1, finite pooled vectors
before quantizing, a well-formed cu_seqlens) read device memory from the host, which waits for the
GPU and costs far more than the kernels; they run for CPU tensors (where they are free) and for
CUDA tensors only with FASTRET_DEVICE_CHECKS=1 (debugging; see `device_checks`). Unchecked on a
GPU, a nonzero mask value counts as a real token (as in the reference), and a row whose pooled
vector holds NaN/inf gets the scale NaN, which `check_quantizable` reports wherever the scales are
on the host.
"""

import contextlib
import os
from typing import Tuple, Union

import torch
import torch.nn.functional as F

from ._triton import require_triton, tl, triton, use_triton

MODES = ("mean", "cls", "last")
_MODE_IDS = {"mean": 0, "cls": 1, "last": 2}
_HIDDEN_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MASK_DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
_CU_DTYPES = (torch.int32, torch.int64)
_MEAN_EPS = 1e-9  # sentence-transformers: torch.clamp(sum_mask, min=1e-9)
_NORM_EPS = 1e-12  # torch.nn.functional.normalize's default eps
_MAX_GRID_YZ = 65535  # CUDA limit on grid axes 1 and 2 (axis 0 takes 2**31 - 1)


# ------------------------------------------------------------------------------------- reference


def pool_normalize_ref(
    hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str = "mean", normalize: bool = True
) -> torch.Tensor:
    """Pool and L2-normalize hidden states in plain torch: the reference the kernels must match.

    sentence-transformers' `Pooling` (+ `Normalize`) semantics, accumulated in float32. A row
    without real tokens pools to the zero vector in every mode (sentence-transformers agrees for
    mean and lasttoken, and returns the position-0 state for cls). Padding positions are selected
    out (torch.where) rather than multiplied by 0, so NaN/inf there cannot leak; for finite
    states that is the same result. Differentiable with respect to `hidden`.

    Args:
        hidden: float16/bfloat16/float32 [B, T, D] token states.
        attention_mask: bool or integer [B, T], 1 for real tokens and 0 for padding (either side,
            or anywhere).
        mode: "mean", "cls" (first real token) or "last" (last real token).
        normalize: divide each pooled row by max(||x||_2, 1e-12).

    Returns:
        float32 [B, D].

    Raises:
        TypeError / ValueError: see `pool_normalize`.
    """
    _check_inputs(hidden, attention_mask, mode, normalize, False)
    B, T, D = hidden.shape
    h = hidden.float()
    real = attention_mask != 0  # [B, T]
    if T == 0:
        x = h.sum(dim=1)  # zeros [B, D], still attached to hidden's graph
    elif mode == "mean":
        # torch.where rather than h * mask (sentence-transformers) so garbage in padding stays out
        summed = torch.where(real[..., None], h, h.new_zeros(())).sum(dim=1)
        x = summed / real.sum(dim=1, keepdim=True, dtype=torch.float32).clamp(min=_MEAN_EPS)
    else:
        if mode == "cls":
            index = real.int().argmax(dim=1)  # first maximum: the first real token
        else:
            index = T - 1 - real.flip(1).int().argmax(dim=1)  # the last real token
        x = h.gather(1, index[:, None, None].expand(B, 1, D)).squeeze(1)
        x = torch.where(real.any(dim=1)[:, None], x, x.new_zeros(()))
    if normalize:
        x = F.normalize(x, p=2.0, dim=-1, eps=_NORM_EPS)
    return x


def pool_normalize_packed_ref(
    hidden: torch.Tensor, cu_seqlens: torch.Tensor, mode: str = "mean", normalize: bool = True
) -> torch.Tensor:
    """`pool_normalize_ref` for packed sequences, in plain torch (the reference of the packed kernel).

    Args:
        hidden: float16/bfloat16/float32 [N, D]: B sequences back to back, no padding.
        cu_seqlens: int32/int64 [B + 1]: sequence b is rows cu_seqlens[b] .. cu_seqlens[b + 1] - 1.
        mode, normalize: as in `pool_normalize_ref`.

    Returns:
        float32 [B, D], not differentiable (the packed layout serves inference).

    Raises:
        TypeError / ValueError: see `pool_normalize_packed`.
    """
    _check_packed_inputs(hidden, cu_seqlens, mode, normalize, False)
    with torch.no_grad():
        h = hidden.float()
        starts, ends = cu_seqlens[:-1].long(), cu_seqlens[1:].long()
        counts = ends - starts  # [B]
        B, (N, D) = counts.shape[0], h.shape
        if mode == "mean":
            sequence = torch.repeat_interleave(torch.arange(B, device=h.device), counts, output_size=N)  # [N]
            x = h.new_zeros((B, D)).index_add_(0, sequence, h)
            x /= counts[:, None].to(torch.float32).clamp(min=_MEAN_EPS)
        else:
            rows = starts if mode == "cls" else ends - 1
            x = h[rows.clamp(0, max(N - 1, 0))] if N else h.new_zeros((B, D))  # [B, D]
            x = torch.where((counts > 0)[:, None], x, x.new_zeros(()))
        if normalize:
            x = F.normalize(x, p=2.0, dim=-1, eps=_NORM_EPS)
    return x


# --------------------------------------------------------------------------------------- kernels


@triton.jit
def _pool_fwd_kernel(
    H,  # [B, T, D] hidden, any strides (packed: [N, D], stride_hb = 0, stride_ht its row stride)
    M,  # [B, T] mask (0/1), any strides (packed: not read)
    CU,  # [B + 1] cu_seqlens, int32/int64 (padded: not read)
    X,  # [B, D] float32 out: pooled rows (contiguous)
    SUMSQ,  # [B, N_DBLK] float32 out: sum_i x_i^2 over this program's columns
    ABSMAX,  # [B, N_DBLK] float32 out: max_i |x_i| over this program's columns
    ROWS,  # [B, 3] int32 out: first, last, count (for the backward)
    T,
    D,
    stride_hb,
    stride_ht,
    stride_hd,
    stride_mb,
    stride_mt,
    MODE: tl.constexpr,  # 0 mean, 1 cls, 2 last
    PACKED: tl.constexpr,  # rows from CU (packed [N, D]) instead of the mask (padded [B, T, D])
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # grid (B, N_DBLK): program (b, j) pools columns [j * BLOCK_D, (j + 1) * BLOCK_D) of row b
    b = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1)
    n_dblk = tl.num_programs(1)
    offs_t = tl.arange(0, BLOCK_T)  # [BLOCK_T]
    mask_row = M + b * stride_mb

    if PACKED:
        # sequence b is rows [CU[b], CU[b + 1]): two loads instead of a mask scan
        first = tl.load(CU + b).to(tl.int32)
        last = tl.load(CU + b + 1).to(tl.int32) - 1
        count = last - first + 1  # 0 for an empty sequence (then [first, last] is empty too)
    else:
        # first / last real token and count, from the whole mask row: [BLOCK_T] lanes, reduced once
        first_v = tl.zeros([BLOCK_T], dtype=tl.int32) + T
        last_v = tl.zeros([BLOCK_T], dtype=tl.int32) - 1
        count_v = tl.zeros([BLOCK_T], dtype=tl.int32)
        for t0 in range(0, T, BLOCK_T):
            t = t0 + offs_t
            real = tl.load(mask_row + t * stride_mt, mask=t < T, other=0) != 0  # [BLOCK_T]
            first_v = tl.minimum(first_v, tl.where(real, t, T))
            last_v = tl.maximum(last_v, tl.where(real, t, -1))
            count_v += real.to(tl.int32)
        first = tl.min(first_v, axis=0)
        last = tl.max(last_v, axis=0)
        count = tl.sum(count_v, axis=0)
    tl.store(ROWS + b * 3, first, mask=j == 0)
    tl.store(ROWS + b * 3 + 1, last, mask=j == 0)
    tl.store(ROWS + b * 3 + 2, count, mask=j == 0)

    offs_d = j * BLOCK_D + tl.arange(0, BLOCK_D)  # [BLOCK_D]
    d_ok = offs_d < D
    h_row = H + b * stride_hb
    if MODE == 0:
        # only [first, last] is read; positions with mask 0 inside it (packed rows, holes) are
        # masked loads: they cost no bandwidth and add 0, which is h * mask for a 0/1 mask without
        # letting NaN/inf in padding through
        acc = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)  # [BLOCK_T, BLOCK_D], reduced once
        for t0 in range(first, last + 1, BLOCK_T):
            t = t0 + offs_t
            if PACKED:
                real = t <= last  # [BLOCK_T]
            else:
                real = tl.load(mask_row + t * stride_mt, mask=t <= last, other=0) != 0  # [BLOCK_T]
            ptrs = h_row + t.to(tl.int64)[:, None] * stride_ht + offs_d[None, :] * stride_hd
            h = tl.load(ptrs, mask=real[:, None] & d_ok[None, :], other=0.0)  # [BLOCK_T, BLOCK_D]
            acc += h.to(tl.float32)
        x = tl.math.div_rn(tl.sum(acc, axis=0), tl.maximum(count.to(tl.float32), 1e-9))
    else:
        if MODE == 1:
            pos = first
        else:
            pos = last
        ptrs = h_row + pos.to(tl.int64) * stride_ht + offs_d * stride_hd
        row_d = tl.where(count > 0, D, 0)  # columns to read: none for a row without real tokens
        x = tl.load(ptrs, mask=offs_d < row_d, other=0.0).to(tl.float32)  # [BLOCK_D]

    tl.store(X + b * D + offs_d, x, mask=d_ok)
    tl.store(SUMSQ + b * n_dblk + j, tl.sum(x * x, axis=0))
    tl.store(ABSMAX + b * n_dblk + j, tl.max(tl.abs(x), axis=0))


# The row norm and the int8 scale need the whole pooled row, but _pool_fwd_kernel splits a row's
# columns over programs (so that a few dozen rows still fill the GPU, and D has no upper bound).
# Each program therefore leaves sum(x^2) and max|x| for its columns, and this small kernel
# finishes every row in one pass over y [B, D] (read y, write y and its code: 9 bytes a column,
# against 2T bytes a column of fp16 hidden for the pooling); the scale is known before the pass
# (see below), so the quantization needs no pass of its own.
@triton.jit
def _normalize_quantize_kernel(
    X,  # [B, D] float32, pooled rows in, normalized rows out (in place)
    SUMSQ,  # [B, N_DBLK] float32 partials from _pool_fwd_kernel
    ABSMAX,  # [B, N_DBLK] float32 partials from _pool_fwd_kernel
    NORM,  # [B] float32 out: ||x_b|| (for the backward)
    CODES,  # [B, D] int8 out
    SCALES,  # [B] float32 out (NaN where the row holds NaN/inf, for the launcher to report)
    D,
    N_DBLK,
    NORMALIZE: tl.constexpr,
    QUANTIZE: tl.constexpr,
    BLOCK_P: tl.constexpr,  # >= N_DBLK
    BLOCK_D: tl.constexpr,
):
    # grid (B,): program b finishes row b, one pass over its D columns in BLOCK_D chunks
    b = tl.program_id(0).to(tl.int64)
    offs_p = tl.arange(0, BLOCK_P)
    p_ok = offs_p < N_DBLK
    denom = 1.0
    if NORMALIZE:
        norm = tl.sqrt_rn(tl.sum(tl.load(SUMSQ + b * N_DBLK + offs_p, mask=p_ok, other=0.0), axis=0))
        tl.store(NORM + b, norm)
        denom = tl.maximum(norm, 1e-12)
    scale = 0.0
    safe = 1.0
    if QUANTIZE:
        amax = tl.max(tl.load(ABSMAX + b * N_DBLK + offs_p, mask=p_ok, other=0.0), axis=0)
        if NORMALIZE:
            # max_i |x_i / n| == max_i |x_i| / n exactly: correctly rounded division is monotone,
            # so the scale is known before y is, and y and its codes come out of the same pass
            amax = tl.math.div_rn(amax, denom)
        scale = tl.math.div_rn(amax, 127.0)
        safe = tl.where(scale > 0, scale, 1.0)
    finite_v = tl.zeros([BLOCK_D], dtype=tl.int32) + 1
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)  # [BLOCK_D]
        d_ok = offs_d < D
        y = tl.load(X + b * D + offs_d, mask=d_ok, other=0.0)
        if NORMALIZE:
            y = tl.math.div_rn(y, denom)  # IEEE division, as torch; `/` is approximate on CUDA
            tl.store(X + b * D + offs_d, y, mask=d_ok)
        if QUANTIZE:
            v = tl.math.div_rn(y, safe)
            # rint (round half to even) from exact operations: libdevice.rint does not run in
            # Triton's interpreter, and this is bit-identical to it for every float32
            r = tl.floor(v)
            frac = v - r  # exact (Sterbenz) unless v in (-1, 0), where it never rounds across 0.5
            odd = tl.floor(r * 0.5) != r * 0.5
            r = tl.where((frac > 0.5) | ((frac == 0.5) & odd), r + 1.0, r)
            q = tl.where(scale > 0, tl.minimum(tl.maximum(r, -127.0), 127.0), 0.0)
            tl.store(CODES + b * D + offs_d, q.to(tl.int8), mask=d_ok)
            finite_v = tl.minimum(finite_v, (tl.abs(y) <= 3.4028234663852886e38).to(tl.int32))
    if QUANTIZE:
        tl.store(SCALES + b, tl.where(tl.min(finite_v, axis=0) == 1, scale, float("nan")))


@triton.jit
def _normalize_bwd_kernel(
    Y,  # [B, D] float32 forward output (normalized rows, contiguous)
    DY,  # [B, D] upstream gradient, any strides (often expanded: stride 0)
    NORM,  # [B] float32 ||x_b|| saved by the forward
    DX,  # [B, D] float32 out: gradient w.r.t. the pooled rows (contiguous)
    D,
    stride_dyb,
    stride_dyd,
    BLOCK_D: tl.constexpr,
):
    # grid (B,): y = x / c with c = max(n, eps):  dx = (dy - y <y, dy>) / n  when n >= eps
    #                                             dx = dy / eps              otherwise (c constant)
    b = tl.program_id(0).to(tl.int64)
    n = tl.load(NORM + b)
    dot_v = tl.zeros([BLOCK_D], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        d_ok = offs_d < D
        y = tl.load(Y + b * D + offs_d, mask=d_ok, other=0.0)
        dy = tl.load(DY + b * stride_dyb + offs_d * stride_dyd, mask=d_ok, other=0.0).to(tl.float32)
        dot_v += y * dy
    dot = tl.where(n >= 1e-12, tl.sum(dot_v, axis=0), 0.0)
    denom = tl.maximum(n, 1e-12)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        d_ok = offs_d < D
        y = tl.load(Y + b * D + offs_d, mask=d_ok, other=0.0)
        dy = tl.load(DY + b * stride_dyb + offs_d * stride_dyd, mask=d_ok, other=0.0).to(tl.float32)
        tl.store(DX + b * D + offs_d, tl.math.div_rn(dy - dot * y, denom), mask=d_ok)


@triton.jit
def _pool_bwd_kernel(
    G,  # [B, D] gradient w.r.t. the pooled rows, any strides
    M,  # [B, T] mask, any strides
    ROWS,  # [B, 3] int32 first, last, count from the forward
    DH,  # [B, T, D] out, hidden's dtype (contiguous)
    T,
    D,
    stride_gb,
    stride_gd,
    stride_mb,
    stride_mt,
    MODE: tl.constexpr,  # 0 mean, 1 cls, 2 last
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # grid (B, cdiv(T, BLOCK_T), cdiv(D, BLOCK_D)): every element of dh is written once, padding
    # included (zeros), so dh needs no separate memset
    b = tl.program_id(0).to(tl.int64)
    offs_t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)  # [BLOCK_T]
    offs_d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)  # [BLOCK_D]
    t_ok = offs_t < T
    d_ok = offs_d < D
    g = tl.load(G + b * stride_gb + offs_d * stride_gd, mask=d_ok, other=0.0).to(tl.float32)
    if MODE == 0:
        count = tl.load(ROWS + b * 3 + 2)
        g = tl.math.div_rn(g, tl.maximum(count.to(tl.float32), 1e-9))
        take = tl.load(M + b * stride_mb + offs_t * stride_mt, mask=t_ok, other=0) != 0
    elif MODE == 1:
        take = offs_t == tl.load(ROWS + b * 3)  # first real token (T for an empty row: none)
    else:
        take = offs_t == tl.load(ROWS + b * 3 + 1)  # last real token (-1 for an empty row: none)
    dh = tl.where(take[:, None], g[None, :], 0.0)  # [BLOCK_T, BLOCK_D]
    ptrs = DH + b * T * D + offs_t.to(tl.int64)[:, None] * D + offs_d[None, :]
    tl.store(ptrs, dh.to(DH.dtype.element_ty), mask=t_ok[:, None] & d_ok[None, :])


# ------------------------------------------------------------------------------------- launchers


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _pool_blocks(T: int, D: int) -> Tuple[int, int]:
    # [BLOCK_T, BLOCK_D] tiles of <= 2048 elements: 16 fp32 accumulators per thread at 4 warps.
    # Columns split over programs (grid axis 1) rather than one program per row, so a batch of a
    # few dozen rows still fills the GPU; D is unbounded (the row norm is finished by a 2nd kernel).
    block_d = min(_pow2(D), 128)
    block_t = min(_pow2(max(T, 1)), max(2048 // block_d, 1))
    return block_t, block_d


def _pool_normalize_fwd(hidden, mask, mode: str, normalize: bool, quantize: bool, cu_seqlens=None):
    """Launch the forward kernels: hidden [B, T, D] (B, T, D > 0) with mask [B, T] integer 0/1, or
    packed hidden [N, D] (N, D > 0) with cu_seqlens [B + 1] (B > 0) and mask None. Enqueues work
    only: nothing here waits for the device.

    Returns y float32 [B, D], codes int8 [B, D] or None, scales float32 [B] or None,
    norm float32 [B] or None, rows int32 [B, 3].
    """
    if cu_seqlens is None:
        B, T, D = hidden.shape
        strides = (hidden.stride(0), hidden.stride(1), hidden.stride(2), mask.stride(0), mask.stride(1))
    else:
        (T, D), B = hidden.shape, cu_seqlens.shape[0] - 1  # T: the packed rows (block choice only)
        strides = (0, hidden.stride(0), hidden.stride(1), 0, 0)
        mask = cu_seqlens  # not read by the packed kernel
    block_t, block_d = _pool_blocks(T, D)
    n_dblk = triton.cdiv(D, block_d)
    if n_dblk > _MAX_GRID_YZ:
        raise RuntimeError(f"pool_normalize supports D up to {_MAX_GRID_YZ * block_d}, got D={D}")
    dev = hidden.device
    y = torch.empty((B, D), dtype=torch.float32, device=dev)
    sumsq = torch.empty((B, n_dblk), dtype=torch.float32, device=dev)
    absmax = torch.empty((B, n_dblk), dtype=torch.float32, device=dev)
    rows = torch.empty((B, 3), dtype=torch.int32, device=dev)
    norm = torch.empty(B, dtype=torch.float32, device=dev) if normalize else None
    codes = torch.empty((B, D), dtype=torch.int8, device=dev) if quantize else None
    scales = torch.empty(B, dtype=torch.float32, device=dev) if quantize else None
    with torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext():
        _pool_fwd_kernel[(B, n_dblk)](
            hidden, mask, mask if cu_seqlens is None else cu_seqlens, y, sumsq, absmax, rows, T, D, *strides,
            MODE=_MODE_IDS[mode], PACKED=cu_seqlens is not None, BLOCK_T=block_t, BLOCK_D=block_d, num_warps=4,
        )  # fmt: skip
        if normalize or quantize:
            _normalize_quantize_kernel[(B,)](
                y, sumsq, absmax, norm if normalize else y, codes if quantize else y,
                scales if quantize else y, D, n_dblk,
                NORMALIZE=normalize, QUANTIZE=quantize, BLOCK_P=_pow2(n_dblk),
                BLOCK_D=min(_pow2(D), 1024), num_warps=4,
            )  # fmt: skip
    if quantize and device_checks(dev):
        check_quantizable(scales)
    return y, codes, scales, norm, rows


def _pool_normalize_bwd(dy, y, norm, mask, rows, hidden_shape, hidden_dtype, mode: str, normalize: bool):
    """Launch the backward kernels: dy [B, D] -> dh [B, T, D] in hidden's dtype."""
    B, T, D = hidden_shape
    dev = dy.device
    block_t, block_d = _pool_blocks(T, D)
    grid = (B, triton.cdiv(T, block_t), triton.cdiv(D, block_d))
    if max(grid[1:]) > _MAX_GRID_YZ:
        raise RuntimeError(
            f"pool_normalize's backward supports T up to {_MAX_GRID_YZ * block_t} and D up to "
            f"{_MAX_GRID_YZ * block_d}, got T={T}, D={D}"
        )
    dh = torch.empty(hidden_shape, dtype=hidden_dtype, device=dev)
    with torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext():
        g = dy
        if normalize:
            g = torch.empty((B, D), dtype=torch.float32, device=dev)
            _normalize_bwd_kernel[(B,)](
                y, dy, norm, g, D, dy.stride(0), dy.stride(1), BLOCK_D=min(_pow2(D), 1024), num_warps=4
            )
        _pool_bwd_kernel[grid](
            g, mask, rows, dh, T, D, g.stride(0), g.stride(1), mask.stride(0), mask.stride(1),
            MODE=_MODE_IDS[mode], BLOCK_T=block_t, BLOCK_D=block_d, num_warps=4,
        )  # fmt: skip
    return dh


class _PoolNormalize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, mask, mode, normalize, quantize):
        y, codes, scales, norm, rows = _pool_normalize_fwd(hidden, mask, mode, normalize, quantize)
        ctx.save_for_backward(y, norm, mask, rows)
        ctx.meta = (hidden.shape, hidden.dtype, mode, normalize)
        if not quantize:
            return y
        ctx.mark_non_differentiable(codes, scales)
        return y, codes, scales

    @staticmethod
    def backward(ctx, dy, *_int8_grads):
        y, norm, mask, rows = ctx.saved_tensors
        dh = _pool_normalize_bwd(dy, y, norm, mask, rows, *ctx.meta)
        return dh, None, None, None, None


# ------------------------------------------------------------------------------------ public API


def pool_normalize(
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    mode: str = "mean",
    normalize: bool = True,
    quantize: bool = False,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Pool token states into one vector per row, L2-normalize it, and optionally quantize it.

    One fused pass over the real tokens of each row (padding is never read). Matches
    sentence-transformers' Pooling + Normalize (`pool_normalize_ref`) to float32 rounding; the int8
    outputs are exactly `fastret.quantize_int8` of the float output.

    Args:
        hidden: float16/bfloat16/float32 [B, T, D] token states (any strides; CUDA or CPU).
        attention_mask: bool or integer [B, T] on hidden's device, 1 for real tokens and 0 for
            padding, on either side or anywhere in the row.
        mode: "mean" (average of the real tokens), "cls" (first real token) or "last" (last real
            token, sentence-transformers' "lasttoken"). A row without real tokens gives zeros.
        normalize: divide each pooled row by max(||x||_2, 1e-12).
        quantize: also return int8 codes and float32 scales (symmetric, per row, scale = max|y| / 127).

    Returns:
        y float32 [B, D] (differentiable w.r.t. hidden), or (y, codes int8 [B, D], scales
        float32 [B]) when quantize=True.

    Raises:
        TypeError: hidden or attention_mask is not a tensor of a supported dtype; a flag is not bool.
        ValueError: wrong ranks, mismatched [B, T], different devices, an unknown mode; where
            values are checked (CPU tensors, or FASTRET_DEVICE_CHECKS=1: see `device_checks`), a
            mask value other than 0/1 or (quantize=True) NaN/inf in the pooled vectors (unchecked
            on a GPU, such a row's scale is NaN).
        RuntimeError: a CUDA tensor (or TRITON_INTERPRET=1) without triton installed.
    """
    _check_inputs(hidden, attention_mask, mode, normalize, quantize)
    if hidden.numel() > 0 and use_triton(hidden.device):
        require_triton("pool_normalize", hidden.device, _pool_fwd_kernel)
        mask = attention_mask.view(torch.uint8) if attention_mask.dtype == torch.bool else attention_mask
        if hidden.requires_grad and torch.is_grad_enabled():
            return _PoolNormalize.apply(hidden, mask, mode, normalize, quantize)
        y, codes, scales, _, _ = _pool_normalize_fwd(hidden, mask, mode, normalize, quantize)  # inference: no graph
        return (y, codes, scales) if quantize else y
    y = pool_normalize_ref(hidden, attention_mask, mode, normalize)
    return _quantized(y) if quantize else y


def pool_normalize_packed(
    hidden: torch.Tensor,
    cu_seqlens: torch.Tensor,
    mode: str = "mean",
    normalize: bool = True,
    quantize: bool = False,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """`pool_normalize` for packed sequences (no padding): one vector per sequence.

    The same fused kernels as `pool_normalize`, reading each sequence's rows from cu_seqlens
    instead of scanning a mask; on a GPU nothing here waits for the device (see the module
    docstring). Equal to `pool_normalize` of the same sequences padded, to float32 rounding.

    Args:
        hidden: float16/bfloat16/float32 [N, D]: B sequences back to back (any strides).
        cu_seqlens: int32/int64 [B + 1] on hidden's device: sequence b is rows
            cu_seqlens[b] .. cu_seqlens[b + 1] - 1 (cu_seqlens[0] = 0, nondecreasing,
            cu_seqlens[B] = N). An empty sequence gives zeros.
        mode, normalize, quantize: as in `pool_normalize`.

    Returns:
        y float32 [B, D], or (y, codes int8 [B, D], scales float32 [B]) when quantize=True. Not
        differentiable: training pools padded batches with `pool_normalize`.

    Raises:
        TypeError: a tensor of the wrong type or dtype; a flag that is not bool.
        ValueError: wrong ranks, different devices, an unknown mode; where values are checked
            (CPU, or FASTRET_DEVICE_CHECKS=1): a malformed cu_seqlens, NaN/inf to quantize.
        RuntimeError: a CUDA tensor (or TRITON_INTERPRET=1) without triton installed.
    """
    _check_packed_inputs(hidden, cu_seqlens, mode, normalize, quantize)
    if hidden.numel() > 0 and cu_seqlens.shape[0] > 1 and use_triton(hidden.device):
        require_triton("pool_normalize_packed", hidden.device, _pool_fwd_kernel)
        with torch.no_grad():
            y, codes, scales, _, _ = _pool_normalize_fwd(hidden, None, mode, normalize, quantize, cu_seqlens)
        return (y, codes, scales) if quantize else y
    y = pool_normalize_packed_ref(hidden, cu_seqlens, mode, normalize)
    return _quantized(y) if quantize else y


def device_checks(device: torch.device) -> bool:
    """Whether checks that read tensor values on the host run for tensors on `device`: always on
    the CPU (free there), elsewhere only with the environment variable FASTRET_DEVICE_CHECKS=1
    (read per call), because each such read waits for the device to finish its queued work."""
    if device.type == "cpu":
        return True
    return os.environ.get("FASTRET_DEVICE_CHECKS", "").strip().lower() in ("1", "true", "yes", "on")


def check_quantizable(scales: torch.Tensor) -> None:
    """Raise ValueError if any int8 scale from the pooling is NaN (the kernel's mark of a pooled
    vector with NaN/inf). Reads the values: call it where `scales` are on the host, or in a debug run."""
    if not bool(torch.isfinite(scales).all()):
        raise ValueError(
            "the pooled vectors contain NaN or inf, so they cannot be quantized; "
            "check hidden for NaN/inf at real-token positions"
        )


def _quantized(y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The reference paths' int8 step, checked where checks are free."""
    codes, scales = quantize_rows_ref(y)
    if device_checks(y.device):
        check_quantizable(scales)
    return y, codes, scales


def quantize_rows_ref(y: torch.Tensor, max_code: int = 127) -> Tuple[torch.Tensor, torch.Tensor]:
    """The fused kernel's int8 step in plain torch: per row s = max|y| / max_code (0 for a zero
    row), codes = clamp(round(y / s), -max_code, max_code) (0 where s == 0). y float [..., D]
    (finite) -> (codes int8 [..., D], scales float32 [...]). The kernel uses max_code 127; the
    int8 encoder's 7-bit weights and search queries use 63."""
    y = y.detach().float()
    # divided by a tensor, not a Python number: on CUDA, torch turns division by a number into a
    # multiplication by its reciprocal, one rounding off IEEE division (numpy's, and the kernel's)
    code = torch.tensor(float(max_code), device=y.device)
    scales = y.abs().amax(dim=-1) / code if y.shape[-1] else y.new_zeros(y.shape[:-1])
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    codes = torch.round(y / safe[..., None]).clamp_(-max_code, max_code).to(torch.int8)
    return codes, scales


def _check_inputs(hidden, attention_mask, mode, normalize, quantize) -> None:
    if not isinstance(hidden, torch.Tensor):
        raise TypeError(f"hidden must be a torch.Tensor [B, T, D], got {type(hidden).__name__}")
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(
            f"attention_mask must be a torch.Tensor [B, T], got {type(attention_mask).__name__}; "
            "pass the tokenizer's attention_mask tensor"
        )
    if hidden.ndim != 3:
        raise ValueError(
            f"hidden must be [B, T, D], got shape {tuple(hidden.shape)}; "
            "for a single sequence pass hidden[None] and attention_mask[None]"
        )
    if attention_mask.ndim != 2:
        raise ValueError(f"attention_mask must be [B, T], got shape {tuple(attention_mask.shape)}")
    if tuple(attention_mask.shape) != tuple(hidden.shape[:2]):
        raise ValueError(
            f"attention_mask [B, T] must match hidden [B, T, D] in B and T: got mask "
            f"{tuple(attention_mask.shape)} for hidden {tuple(hidden.shape)}; pass the mask that "
            "came with these hidden states"
        )
    if hidden.dtype not in _HIDDEN_DTYPES:
        raise TypeError(
            f"hidden must be float16, bfloat16 or float32, got {hidden.dtype}; "
            "convert it, e.g. hidden.float()"
        )
    if attention_mask.dtype not in _MASK_DTYPES:
        raise TypeError(
            f"attention_mask must be bool or integer (0/1), got {attention_mask.dtype}; "
            "convert it, e.g. attention_mask.long()"
        )
    if attention_mask.device != hidden.device:
        raise ValueError(
            f"attention_mask is on {attention_mask.device} but hidden is on {hidden.device}; "
            "move both to one device"
        )
    _check_mode_and_flags(mode, normalize, quantize)
    if attention_mask.dtype != torch.bool and attention_mask.numel() > 0 and device_checks(attention_mask.device):
        if bool(((attention_mask != 0) & (attention_mask != 1)).any()):  # reads the mask on the host
            bad = attention_mask[(attention_mask != 0) & (attention_mask != 1)][0].item()
            raise ValueError(
                f"attention_mask must hold only 0 (padding) and 1 (real token), found {bad}; "
                "pass the tokenizer's attention_mask, or (mask != 0).long()"
            )


def _check_packed_inputs(hidden, cu_seqlens, mode, normalize, quantize) -> None:
    if not isinstance(hidden, torch.Tensor):
        raise TypeError(f"hidden must be a torch.Tensor [N, D], got {type(hidden).__name__}")
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(f"cu_seqlens must be a torch.Tensor [B + 1], got {type(cu_seqlens).__name__}")
    if hidden.ndim != 2:
        raise ValueError(
            f"packed hidden must be [N, D] (sequences back to back), got shape {tuple(hidden.shape)}; "
            "padded [B, T, D] states go to pool_normalize"
        )
    if cu_seqlens.ndim != 1 or cu_seqlens.shape[0] < 1:
        raise ValueError(f"cu_seqlens must be [B + 1] with B >= 0, got shape {tuple(cu_seqlens.shape)}")
    if hidden.dtype not in _HIDDEN_DTYPES:
        raise TypeError(f"hidden must be float16, bfloat16 or float32, got {hidden.dtype}; "
                        "convert it, e.g. hidden.float()")
    if cu_seqlens.dtype not in _CU_DTYPES:
        raise TypeError(f"cu_seqlens must be int32 or int64, got {cu_seqlens.dtype}")
    if cu_seqlens.device != hidden.device:
        raise ValueError(f"cu_seqlens is on {cu_seqlens.device} but hidden is on {hidden.device}; "
                         "move both to one device")
    _check_mode_and_flags(mode, normalize, quantize)
    if device_checks(cu_seqlens.device):  # reads cu_seqlens on the host
        steps = cu_seqlens.diff()
        if int(cu_seqlens[0]) != 0 or int(cu_seqlens[-1]) != hidden.shape[0] or bool((steps < 0).any()):
            raise ValueError(
                f"cu_seqlens must start at 0, never decrease and end at N = {hidden.shape[0]} (the rows of "
                f"hidden), got {cu_seqlens.tolist()[:8]}{' ...' if cu_seqlens.shape[0] > 8 else ''}"
            )


def _check_mode_and_flags(mode, normalize, quantize) -> None:
    if mode not in MODES:
        raise ValueError(
            f"mode must be one of {', '.join(repr(m) for m in MODES)}, got {mode!r}"
            + ("; sentence-transformers' 'lasttoken' is 'last' here" if mode == "lasttoken" else "")
        )
    for name, flag in (("normalize", normalize), ("quantize", quantize)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be True or False, got {flag!r} ({type(flag).__name__})")
