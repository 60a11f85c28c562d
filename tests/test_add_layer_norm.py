"""fastret/kernels/add_layer_norm.py: the fused residual add + LayerNorm kernel (in Triton's
interpreter here, on the GPU where there is one) against `add_layer_norm_ref`, and input errors."""

import pytest
import torch

from fastret.kernels.add_layer_norm import add_layer_norm, add_layer_norm_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# (atol, rtol) against the reference: float32 sums in both; half outputs differ by one rounding
TOLERANCES = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (2e-2, 2e-2)}


@pytest.fixture(autouse=True)
def _triton_interpreter_on_cpu(monkeypatch):
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")


def inputs(M, D, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, r = (torch.randn(M, D, generator=g) * 3 + 1 for _ in range(2))
    w, b = torch.randn(D, generator=g), torch.randn(D, generator=g)
    return [t.to(dtype).to(DEVICE) for t in (x, r, w, b)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(1, 8), (7, 100), (5, 384), (3, 768)], ids=str)
def test_matches_the_reference(shape, dtype):
    x, r, w, b = inputs(*shape, dtype)
    got = add_layer_norm(x, r, w, b, 1e-12)
    assert got.dtype == dtype and got.shape == shape and got.is_contiguous()
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(got.float(), add_layer_norm_ref(x, r, w, b, 1e-12).float(), atol=atol, rtol=rtol)


def test_strided_rows_and_a_large_eps():
    x, r, w, b = inputs(12, 64, torch.float32, seed=1)
    got = add_layer_norm(x[::2], r[1::2], w, b, 0.5)
    torch.testing.assert_close(got, add_layer_norm_ref(x[::2], r[1::2], w, b, 0.5), atol=1e-5, rtol=1e-5)
    assert add_layer_norm(x[:0], r[:0], w, b, 1e-5).shape == (0, 64)


@pytest.mark.parametrize("change, error, match", [
    (lambda x, r, w, b: (x, r[:, :4], w, b), ValueError, r"same \[M, D\]"),
    (lambda x, r, w, b: (x, r, w[:3], b), ValueError, r"weight and bias must be \[D\]"),
    (lambda x, r, w, b: (x, r.double(), w, b), ValueError, "one dtype"),
    (lambda x, r, w, b: (x.long(), r, w, b), TypeError, "float16, bfloat16 or float32"),
    (lambda x, r, w, b: (x.t(), r.t(), w[:1].expand(8), b[:1].expand(8)), ValueError, "contiguous rows"),
    (lambda x, r, w, b: (x.tolist(), r, w, b), TypeError, "x must be a torch.Tensor"),
])
def test_bad_inputs_are_explained(change, error, match):
    args = change(*inputs(8, 8, torch.float32))
    with pytest.raises(error, match=match):
        add_layer_norm(*args, 1e-5)


COMPILE_FOR_HOPPER = """
import json
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from fastret.kernels.add_layer_norm import _add_layer_norm_kernel

compiled = []
for dtype in ("*fp16", "*bf16", "*fp32"):
    signature = {"X": dtype, "R": dtype, "W": dtype, "B": dtype, "Y": dtype, "D": "i32", "stride_x": "i32",
                 "stride_r": "i32", "eps": "fp32", "BLOCK_D": "constexpr"}
    source = ASTSource(fn=_add_layer_norm_kernel, signature=signature, constexprs={"BLOCK_D": 1024})
    kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    compiled.append(len(kernel.asm["cubin"]) > 0)
print(json.dumps(compiled))
"""


def test_kernel_compiles_for_hopper():
    """What the interpreter cannot show: the kernel gets through Triton's compiler to sm_90 code,
    for each input dtype, without a GPU (a fresh process without TRITON_INTERPRET)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("triton.backends.nvidia", reason="triton without its NVIDIA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", COMPILE_FOR_HOPPER], cwd=Path(__file__).resolve().parents[1],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [True] * 3
