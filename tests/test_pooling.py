"""fastret/kernels/pooling.py: the Triton kernels (in Triton's interpreter here, on the GPU in CI
with one) against `pool_normalize_ref`, the reference against sentence-transformers, the int8
outputs against `fastret.quantize_int8`, gradients against autograd through the reference,
dispatch, and input errors."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import fastret
from fastret.kernels import pooling
from fastret.kernels.pooling import pool_normalize, pool_normalize_packed, pool_normalize_ref

REPO = Path(__file__).resolve().parents[1]
MODES = ("mean", "cls", "last")
SIDES = ("left", "right")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# (atol, rtol) of the float32 output against the reference, per input dtype (Liger-Kernel style).
# Both sides widen the same input values to float32 and accumulate in float32, so they differ by
# summation order only, and the half-precision rows are as tight as float32's: a kernel that
# accumulated in fp16/bf16 (errors ~1e-3) fails them.
TOLERANCES = {
    torch.float32: (2e-6, 1e-5),
    torch.float16: (2e-6, 1e-5),
    torch.bfloat16: (2e-6, 1e-5),
}


@pytest.fixture(autouse=True)
def _triton_interpreter_on_cpu(monkeypatch):
    """Every test here runs the kernels: on CPU through Triton's interpreter."""
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")


def device():
    return "cuda" if torch.cuda.is_available() else "cpu"


def make_mask(lengths, T, side, dtype=torch.int64):
    """[B, T] 0/1 mask with lengths[b] real tokens at the right or left end of row b."""
    mask = torch.zeros(len(lengths), T, dtype=dtype)
    for b, n in enumerate(lengths):
        if n:
            if side == "right":  # right padding: tokens first
                mask[b, :n] = 1
            else:
                mask[b, T - n :] = 1
    return mask.to(device())


def make_hidden(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(dtype).to(device())


def lengths_for(B, T, seed=0):
    """Row lengths covering a full row, an all-padding row (B >= 2), and partial rows."""
    g = torch.Generator().manual_seed(seed + 1)
    fixed = [T, 0][:B]
    return fixed + torch.randint(1, T + 1, (max(B - 2, 0),), generator=g).tolist()


def assert_close(actual, expected, dtype):
    atol, rtol = TOLERANCES[dtype]
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)


# ------------------------------------------------------------------------------- forward vs ref


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(1, 1, 8), (3, 17, 97), (4, 7, 384)], ids=str)
def test_forward_matches_reference(shape, mode, side, dtype, normalize):
    B, T, D = shape
    hidden = make_hidden(shape, dtype)
    mask = make_mask(lengths_for(B, T), T, side)
    out = pool_normalize(hidden, mask, mode=mode, normalize=normalize)
    assert out.dtype == torch.float32 and out.shape == (B, D)
    assert_close(out, pool_normalize_ref(hidden, mask, mode, normalize), dtype)
    if B >= 2:  # row 1 has no real token
        assert torch.equal(out[1], torch.zeros(D, device=out.device))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("side", SIDES)
def test_forward_large_d_matches_reference(mode, side):
    hidden = make_hidden((2, 33, 1000), torch.bfloat16, seed=3)
    mask = make_mask([33, 12], 33, side)
    out = pool_normalize(hidden, mask, mode=mode)
    assert_close(out, pool_normalize_ref(hidden, mask, mode), torch.bfloat16)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2, device=out.device))


def test_rows_differ_by_mode_and_side():
    # guards the tests above against a kernel that ignores mode or padding side
    hidden = make_hidden((2, 9, 16), torch.float32)
    right, left = make_mask([5, 3], 9, "right"), make_mask([5, 3], 9, "left")
    outs = [pool_normalize(hidden, m, mode=mode) for m in (right, left) for mode in MODES]
    for i in range(len(outs)):
        for j in range(i + 1, len(outs)):
            assert not torch.allclose(outs[i], outs[j])


def test_cls_and_last_pick_the_first_and_last_real_token():
    hidden = make_hidden((2, 6, 8), torch.float32)
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0]], device=device())
    cls = pool_normalize(hidden, mask, mode="cls", normalize=False)
    last = pool_normalize(hidden, mask, mode="last", normalize=False)
    assert torch.equal(cls, torch.stack([hidden[0, 2], hidden[1, 0]]).float())
    assert torch.equal(last, torch.stack([hidden[0, 4], hidden[1, 1]]).float())


