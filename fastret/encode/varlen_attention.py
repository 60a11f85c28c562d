"""Attention over packed sequences (`fastret.encode.batches.PackedBatch`): every text attends to its
own tokens only, with no padding in the inputs or the output.

    q [N, Hq, Dh], k and v [N, Hkv, Dh] (Hq a multiple of Hkv: grouped-query attention),
    text b = rows cu_seqlens[b] .. cu_seqlens[b + 1] - 1:
    out[i] = softmax(scale * q[i] k[j]^T over j in i's text (j <= i when causal)) v[j]     -> [N, Hq, Dh]

Backends (`ATTENTION_BACKENDS`), one call each, none reading device values on the host:
    "flash_attn"  FlashAttention's flash_attn_varlen_func (the flash-attn package; CUDA, fp16/bf16)
    "varlen"      torch.nn.attention.varlen.varlen_attn (PyTorch's FlashAttention kernels; CUDA,
                  fp16/bf16)
    "nested"      torch SDPA over nested (jagged) tensors built on cu_seqlens (not causal)
    "padded"      scatter into [B, max_seqlen] for torch SDPA with a key mask, gather back: padding
                  in attention only, the linear layers around it stay unpadded (any device)
On CUDA `pick_backend` chooses the first that fits the dtype and causality, in that order; on the
CPU, "padded" (the reference of the others; "nested" runs there too when asked for).
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

from .batches import PackedBatch

ATTENTION_BACKENDS = ("flash_attn", "varlen", "nested", "padded")


def can_run(backend: str, device: torch.device, dtype: torch.dtype, causal: bool) -> bool:
    """Whether `backend` runs q/k/v of `dtype` on `device` (causal or not) in this process."""
    on_gpu_in_half = device.type == "cuda" and dtype in (torch.float16, torch.bfloat16)
    if backend == "flash_attn":
        return on_gpu_in_half and importlib.util.find_spec("flash_attn") is not None
    if backend == "varlen":
        return on_gpu_in_half and _torch_varlen() is not None
    if backend == "nested":
        return not causal  # torch's nested-tensor SDPA has no causal mask
    return backend == "padded"


def auto_backends(device: torch.device, dtype: torch.dtype, causal: bool) -> list[str]:
    """What "auto" tries, best first: on CUDA every backend of `ATTENTION_BACKENDS` that can run
    here, in that order; elsewhere "padded"."""
    if device.type != "cuda":
        return ["padded"]
    return [name for name in ATTENTION_BACKENDS if can_run(name, device, dtype, causal)]


def pick_backend(requested: str, device: torch.device, dtype: torch.dtype, causal: bool) -> str:
    """The backend to run: `requested` if it can run here, the first of `auto_backends` for "auto".

    Raises:
        ValueError: an unknown name, or a backend that cannot run on this device/dtype/causality.
    """
    if requested == "auto":
        return auto_backends(device, dtype, causal)[0]
    if requested not in ATTENTION_BACKENDS:
        raise ValueError(f"attention must be 'auto' or one of {', '.join(ATTENTION_BACKENDS)}, got {requested!r}")
    if not can_run(requested, device, dtype, causal):
        usable = [name for name in ATTENTION_BACKENDS if can_run(name, device, dtype, causal)]
        raise ValueError(f"attention {requested!r} cannot run on {device} with {dtype}{' (causal)' if causal else ''}"
                         f"; usable here: {', '.join(usable)}")
    return requested


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: PackedBatch, causal: bool,
                     scale: float, backend: str) -> torch.Tensor:
    """Attention of packed sequences (see the module docstring): q [N, Hq, Dh], k, v [N, Hkv, Dh]
    on the batch's device -> [N, Hq, Dh]. `backend` is one of `ATTENTION_BACKENDS` (see
    `pick_backend`)."""
    if backend == "flash_attn":
        from flash_attn import flash_attn_varlen_func

        n = batch.max_seqlen
        return flash_attn_varlen_func(q, k, v, batch.cu_seqlens, batch.cu_seqlens, n, n, softmax_scale=scale,
                                      causal=causal)
    if backend == "varlen":
        n = batch.max_seqlen
        return _torch_varlen()(q, k, v, batch.cu_seqlens, batch.cu_seqlens, n, n, scale=scale,
                               window_size=(-1, 0) if causal else (-1, -1), enable_gqa=q.shape[1] != k.shape[1])
    if backend == "nested":
        if causal:
            raise ValueError("the nested backend has no causal mask; use flash_attn, varlen or padded")
        return _nested(q, k, v, batch, scale)
    if backend == "padded":
        return _padded(q, k, v, batch, causal, scale)
    raise ValueError(f"unknown attention backend {backend!r}; expected one of {', '.join(ATTENTION_BACKENDS)}")


def _torch_varlen():
    """torch.nn.attention.varlen.varlen_attn where this torch has it (2.9 and later), else None."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def _nested(q, k, v, batch: PackedBatch, scale: float) -> torch.Tensor:
    """SDPA over jagged nested tensors: [B, j, H, Dh] views of the packed rows (not causal)."""
    offsets = batch.cu_seqlens.long()
    if k.shape[1] != q.shape[1]:  # nested SDPA does not broadcast grouped heads
        k, v = (x.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for x in (k, v))

    def jagged(x):  # [N, H, Dh] -> nested [B, H, j, Dh]
        nested = torch.nested.nested_tensor_from_jagged(x.contiguous(), offsets, min_seqlen=batch.min_seqlen,
                                                        max_seqlen=batch.max_seqlen)  # both given: no device read
        return nested.transpose(1, 2)

    out = F.scaled_dot_product_attention(jagged(q), jagged(k), jagged(v), scale=scale)
    return out.transpose(1, 2).values()  # [N, Hq, Dh]


