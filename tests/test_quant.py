import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import fastret


def test_codes_and_scales_follow_the_formula(rng):
    x = rng.standard_normal((5, 97)).astype(np.float32)
    codes, scales = fastret.quantize_int8(x)
    assert codes.dtype == np.int8 and scales.dtype == np.float32
    np.testing.assert_array_equal(scales, np.abs(x).max(axis=1) / np.float32(127))
    np.testing.assert_array_equal(codes, np.clip(np.rint(x / scales[:, None]), -127, 127).astype(np.int8))
    assert (np.abs(codes).max(axis=1) == 127).all()


@pytest.mark.parametrize("max_code", [1, 63, 127])
def test_max_code_sets_the_code_range(rng, max_code):
    x = rng.standard_normal((4, 50)).astype(np.float32)
    codes, scales = fastret.quantize_int8(x, max_code)
    np.testing.assert_array_equal(scales, np.abs(x).max(axis=1) / np.float32(max_code))
    assert (np.abs(codes).max(axis=1) == max_code).all()
    torch_codes, torch_scales = fastret.quantize_int8(torch.from_numpy(x), max_code)
    np.testing.assert_array_equal(torch_codes.numpy(), codes)
    np.testing.assert_array_equal(torch_scales.numpy(), scales)


def test_queries_quantize_to_seven_bits(rng):
    x = rng.standard_normal((3, 20)).astype(np.float32)
    codes, scales = fastret.quantize_queries(x)
    expected = fastret.quantize_int8(x, 63)
    np.testing.assert_array_equal(codes, expected[0])
    np.testing.assert_array_equal(scales, expected[1])


@pytest.mark.parametrize("bad, error", [(0, ValueError), (128, ValueError), (-5, ValueError),
                                        (63.0, TypeError), (True, TypeError)])
def test_max_code_is_checked(bad, error):
    with pytest.raises(error, match="max_code"):
        fastret.quantize_int8(np.ones((1, 4), np.float32), bad)


def test_reconstruction_error_is_at_most_half_a_step(rng):
    x = rng.standard_normal((20, 384)).astype(np.float32)
    codes, scales = fastret.quantize_int8(x)
    error = np.abs(codes * scales[:, None] - x)
    assert (error <= scales[:, None] * 0.5 + 1e-7).all()


def test_zero_vector_gets_zero_scale_and_codes():
    codes, scales = fastret.quantize_int8(np.zeros((2, 8), np.float32))
    assert (codes == 0).all() and (scales == 0).all()


def test_leading_axes_are_kept(rng):
    x = rng.standard_normal((2, 3, 16)).astype(np.float32)
    codes, scales = fastret.quantize_int8(x)
    assert codes.shape == (2, 3, 16) and scales.shape == (2, 3)
    flat_codes, flat_scales = fastret.quantize_int8(x.reshape(6, 16))
    np.testing.assert_array_equal(codes.reshape(6, 16), flat_codes)
    np.testing.assert_array_equal(scales.reshape(6), flat_scales)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_numpy_float_dtypes_quantize_their_float32_value(rng, dtype):
    x = rng.standard_normal((4, 33)).astype(dtype)
    codes, scales = fastret.quantize_int8(x)
    expected_codes, expected_scales = fastret.quantize_int8(x.astype(np.float32))
    np.testing.assert_array_equal(codes, expected_codes)
    np.testing.assert_array_equal(scales, expected_scales)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_torch_matches_numpy(rng, dtype):
    x = torch.from_numpy(rng.standard_normal((7, 65)).astype(np.float32)).to(dtype)
    codes, scales = fastret.quantize_int8(x)
    assert isinstance(codes, torch.Tensor) and codes.dtype == torch.int8 and scales.dtype == torch.float32
    expected_codes, expected_scales = fastret.quantize_int8(x.float().numpy())
    np.testing.assert_array_equal(codes.numpy(), expected_codes)
    np.testing.assert_array_equal(scales.numpy(), expected_scales)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 4), st.integers(1, 40)),
              elements=st.floats(-1e6, 1e6, width=32)))
def test_property_codes_in_range_and_close(x):
    codes, scales = fastret.quantize_int8(x)
    assert codes.min() >= -127 and codes.max() <= 127
    assert np.all(np.abs(codes * scales[:, None].astype(np.float64) - x) <= scales[:, None] * 0.5001 + 1e-30)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_is_rejected(bad):
    x = np.ones((3, 4), np.float32)
    x[2, 1] = bad
    with pytest.raises(ValueError, match="NaN or inf.*row 2"):
        fastret.quantize_int8(x)
    with pytest.raises(ValueError, match="NaN or inf"):
        fastret.quantize_int8(torch.from_numpy(x))


def test_integer_input_is_rejected():
    with pytest.raises(TypeError, match="floating point"):
        fastret.quantize_int8(np.ones((2, 3), np.int32))
    with pytest.raises(TypeError, match="floating point"):
        fastret.quantize_int8(torch.ones(2, 3, dtype=torch.int64))


def test_scalar_and_strings_are_rejected():
    with pytest.raises(ValueError, match="scalar"):
        fastret.quantize_int8(np.float32(1.0))
    with pytest.raises(TypeError, match="numpy array or torch tensor"):
        fastret.quantize_int8("not vectors")