def test_mean_with_holes_in_the_mask_and_garbage_in_padding():
    # packed / non-contiguous masks: only positions with mask 1 count, wherever they are; NaN and
    # inf in padding never leak into the result
    hidden = make_hidden((2, 10, 24), torch.float16)
    mask = torch.tensor([[0, 1, 0, 1, 1, 0, 0, 1, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0, 0, 1]], device=device())
    hidden[mask == 0] = float("nan")
    hidden[0, 0] = float("inf")
    for mode in MODES:
        out = pool_normalize(hidden, mask, mode=mode, normalize=False)
        assert torch.isfinite(out).all()
        assert_close(out, pool_normalize_ref(hidden, mask, mode, normalize=False), torch.float16)
    expected = hidden[0, [1, 3, 4, 7]].float().mean(dim=0)
    torch.testing.assert_close(pool_normalize(hidden, mask, normalize=False)[0], expected)


def test_all_padding_rows_give_zeros_in_every_mode():
    hidden = make_hidden((3, 5, 16), torch.float32)
    mask = torch.zeros(3, 5, dtype=torch.int64, device=device())
    mask[1, 2] = 1
    for mode in MODES:
        for normalize in (True, False):
            out, codes, scales = pool_normalize(hidden, mask, mode=mode, normalize=normalize, quantize=True)
            for b in (0, 2):
                assert torch.equal(out[b], torch.zeros(16, device=out.device))
                assert torch.equal(codes[b], torch.zeros(16, dtype=torch.int8, device=out.device))
                assert scales[b].item() == 0.0
            assert out[1].abs().sum() > 0 and scales[1] > 0


def test_bool_mask_and_strided_inputs():
    base = make_hidden((3, 24, 40), torch.float32)
    hidden = base.transpose(1, 2)[:, ::2, :]  # [3, 20, 24] with strides (960, 2, 40)
    mask = make_mask([20, 7, 0], 20, "left").t().contiguous().t()  # column-major [3, 20]
    for mode in MODES:
        expected = pool_normalize_ref(hidden.contiguous(), mask.contiguous(), mode)
        assert_close(pool_normalize(hidden, mask, mode=mode), expected, torch.float32)
        assert_close(pool_normalize(hidden, mask.bool(), mode=mode), expected, torch.float32)
        assert_close(pool_normalize(hidden, mask.int(), mode=mode), expected, torch.float32)


@pytest.mark.parametrize("shape", [(0, 4, 8), (2, 0, 8), (2, 3, 0)], ids=str)
def test_empty_inputs(shape):
    hidden = make_hidden(shape, torch.float32)
    mask = torch.ones(shape[:2], dtype=torch.int64, device=device())
    for mode in MODES:
        out, codes, scales = pool_normalize(hidden, mask, mode=mode, quantize=True)
        assert out.shape == codes.shape == (shape[0], shape[2]) and scales.shape == (shape[0],)
        assert not out.any() and not codes.any() and not scales.any()


def test_reference_matches_sentence_transformers():
    st_modules = pytest.importorskip("sentence_transformers.models")
    hidden = make_hidden((3, 11, 32), torch.float32).cpu()
    for side in SIDES:
        mask = make_mask([11, 4, 7], 11, side).cpu()
        for mode, st_mode in (("mean", "mean"), ("cls", "cls"), ("last", "lasttoken")):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                st_pooling = st_modules.Pooling(32, st_mode)
            features = {"token_embeddings": hidden, "attention_mask": mask}
            expected = st_pooling(features)["sentence_embedding"]
            torch.testing.assert_close(pool_normalize_ref(hidden, mask, mode, normalize=False), expected)


# -------------------------------------------------------------------------------------- int8 out


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "shape, dtype",  # D=1000 for one dtype only: the interpreter is slow
    [((3, 17, 97), dtype) for dtype in DTYPES] + [((2, 33, 1000), torch.float16)],
    ids=str,
)
def test_int8_outputs_equal_quantize_int8_of_the_float_output(shape, dtype, mode, normalize):
    B, T, D = shape
    hidden = make_hidden(shape, dtype, seed=5) * 3
    mask = make_mask(lengths_for(B, T, seed=5), T, "left")
    out, codes, scales = pool_normalize(hidden, mask, mode=mode, normalize=normalize, quantize=True)
    assert codes.dtype == torch.int8 and scales.dtype == torch.float32 and scales.shape == (B,)
    expected_codes, expected_scales = fastret.quantize_int8(out)
    assert torch.equal(codes, expected_codes)
    assert torch.equal(scales, expected_scales)
    assert torch.equal(out, pool_normalize(hidden, mask, mode=mode, normalize=normalize))
    assert_close(out, pool_normalize_ref(hidden, mask, mode, normalize), dtype)


