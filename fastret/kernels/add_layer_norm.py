"""Residual add + LayerNorm in one pass (the post-norm step of BERT-family layers).

For rows m of x, r [M, D] and the norm's weight w, bias b [D]:

    s_m = round_to_dtype(x_m + r_m)             (the sum as torch's add in x's dtype gives it)
    mu_m = mean_i s_mi      var_m = mean_i (s_mi - mu_m)^2
    y_mi = (s_mi - mu_m) / sqrt(var_m + eps) * w_i + b_i          (float32 inside, y in x's dtype)

Unfused, torch reads x and r, writes s, reads s and writes y (five passes over [M, D]); here one
kernel reads x and r and writes y (three). Shapes: x, r [M, D] float16/bfloat16/float32 with
contiguous rows (any row stride), w and b [D]; y [M, D] contiguous, x's dtype.

Dispatch: a CUDA tensor runs the Triton kernel; a CPU tensor runs `add_layer_norm_ref`, or the
kernel in Triton's interpreter when TRITON_INTERPRET=1. Inference only (no backward).
"""

import contextlib

import torch
import torch.nn.functional as F

from ._triton import require_triton, tl, triton, use_triton

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MAX_D = 16384  # one program holds a row in registers


def add_layer_norm_ref(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                       eps: float) -> torch.Tensor:
    """`torch.nn.functional.layer_norm(x + residual, (D,), weight, bias, eps)`: the reference.

    Raises:
        TypeError / ValueError: see `add_layer_norm`.
    """
    _check_inputs(x, residual, weight, bias, eps)
    return F.layer_norm(x + residual, (x.shape[-1],), weight, bias, eps)


@triton.jit
def _add_layer_norm_kernel(
    X,  # [M, D] input, row stride stride_x, contiguous columns
    R,  # [M, D] residual, row stride stride_r
    W,  # [D] norm weight
    B,  # [D] norm bias
    Y,  # [M, D] out, contiguous, X's dtype
    D,
    stride_x,
    stride_r,
    eps,
    BLOCK_D: tl.constexpr,  # >= D: the whole row in one tile
):
    # grid (M,): program m normalizes row m, one read of x and r, one write of y
    m = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_D)  # [BLOCK_D]
    ok = offs < D
    x = tl.load(X + m * stride_x + offs, mask=ok, other=0.0)
    r = tl.load(R + m * stride_r + offs, mask=ok, other=0.0)
    s = (x.to(tl.float32) + r.to(tl.float32)).to(X.dtype.element_ty).to(tl.float32)  # torch's add, rounded
    mean = tl.sum(s, axis=0) / D
    centred = tl.where(ok, s - mean, 0.0)
    rstd = 1.0 / tl.sqrt_rn(tl.sum(centred * centred, axis=0) / D + eps)
    w = tl.load(W + offs, mask=ok, other=0.0).to(tl.float32)
    b = tl.load(B + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(Y + m * D + offs, (centred * rstd * w + b).to(Y.dtype.element_ty), mask=ok)


def add_layer_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                   eps: float) -> torch.Tensor:
    """LayerNorm(x + residual) with the norm's weight and bias, fused (see the module docstring).

    Args:
        x, residual: [M, D] float16/bfloat16/float32, same dtype and device, contiguous rows.
        weight, bias: [D], on the same device.
        eps: the norm's epsilon (e.g. `nn.LayerNorm.eps`).

    Returns:
        [M, D] in x's dtype, equal to `add_layer_norm_ref` to float rounding.

    Raises:
        TypeError: not tensors, or an unsupported dtype; eps not a number.
        ValueError: mismatched shapes, dtypes or devices, non-contiguous rows.
        RuntimeError: D above 16384, or a CUDA tensor (or TRITON_INTERPRET=1) without triton.
    """
    if not isinstance(x, torch.Tensor) or x.numel() == 0 or not use_triton(x.device):
        return add_layer_norm_ref(x, residual, weight, bias, eps)
    _check_inputs(x, residual, weight, bias, eps)
    require_triton("add_layer_norm", x.device, _add_layer_norm_kernel)
    M, D = x.shape
    if D > _MAX_D:
        raise RuntimeError(f"add_layer_norm holds a row in one program: D up to {_MAX_D}, got D={D}")
    y = torch.empty((M, D), dtype=x.dtype, device=x.device)
    block = triton.next_power_of_2(D)
    with torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext():
        _add_layer_norm_kernel[(M,)](x, residual, weight, bias, y, D, x.stride(0), residual.stride(0), float(eps),
                                     BLOCK_D=block, num_warps=min(max(block // 256, 1), 8))
    return y


def _check_inputs(x, residual, weight, bias, eps) -> None:
    for name, t in (("x", x), ("residual", residual), ("weight", weight), ("bias", bias)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if x.dtype not in _DTYPES:
        raise TypeError(f"x must be float16, bfloat16 or float32, got {x.dtype}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"eps must be a number, got {eps!r}")
    if x.ndim != 2 or residual.shape != x.shape:
        raise ValueError(f"x and residual must be the same [M, D], got {tuple(x.shape)} and {tuple(residual.shape)}")
    if weight.shape != (x.shape[1],) or bias.shape != (x.shape[1],):
        raise ValueError(f"weight and bias must be [D] = [{x.shape[1]}], got {tuple(weight.shape)} and "
                         f"{tuple(bias.shape)}")
    if residual.dtype != x.dtype:
        raise ValueError(f"x and residual must have one dtype, got {x.dtype} and {residual.dtype}")
    if any(t.device != x.device for t in (residual, weight, bias)):
        raise ValueError("x, residual, weight and bias must be on one device")
    if x.shape[1] > 1 and (x.stride(1) != 1 or residual.stride(1) != 1):
        raise ValueError("x and residual need contiguous rows (column stride 1); pass .contiguous()")