def first_token_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: PackedBatch,
                          scale: float) -> torch.Tensor:
    """Attention of each text's first token over all of its tokens (not causal): q [B, Hq, Dh]
    (the first tokens' queries), k, v [N, Hkv, Dh] packed -> [B, Hq, Dh]; what the last layer of
    an encoder needs when only each text's first token is read (CLS pooling, a cross-encoder's
    pooler). Keys and values padded to [B, Hkv, max_seqlen, Dh] and masked: any device, no host read."""
    out = F.scaled_dot_product_attention(q[:, :, None, :], _padded_rows(k, batch), _padded_rows(v, batch),
                                         attn_mask=_key_mask(batch)[:, None, None, :], scale=scale,
                                         enable_gqa=q.shape[1] != k.shape[1])  # [B, Hq, 1, Dh]
    return out[:, :, 0, :]


def _padded_rows(x: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
    """Packed rows x [N, H, Dh] as [B, H, max_seqlen, Dh], zeros past each text's end."""
    B, L = batch.num_texts, batch.max_seqlen
    out = x.new_zeros((B * L, *x.shape[1:]))
    out.index_copy_(0, batch.padded_index, x)
    return out.view(B, L, *x.shape[1:]).transpose(1, 2)


def _key_mask(batch: PackedBatch) -> torch.Tensor:
    """bool [B, max_seqlen]: True at each text's real tokens."""
    keys = torch.arange(batch.max_seqlen, device=batch.lengths.device)  # [L]
    return keys[None, :] < batch.lengths[:, None]


def _padded(q, k, v, batch: PackedBatch, causal: bool, scale: float) -> torch.Tensor:
    """SDPA on [B, H, max_seqlen, Dh] copies of the packed rows, keys masked past each text's end."""
    B, L = batch.num_texts, batch.max_seqlen
    mask = _key_mask(batch)[:, None, None, :]  # [B, 1, 1, L]: real keys
    if causal:
        keys = torch.arange(L, device=q.device)  # [L]
        mask = mask & (keys[None, :] <= keys[:, None])  # [B, 1, L, L]: and not after the query
    out = F.scaled_dot_product_attention(_padded_rows(q, batch), _padded_rows(k, batch), _padded_rows(v, batch),
                                         attn_mask=mask, scale=scale,
                                         enable_gqa=q.shape[1] != k.shape[1])  # [B, Hq, L, Dh]
    return out.transpose(1, 2).reshape(B * L, out.shape[1], out.shape[3]).index_select(0, batch.padded_index)