def test_int8_rounds_half_to_even_like_quantize_int8():
    # scale = 127 / 127 = 1, so the codes are rint of the values themselves: ties and near-ties
    values = [127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -126.5, 63.5, 0.49999997, -0.49999997,
              1.4999999, 2.5000002, -3.4999998, 0.0, -0.0, 1e-30, 100.3, -99.7]  # fmt: skip
    hidden = torch.tensor(values, device=device())[None, None, :]
    mask = torch.ones(1, 1, dtype=torch.int64, device=device())
    out, codes, scales = pool_normalize(hidden, mask, mode="cls", normalize=False, quantize=True)
    assert scales.item() == 1.0
    assert codes[0].tolist() == np.rint(np.array(values, np.float32)).astype(np.int8).tolist()
    assert torch.equal(codes, fastret.quantize_int8(out)[0])


def test_quantize_rejects_nan_at_real_tokens_on_every_path(monkeypatch):
    hidden = make_hidden((2, 4, 8), torch.float32)
    hidden[1, 1, 3] = float("nan")
    mask = torch.ones(2, 4, dtype=torch.int64, device=device())
    if torch.cuda.is_available():  # unchecked on a GPU (no host sync): the row's scale says NaN
        monkeypatch.delenv("FASTRET_DEVICE_CHECKS", raising=False)
        scales = pool_normalize(hidden, mask, quantize=True)[2].cpu()
        assert scales[0].isfinite() and scales[1].isnan()
        monkeypatch.setenv("FASTRET_DEVICE_CHECKS", "1")
    with pytest.raises(ValueError, match="NaN or inf"):
        pool_normalize(hidden, mask, quantize=True)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="NaN or inf"):
        pool_normalize(hidden.cpu(), mask.cpu(), quantize=True)


# -------------------------------------------------------------------------------------- backward


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(3, 13, 40), (2, 5, 8)], ids=str)
def test_backward_matches_autograd_through_reference(shape, mode, normalize):
    B, T, D = shape
    hidden = make_hidden(shape, torch.float32, seed=7).requires_grad_()
    mask = make_mask(lengths_for(B, T, seed=7), T, "left")
    mask[0, T // 2] = 0  # a hole inside a row
    upstream = make_hidden((B, D), torch.float32, seed=8)
    for reduce in (lambda y: (y * upstream).sum(), lambda y: y.sum()):  # dense and expanded dy
        out = pool_normalize(hidden, mask, mode=mode, normalize=normalize)
        (grad,) = torch.autograd.grad(reduce(out), hidden)
        (expected,) = torch.autograd.grad(reduce(pool_normalize_ref(hidden, mask, mode, normalize)), hidden)
        torch.testing.assert_close(grad, expected, atol=1e-6, rtol=1e-5)
        assert expected.abs().sum() > 0
        assert not grad[mask == 0].any()  # padding gets no gradient


def test_backward_keeps_the_input_dtype_and_ignores_int8_outputs():
    hidden = make_hidden((2, 6, 16), torch.bfloat16, seed=9).requires_grad_()
    mask = make_mask([6, 2], 6, "right")
    out, codes, scales = pool_normalize(hidden, mask, mode="mean", quantize=True)
    assert out.requires_grad and not codes.requires_grad and not scales.requires_grad
    (grad,) = torch.autograd.grad(out[:, :5].sum(), hidden)
    (expected,) = torch.autograd.grad(pool_normalize_ref(hidden, mask, "mean")[:, :5].sum(), hidden)
    assert grad.dtype == torch.bfloat16
    torch.testing.assert_close(grad, expected)


# -------------------------------------------------------------------------------------- dispatch


def test_cpu_without_interpreter_uses_the_reference(monkeypatch):
    hidden = make_hidden((3, 9, 20), torch.float16).cpu()
    mask = make_mask([9, 0, 4], 9, "left").cpu()
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)

    def no_kernel(*args):
        raise AssertionError("the Triton path ran for a CPU tensor without TRITON_INTERPRET=1")

    monkeypatch.setattr(pooling._PoolNormalize, "apply", no_kernel)
    for mode in MODES:
        out, codes, scales = pool_normalize(hidden, mask, mode=mode, quantize=True)
        expected = pool_normalize_ref(hidden, mask, mode)
        assert torch.equal(out, expected)
        expected_codes, expected_scales = fastret.quantize_int8(expected)
        assert torch.equal(codes, expected_codes) and torch.equal(scales, expected_scales)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the interpreter dispatch of CPU tensors")
