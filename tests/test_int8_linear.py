import numpy as np
import pytest
import torch
from torch import nn

import fastret
from fastret.encode.int8_linear import (Int8Linear, gemm_int8, gemm_int8_ref, linear_int8_ref, pack_weights,
                                 quantize_linear_layers, quantize_weights)
from fastret.quant import quantize_int8

# m x n x k: single elements, k not a multiple of 4 (the packing width), n not a multiple of 16 (the
# panel width), m not a multiple of any path's rows, and more than one row block and weight block.
SHAPES = [(1, 1, 1), (3, 17, 97), (5, 33, 130), (7, 16, 3), (70, 40, 7), (130, 100, 384), (9, 70, 2051)]


def codes(rng, *shape):
    return rng.integers(-127, 128, shape, dtype=np.int8)


@pytest.mark.parametrize("m,n,k", SHAPES)
def test_gemm_equals_the_integer_reference_exactly(simd_path, rng, m, n, k):
    a, w = codes(rng, m, k), codes(rng, n, k)
    np.testing.assert_array_equal(gemm_int8(a, pack_weights(w)), gemm_int8_ref(a, w))


@pytest.mark.parametrize("m,n,k", SHAPES)
def test_gemm_of_narrow_weights_equals_the_integer_reference_exactly(simd_path, rng, m, n, k):
    # weights within [-63, 63] take AVX2's unsigned x signed kernel
    a, w = codes(rng, m, k), rng.integers(-63, 64, (n, k), dtype=np.int8)
    np.testing.assert_array_equal(gemm_int8(a, pack_weights(w)), gemm_int8_ref(a, w))


@pytest.mark.parametrize("largest", [63, 64])
def test_gemm_at_the_narrow_kernels_bound_does_not_saturate(simd_path, largest):
    # -127 + 128 = 1 and 127 + 128 = 255: every int16 pair at 2 * 255 * 63 (the narrow kernel's bound),
    # and one past the bound (64: the sign-trick kernel), over the longest k
    k = 65536
    a = np.full((3, k), 127, dtype=np.int8)
    a[1] = -127
    a[2, ::2] = -127
    w = np.full((17, k), largest, dtype=np.int8)
    w[3] = -largest
    w[5, 1::2] = -largest
    np.testing.assert_array_equal(gemm_int8(a, pack_weights(w)), gemm_int8_ref(a, w))


def test_quantize_weights_uses_63_levels_a_side():
    weight = torch.tensor([[0.4, -1.0, 0.25], [0.0, 0.0, 0.0], [3.0, 1.0, -2.0]])
    codes, scales = quantize_weights(weight)
    assert codes.dtype == torch.int8 and scales.dtype == torch.float32
    assert codes.tolist() == [[25, -63, 16], [0, 0, 0], [63, 21, -42]]
    torch.testing.assert_close(scales, torch.tensor([1.0 / 63, 0.0, 3.0 / 63]))
    with pytest.raises(ValueError, match="NaN or inf"):
        quantize_weights(torch.tensor([[1.0, float("nan")]]))


def test_gemm_extreme_codes_do_not_overflow(simd_path):
    # Every pair at +-127 * 127 (the int16 pair bound of the AVX2 path) and the longest k (the int32
    # bound of the biased VNNI path).
    k = 65536
    a = np.full((2, k), 127, dtype=np.int8)
    a[1] = -127
    w = np.full((17, k), -127, dtype=np.int8)
    w[3, ::2] = 127
    np.testing.assert_array_equal(gemm_int8(a, pack_weights(w)), gemm_int8_ref(a, w))


def test_packed_weights_serve_every_path(rng):
    a, w = codes(rng, 11, 45), codes(rng, 23, 45)
    packed = pack_weights(w)
    before = fastret.simd_path()
    try:
        for path in fastret.available_simd_paths():
            fastret.set_simd_path(path)
            np.testing.assert_array_equal(gemm_int8(a, packed), gemm_int8_ref(a, w))
    finally:
        fastret.set_simd_path(before)


def test_gemm_does_not_depend_on_the_thread_count(rng):
    a, w = codes(rng, 300, 64), codes(rng, 200, 64)
    packed = pack_weights(w)
    before = fastret.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            fastret.set_num_threads(threads)
            results.append(gemm_int8(a, packed))
    finally:
        fastret.set_num_threads(0 if before == fastret.get_num_threads() else before)
    for result in results:
        np.testing.assert_array_equal(result, gemm_int8_ref(a, w))


