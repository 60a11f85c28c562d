"""int8 linear layers for CPU inference, on the C++ core's exact int8 GEMM.

    weights, per output channel, once at load:   w_j ~= wq_j * sw_j,  sw_j = max|w_j| / 63,
                                                  wq_j = clip(rint(w_j / sw_j), -63, 63)   (`quantize_weights`)
    activations, per token, on every call:        x_m ~= xq_m * sx_m   (`quantize_int8`'s rule, in C++:
                                                  sx_m = max|x_m| / 127, codes in [-127, 127])
    y[m, j] = (float32(<xq_m, wq_j>) * sx_m) * sw_j + bias_j               (int32 accumulation, exact)

Weights take 7 bits (63 levels a side) so that AVX2's fast kernel, which multiplies unsigned
activation bytes (xq + 128 <= 255) by signed weights in int16 pairs, can never saturate
(2 * 255 * 63 < 32768): without it AVX2 needs the slower sign trick. On all-MiniLM-L6-v2 this
costs little: mean cosine to float32 0.9966 against 0.9979 with 8-bit weights (activations stay
8-bit, which matters more: 7-bit activations give 0.9956). Every SIMD path computes
<xq_m, wq_j> exactly, so embeddings do not depend on the machine. The weights are
packed once into the core's layout, which every SIMD path reads (switching paths keeps them valid);
the core uses the search's SIMD path and thread count (`fastret.set_simd_path`,
`fastret.set_num_threads`). Only `nn.Linear` layers are replaced: attention (the softmax and its two
products), layer norms, embeddings and pooling stay in float.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from .. import _core
from ..checks import to_numpy
from ..kernels.pooling import quantize_rows_ref
from ..quant import quantize_int8

WEIGHT_MAX_CODE = 63


def quantize_weights(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per output channel 7-bit quantization of a linear layer's weight (see the module docstring).

    Args:
        weight: float [n, k], finite.

    Returns:
        (codes int8 [n, k] in [-63, 63], scales float32 [n]); a zero row gets scale 0 and codes 0.
    """
    w = weight.detach().cpu().float()
    if not torch.isfinite(w).all():
        raise ValueError("the weight holds NaN or inf; int8 quantization needs finite values")
    codes, scales = quantize_rows_ref(w, WEIGHT_MAX_CODE)
    return codes, scales.contiguous()


def pack_weights(codes: Any) -> np.ndarray:
    """Pack int8 weight codes once for `gemm_int8` and `Int8Linear`.

    Args:
        codes: int8 [n, k] (numpy or CPU tensor), one row per output channel, in [-127, 127].

    Returns:
        uint8 [bytes]: the packed weights (a header with n, k and the largest |code|, panels of 16
        channels, column sums). Codes within [-63, 63] (`quantize_weights`) take AVX2's fast kernel.

    Raises:
        TypeError: not int8.
        ValueError: not 2-D, empty, k > 65536, or a code of -128.
    """
    array = _int8_matrix(codes, "weight codes")
    return _core.pack_int8_weights(array)


def gemm_int8(a: Any, packed: np.ndarray) -> np.ndarray:
    """Exact int32 [m, n] = a @ w.T for activation codes a and packed weight codes w.

    Args:
        a: int8 [m, k] in [-127, 127] (numpy or CPU tensor).
        packed: `pack_weights(w)` of int8 w [n, k] (the buffer records n and k).

    Returns:
        int32 [m, n] numpy array.

    Raises:
        TypeError: `a` is not int8.
        ValueError: `a` not [m, k], m == 0, a code of -128, or `packed` not from `pack_weights`.
    """
    return _core.gemm_int8(_int8_matrix(a, "activation codes"), packed)


def gemm_int8_ref(a: Any, w: Any) -> np.ndarray:
    """Plain numpy reference for `gemm_int8`: int32 [m, n] = a @ w.T (int64 accumulation)."""
    a, w = _int8_matrix(a, "activation codes"), _int8_matrix(w, "weight codes")
    return (a.astype(np.int64) @ w.astype(np.int64).T).astype(np.int32)