def test_cpu_with_interpreter_runs_the_kernel(monkeypatch):
    def no_reference(*args):
        raise AssertionError("the torch reference ran although TRITON_INTERPRET=1")

    monkeypatch.setattr(pooling, "pool_normalize_ref", no_reference)
    out = pool_normalize(make_hidden((2, 3, 8), torch.float32), make_mask([3, 1], 3, "left"))
    assert out.shape == (2, 8)


def run_python(code, env_update):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(env_update)
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_interpreter_requested_after_import_is_explained():
    # triton fixes compiled vs interpreted when it is imported; asking afterwards gets an error
    # that says what to do, not a crash inside triton
    code = """
import os, torch
from fastret.kernels import pooling
os.environ["TRITON_INTERPRET"] = "1"
try:
    pooling.pool_normalize(torch.randn(2, 5, 12), torch.ones(2, 5, dtype=torch.long))
except RuntimeError as error:
    print(error)
"""
    out = run_python(code, {})
    assert "set after triton was imported" in out and "before importing" in out


def test_works_without_triton_on_cpu_and_says_so_when_triton_is_needed():
    code = """
import sys
sys.modules["triton"] = None  # import triton -> ImportError
import os, torch
import fastret.kernels.pooling as pooling
h = torch.randn(2, 4, 8); m = torch.ones(2, 4, dtype=torch.long)
assert torch.equal(pooling.pool_normalize(h, m), pooling.pool_normalize_ref(h, m))
os.environ["TRITON_INTERPRET"] = "1"
try:
    pooling.pool_normalize(h, m)
except RuntimeError as error:
    print(error)
"""
    out = run_python(code, {})
    assert "needs triton" in out and "install it" in out


# ---------------------------------------------------------------------------------------- errors


def ok_inputs():
    return make_hidden((2, 3, 8), torch.float32), make_mask([3, 1], 3, "right")


@pytest.mark.parametrize(
    "change, error, match",
    [
        pytest.param(
            lambda h, m: (h[0], m), ValueError, r"\[B, T, D\], got shape \(3, 8\).*hidden\[None\]", id="hidden-2d"
        ),
        pytest.param(lambda h, m: (h, m[0]), ValueError, r"attention_mask must be \[B, T\], got shape \(3,\)", id="mask-1d"),
        pytest.param(lambda h, m: (h, m[:, :2]), ValueError, r"must match hidden.*\(2, 2\).*\(2, 3, 8\)", id="T"),
        pytest.param(lambda h, m: (h[:1], m), ValueError, r"must match hidden \[B, T, D\] in B and T", id="B"),
        pytest.param(lambda h, m: (h.long(), m), TypeError, r"float32, got torch.int64.*hidden.float\(\)", id="int"),
        pytest.param(lambda h, m: (h.double(), m), TypeError, r"float32, got torch.float64", id="float64"),
        pytest.param(lambda h, m: (h.tolist(), m), TypeError, r"hidden must be a torch.Tensor.*list", id="list"),
        pytest.param(lambda h, m: (h, m.tolist()), TypeError, r"attention_mask must be a torch.Tensor.*list", id="m-list"),
        pytest.param(lambda h, m: (h, m.float()), TypeError, r"bool or integer.*torch.float32.*long\(\)", id="m-float"),
        pytest.param(lambda h, m: (h, m * 2), ValueError, r"only 0 .* and 1 .*found 2", id="m-2"),
        pytest.param(lambda h, m: (h, m - 1), ValueError, r"only 0 .* and 1 .*found -1", id="m-neg"),
        pytest.param(lambda h, m: (h, m.to("meta")), ValueError, r"attention_mask is on meta.*one device", id="device"),
    ],
)
def test_bad_inputs_are_explained(change, error, match):
    hidden, mask = change(*ok_inputs())
    with pytest.raises(error, match=match):
        pool_normalize(hidden, mask)
    with pytest.raises(error, match=match):
        pool_normalize_ref(hidden, mask)