def test_gemm_rejects_bad_input(rng):
    w = codes(rng, 4, 8)
    packed = pack_weights(w)
    with pytest.raises(ValueError, match="activation codes must lie in \\[-127, 127\\]; row 1 holds -128"):
        gemm_int8(np.array([[0] * 8, [-128] + [0] * 7], dtype=np.int8), packed)
    with pytest.raises(ValueError, match="weight codes must lie in \\[-127, 127\\]; output channel 2 holds -128"):
        pack_weights(np.array([[0], [1], [-128]], dtype=np.int8))
    with pytest.raises(TypeError, match="weight codes must be int8, got float32"):
        pack_weights(np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="non-empty 2-D"):
        pack_weights(np.zeros((0, 4), dtype=np.int8))
    with pytest.raises(ValueError, match="activations must be 2-D \\[m >= 1, 8\\] for these weights"):
        gemm_int8(codes(rng, 2, 7), packed)
    for damaged in (packed[:-1], packed[1:], np.zeros_like(packed), np.concatenate([packed, packed[:4]])):
        with pytest.raises(ValueError, match="not packed int8 weights"):
            gemm_int8(codes(rng, 2, 8), damaged)
    with pytest.raises(ValueError, match="exceeds the supported 65536"):
        pack_weights(np.zeros((1, 65537), dtype=np.int8))


def random_linear(rng, k, n, bias=True):
    layer = nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(rng.standard_normal((n, k)).astype(np.float32)))
        if bias:
            layer.bias.copy_(torch.from_numpy(rng.standard_normal(n).astype(np.float32)))
    return layer


@pytest.mark.parametrize("shape,n,bias", [((1, 1), 1, True), ((2, 7, 97), 33, True), ((130, 64), 40, False),
                                          ((3, 5, 384), 1536, True)])
def test_linear_matches_its_fake_quantized_reference(simd_path, rng, shape, n, bias):
    layer = random_linear(rng, shape[-1], n, bias)
    int8 = Int8Linear.from_linear(layer)
    x = torch.from_numpy(rng.standard_normal(shape).astype(np.float32) * 3)
    x[..., 0] = 0.0  # rows are not all zero
    w_codes, w_scales = quantize_weights(layer.weight)
    with torch.inference_mode():
        y = int8(x)
    expected = linear_int8_ref(x, w_codes, w_scales, layer.bias)
    assert y.shape == (*shape[:-1], n) and y.dtype == torch.float32
    torch.testing.assert_close(y, expected, rtol=2e-6, atol=2e-6 * float(expected.abs().max()))


def test_activation_codes_equal_quantize_int8(simd_path, rng):
    # With identity weights (codes 1, scale 1) the output is the dequantized activation itself.
    k = 77
    identity = Int8Linear(torch.eye(k, dtype=torch.int8), torch.ones(k), None)
    x = torch.from_numpy(rng.standard_normal((9, k)).astype(np.float32))
    x[3] = 0.0
    x[4, 5] = 0.5 * float(x[4].abs().max())  # ties round half to even, as torch.round
    with torch.inference_mode():
        y = identity(x)
    x_codes, x_scales = quantize_int8(x)
    torch.testing.assert_close(y, x_codes.float() * x_scales[:, None], rtol=0, atol=0)


def test_zero_rows_give_the_bias(rng):
    layer = random_linear(rng, 8, 5)
    with torch.inference_mode():
        y = Int8Linear.from_linear(layer)(torch.zeros(2, 8))
    torch.testing.assert_close(y, layer.bias.detach().expand(2, 5), rtol=0, atol=0)


def test_linear_rejects_bad_input(rng):
    int8 = Int8Linear.from_linear(random_linear(rng, 8, 4))
    with torch.inference_mode():
        with pytest.raises(TypeError, match="takes float32 input, got torch.float64"):
            int8(torch.zeros(2, 8, dtype=torch.float64))
        with pytest.raises(ValueError, match="expects input \\[..., 8\\], got \\[2, 9\\]"):
            int8(torch.zeros(2, 9))
        with pytest.raises(ValueError, match="holds NaN or inf"):
            int8(torch.tensor([[0.0] * 7 + [float("nan")]]))
        with pytest.raises(ValueError, match="holds NaN or inf"):
            int8(torch.tensor([[1.0] * 7 + [float("-inf")]] * 3))
        assert int8(torch.zeros(0, 3, 8)).shape == (0, 3, 4)
    with pytest.raises(ValueError, match="inference only"):
        int8(torch.zeros(2, 8, requires_grad=True))
    with pytest.raises(ValueError, match="weight_scales must be float32 \\[3\\]"):
        Int8Linear(torch.zeros(3, 2, dtype=torch.int8), torch.ones(2), None)