def linear_int8_ref(x: torch.Tensor, weight_codes: torch.Tensor, weight_scales: torch.Tensor,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
    """Fake-quantized float reference for `Int8Linear`: quantize x per token, dequantize both sides,
    multiply in float64.

    Args:
        x: float [..., k]; weight_codes int8 [n, k]; weight_scales float32 [n]; bias float [n] or None.

    Returns:
        float32 [..., n].
    """
    codes, scales = quantize_int8(x.detach().reshape(-1, x.shape[-1]))
    x_hat = codes.double() * scales.double()[:, None]
    w_hat = weight_codes.double() * weight_scales.detach().double()[:, None]
    y = x_hat @ w_hat.T
    if bias is not None:
        y = y + bias.detach().double()
    return y.float().reshape(*x.shape[:-1], weight_codes.shape[0])


class Int8Linear(nn.Module):
    """A CPU, inference-only stand-in for `nn.Linear` with int8 weights and activations.

    Args:
        weight_codes: int8 [out_features, in_features] in [-127, 127] (`quantize_weights` makes
            [-63, 63], which AVX2 runs faster).
        weight_scales: float32 [out_features], one per output channel.
        bias: float [out_features] or None.
        gelu: apply GELU (the erf form, torch's default) to the outputs in the same C++ pass, for
            a linear layer followed by one (`quantize_linear_layers` fuses them).

    Raises:
        TypeError, ValueError: codes or scales of the wrong dtype or shape.
    """

    def __init__(self, weight_codes: torch.Tensor, weight_scales: torch.Tensor, bias: torch.Tensor | None = None,
                 gelu: bool = False):
        super().__init__()
        self.gelu = bool(gelu)
        if weight_scales.dtype != torch.float32 or weight_scales.shape != weight_codes.shape[:1]:
            raise ValueError(f"weight_scales must be float32 [{weight_codes.shape[0]}], got "
                             f"{weight_scales.dtype} {list(weight_scales.shape)}")
        if bias is not None and bias.shape != weight_codes.shape[:1]:
            raise ValueError(f"bias must have shape [{weight_codes.shape[0]}], got {list(bias.shape)}")
        self.out_features, self.in_features = (int(d) for d in weight_codes.shape)
        self.register_buffer("packed", torch.from_numpy(pack_weights(weight_codes)))
        self.register_buffer("weight_scales", weight_scales.detach().cpu().contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().cpu().float().contiguous())

    @classmethod
    def from_linear(cls, linear: nn.Linear, gelu: bool = False) -> "Int8Linear":
        """Quantize a float `nn.Linear` (per output channel, `quantize_weights`) and pack its weights;
        `gelu`: fuse the GELU that follows it."""
        codes, scales = quantize_weights(linear.weight)
        return cls(codes, scales, linear.bias, gelu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """float32 [..., in_features] -> float32 [..., out_features] (see the module docstring).

        Raises:
            ValueError: x not on the CPU, of the wrong width, or holding NaN/inf; a call that needs
                gradients.
            TypeError: x not float32.
        """
        if x.device.type != "cpu":
            raise ValueError(f"Int8Linear runs on the CPU; got input on {x.device}")
        if x.dtype != torch.float32:
            raise TypeError(f"Int8Linear takes float32 input, got {x.dtype}; keep the model in float32")
        if x.shape[-1:] != (self.in_features,):
            raise ValueError(f"Int8Linear expects input [..., {self.in_features}], got {list(x.shape)}")
        if torch.is_grad_enabled() and x.requires_grad:
            raise ValueError("Int8Linear is for inference only (no gradients); run under torch.inference_mode()")
        rows = x.reshape(-1, self.in_features).contiguous()
        if rows.shape[0] == 0:
            return x.new_empty(*x.shape[:-1], self.out_features)
        bias = None if self.bias is None else self.bias.numpy()
        out = _core.linear_int8(rows.numpy(), self.packed.numpy(), self.weight_scales.numpy(), bias, self.gelu)
        return torch.from_numpy(out).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
                + (", gelu=True" if self.gelu else ""))


def quantize_linear_layers(model: nn.Module) -> list[str]:
    """Replace every `nn.Linear` of `model` (in place) with an `Int8Linear`.

    A linear layer whose output goes straight into an exact GELU is fused with it (the GELU runs in
    the same C++ pass, and the activation module becomes `nn.Identity`): Hugging Face's BERT-family
    `*Intermediate` layers (`dense`, then `intermediate_act_fn`) and GPT-NeoX's MLP
    (`dense_h_to_4h`, then `act`).

    Args:
        model: a float32 CPU module (e.g. a Hugging Face BERT or GPT-NeoX encoder).

    Returns:
        the names of the replaced layers.

    Raises:
        ValueError: a Linear layer that is not float32 on the CPU.
    """
    replaced = []
    for name, module in list(model.named_modules()):
        fused = _fusable_gelu(module)
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                if child.weight.device.type != "cpu" or child.weight.dtype != torch.float32:
                    raise ValueError(f"int8 layers replace float32 CPU Linear layers; {name}.{child_name} is "
                                     f"{child.weight.dtype} on {child.weight.device}")
                gelu = fused is not None and fused[0] == child_name
                setattr(module, child_name, Int8Linear.from_linear(child, gelu=gelu))
                if gelu:
                    setattr(module, fused[1], nn.Identity())
                replaced.append(f"{name}.{child_name}" if name else child_name)
    return replaced


def _fusable_gelu(module: nn.Module) -> tuple[str, str] | None:
    """(linear child, activation child) when `module`'s forward is activation(linear(x)) and the
    activation is the exact (erf) GELU; else None."""
    kind = type(module).__name__
    if kind.endswith("Intermediate"):  # BertIntermediate and its copies: act(dense(x))
        pair = ("dense", "intermediate_act_fn")
    elif kind == "GPTNeoXMLP":  # dense_4h_to_h(act(dense_h_to_4h(x)))
        pair = ("dense_h_to_4h", "act")
    else:
        return None
    linear, activation = (getattr(module, attribute, None) for attribute in pair)
    if not isinstance(linear, nn.Linear) or not _is_exact_gelu(activation):
        return None
    return pair


def _is_exact_gelu(module: Any) -> bool:
    """torch's nn.GELU() or transformers' GELUActivation (ACT2FN["gelu"]), both the erf form."""
    if isinstance(module, nn.GELU):
        return module.approximate == "none"
    return type(module).__name__ == "GELUActivation" and getattr(module, "act", None) is nn.functional.gelu


def _int8_matrix(x: Any, name: str) -> np.ndarray:
    array = to_numpy(x, name)
    if array.dtype != np.int8:
        raise TypeError(f"{name} must be int8, got {array.dtype}; quantize with fastret.quantize_int8")
    if array.ndim != 2 or 0 in array.shape:
        raise ValueError(f"{name} must be a non-empty 2-D [rows, k] array, got shape {tuple(array.shape)}")
    return np.ascontiguousarray(array)