def test_bad_mode_and_flags_are_explained():
    hidden, mask = ok_inputs()
    with pytest.raises(ValueError, match=r"mode must be one of 'mean', 'cls', 'last', got 'max'"):
        pool_normalize(hidden, mask, mode="max")
    with pytest.raises(ValueError, match=r"'lasttoken' is 'last' here"):
        pool_normalize(hidden, mask, mode="lasttoken")
    with pytest.raises(TypeError, match=r"normalize must be True or False, got 'no'"):
        pool_normalize(hidden, mask, normalize="no")
    with pytest.raises(TypeError, match=r"quantize must be True or False, got 1"):
        pool_normalize(hidden, mask, quantize=1)


# --------------------------------------------------------------------------------- packed layout


def pack(hidden, lengths):
    """Right-padded [B, T, D] states -> packed [N, D] (the real tokens back to back) and cu_seqlens."""
    rows = torch.cat([hidden[b, :n] for b, n in enumerate(lengths)])
    cu = torch.tensor([0, *np.cumsum(lengths)], dtype=torch.int32, device=hidden.device)
    return rows, cu


@pytest.mark.parametrize("quantize", [False, True])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(1, 1, 8), (5, 17, 97), (3, 40, 384)], ids=str)
def test_packed_matches_padded_reference(shape, mode, dtype, normalize, quantize):
    B, T, D = shape
    hidden = make_hidden(shape, dtype, seed=11)
    lengths = lengths_for(B, T, seed=11)  # a full row, an empty one, partial ones
    packed, cu = pack(hidden, lengths)
    out = pool_normalize_packed(packed, cu, mode=mode, normalize=normalize, quantize=quantize)
    y = out[0] if quantize else out
    assert y.dtype == torch.float32 and y.shape == (B, D)
    assert_close(y, pool_normalize_ref(hidden, make_mask(lengths, T, "right"), mode, normalize), dtype)
    assert_close(y, pooling.pool_normalize_packed_ref(packed, cu, mode, normalize), dtype)
    if quantize:
        codes, scales = fastret.quantize_int8(y)
        assert torch.equal(out[1], codes) and torch.equal(out[2], scales)
    if B >= 2:
        assert torch.equal(y[1], torch.zeros(D, device=y.device))


def test_packed_reads_only_its_rows_and_takes_strided_int64_inputs():
    hidden = make_hidden((30, 64), torch.float16, seed=2)[::2]  # [15, 64], row stride 128
    cu = torch.tensor([0, 4, 4, 15], dtype=torch.int64, device=hidden.device)
    for mode in MODES:
        expected = pooling.pool_normalize_packed_ref(hidden.contiguous(), cu, mode)
        assert_close(pool_normalize_packed(hidden, cu, mode=mode), expected, torch.float16)
    first = pool_normalize_packed(hidden, cu, mode="cls")
    assert_close(first[2], torch.nn.functional.normalize(hidden[4].float(), dim=0), torch.float16)


def test_packed_without_sequences_or_rows():
    none = pool_normalize_packed(torch.zeros(0, 8, device=device()), torch.zeros(1, dtype=torch.int32, device=device()))
    assert none.shape == (0, 8)
    empty = pool_normalize_packed(torch.zeros(0, 8, device=device()),
                                  torch.zeros(3, dtype=torch.int32, device=device()), quantize=True)
    assert torch.equal(empty[0], torch.zeros(2, 8, device=device()))
    assert torch.equal(empty[2], torch.zeros(2, device=device()))