class FakeQuantLinear(nn.Module):
    """The reference of an Int8Linear, for swapping into a whole model."""

    def __init__(self, linear):
        super().__init__()
        self.codes, self.scales = quantize_weights(linear.weight)
        self.bias = linear.bias

    def forward(self, x):
        return linear_int8_ref(x, self.codes, self.scales, self.bias)


def replace_linears(model, make):
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, make(child))


@pytest.mark.parametrize("family", ["tiny_bert", "tiny_neox"])
def test_quantized_models_match_the_fake_quantized_model(request, family):
    from transformers import AutoModel

    directory = request.getfixturevalue(family)
    model = AutoModel.from_pretrained(directory).eval()
    reference = AutoModel.from_pretrained(directory).eval()
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    replaced = quantize_linear_layers(model)
    assert replaced == linears and len(replaced) >= 8
    assert not any(isinstance(module, nn.Linear) for module in model.modules())
    # each layer's first MLP projection carries its GELU, and the activation module is gone
    fused = [name for name, module in model.named_modules() if isinstance(module, Int8Linear) and module.gelu]
    assert len(fused) == model.config.num_hidden_layers
    assert all(name.endswith(("intermediate.dense", "mlp.dense_h_to_4h")) for name in fused)
    assert not any(type(module).__name__ == "GELUActivation" for module in model.modules())
    replace_linears(reference, FakeQuantLinear)
    ids = torch.randint(3, 300, (2, 11))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    with torch.inference_mode():
        ours = model(input_ids=ids, attention_mask=mask).last_hidden_state
        expected = reference(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)


def test_quantize_linear_layers_refuses_other_dtypes():
    model = nn.Sequential(nn.Linear(4, 4).to(torch.bfloat16))
    with pytest.raises(ValueError, match="0 is torch.bfloat16 on cpu"):
        quantize_linear_layers(model)


def test_fused_gelu_is_accurate_and_the_same_on_every_path(rng):
    # x spans GELU's whole shape: the negative tail (erfc small), around 0, the linear part
    x = torch.from_numpy(np.concatenate([np.linspace(-12, 12, 4001), rng.standard_normal(999) * 4])
                         .astype(np.float32)).reshape(-1, 1)
    identity = Int8Linear(torch.ones(1, 1, dtype=torch.int8), torch.ones(1), None)
    fused = Int8Linear(torch.ones(1, 1, dtype=torch.int8), torch.ones(1), None, gelu=True)
    before = fastret.simd_path()
    outputs = []
    try:
        for path in fastret.available_simd_paths():
            fastret.set_simd_path(path)
            with torch.inference_mode():
                pre, post = identity(x), fused(x)
            exact = torch.nn.functional.gelu(pre.double())
            error = (post.double() - exact).abs()
            assert float((error / exact.abs().clamp_min(1)).max()) < 4e-7, path
            outputs.append(post)
    finally:
        fastret.set_simd_path(before)
    for output in outputs[1:]:
        assert torch.equal(output, outputs[0])


def test_only_an_exact_gelu_after_a_linear_layer_is_fused():
    class Intermediate(nn.Module):  # named like BERT's, with a tanh GELU: not fused
        def __init__(self):
            super().__init__()
            self.dense, self.intermediate_act_fn = nn.Linear(4, 8), nn.GELU(approximate="tanh")

    class GPTNeoXMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.dense_h_to_4h, self.act, self.dense_4h_to_h = nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 4)

    model = nn.Sequential(Intermediate(), GPTNeoXMLP(), nn.Sequential(nn.Linear(4, 4), nn.GELU()))
    quantize_linear_layers(model)
    assert [name for name, m in model.named_modules() if isinstance(m, Int8Linear) and m.gelu] == ["1.dense_h_to_4h"]
    assert isinstance(model[1].act, nn.Identity) and isinstance(model[0].intermediate_act_fn, nn.GELU)
    assert isinstance(model[2][1], nn.GELU)