@pytest.mark.parametrize(
    "hidden, cu, error, match",
    [
        pytest.param((2, 3, 8), [0, 2], ValueError, r"packed hidden must be \[N, D\].*pool_normalize", id="3d"),
        pytest.param((5, 8), [[0, 5]], ValueError, r"cu_seqlens must be \[B \+ 1\]", id="cu-2d"),
        pytest.param((5, 8), [0.0, 5.0], TypeError, r"cu_seqlens must be int32 or int64", id="cu-float"),
        pytest.param((5, 8), [1, 5], ValueError, r"start at 0, never decrease and end at N = 5", id="start"),
        pytest.param((5, 8), [0, 4], ValueError, r"end at N = 5.*\[0, 4\]", id="end"),
        pytest.param((5, 8), [0, 3, 2, 5], ValueError, r"never decrease", id="decrease"),
    ],
)
def test_bad_packed_inputs_are_explained(hidden, cu, error, match):
    hidden = make_hidden(hidden, torch.float32)
    cu = torch.tensor(cu, device=hidden.device, dtype=torch.float32 if error is TypeError else torch.int32)
    for fn in (pool_normalize_packed, pooling.pool_normalize_packed_ref):
        with pytest.raises(error, match=match):
            fn(hidden, cu)
    with pytest.raises(ValueError, match="mode must be one of"):
        pool_normalize_packed(make_hidden((5, 8), torch.float32), torch.tensor([0, 5], device=hidden.device), "max")


# ------------------------------------------------------------------------------ no host syncs


HOST_READS = {"aten::any", "aten::all", "aten::ne", "aten::item", "aten::_local_scalar_dense", "aten::isfinite",
              "aten::tolist", "aten::diff"}


def ops_of(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {event.name for event in prof.events()}


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU, tests/test_gpu_check.py's run proves it")
def test_wrappers_read_no_device_values_where_checks_are_off(monkeypatch):
    """What runs for a CUDA tensor, shown in the interpreter: with the value checks off (as on a
    GPU without FASTRET_DEVICE_CHECKS), the wrappers only allocate and launch."""
    hidden = make_hidden((3, 9, 16), torch.float16)
    mask = make_mask([9, 4, 1], 9, "right")
    packed, cu = pack(hidden, [9, 4, 1])

    def both():
        pool_normalize(hidden, mask, quantize=True)
        pool_normalize_packed(packed, cu, quantize=True)

    assert ops_of(both) & HOST_READS  # the CPU path checks values: the profile sees those reads
    monkeypatch.setattr(pooling, "device_checks", lambda device: False)
    assert not ops_of(both) & HOST_READS


def test_device_checks_run_on_the_cpu_and_elsewhere_only_when_asked(monkeypatch):
    monkeypatch.delenv("FASTRET_DEVICE_CHECKS", raising=False)
    assert pooling.device_checks(torch.device("cpu"))
    assert not pooling.device_checks(torch.device("cuda", 0))
    monkeypatch.setenv("FASTRET_DEVICE_CHECKS", "1")
    assert pooling.device_checks(torch.device("cuda", 0))
    with pytest.raises(ValueError, match="NaN or inf"):
        pooling.check_quantizable(torch.tensor([0.5, float("nan")]))


COMPILE_FOR_HOPPER = """
import json
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from fastret.kernels import pooling

compiled = []
for packed in (True, False):
    for mode in (0, 1, 2):
        for hidden in ("*fp16", "*bf16", "*fp32"):
            signature = {"H": hidden, "M": "*i32" if packed else "*i64", "CU": "*i32", "X": "*fp32",
                         "SUMSQ": "*fp32", "ABSMAX": "*fp32", "ROWS": "*i32", "T": "i32", "D": "i32",
                         "stride_hb": "i32", "stride_ht": "i32", "stride_hd": "i32", "stride_mb": "i32",
                         "stride_mt": "i32", "MODE": "constexpr", "PACKED": "constexpr", "BLOCK_T": "constexpr",
                         "BLOCK_D": "constexpr"}
            source = ASTSource(fn=pooling._pool_fwd_kernel, signature=signature,
                               constexprs={"MODE": mode, "PACKED": packed, "BLOCK_T": 16, "BLOCK_D": 128})
            kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
            compiled.append(len(kernel.asm["cubin"]) > 0)
print(json.dumps(compiled))
"""


def test_forward_kernel_compiles_for_hopper_in_both_layouts():
    """The interpreter runs any Python; this takes the forward kernel, packed and padded, every mode
    and input dtype, through Triton's compiler to sm_90 code without a GPU (a fresh process without
    TRITON_INTERPRET: triton decides compiled or interpreted when it is imported)."""
    pytest.importorskip("triton.backends.nvidia", reason="triton without its NVIDIA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", COMPILE_FOR_HOPPER], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [True] * 18
