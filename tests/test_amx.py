"""The AMX int8 tile kernel (csrc/gemm_int8_amx.cpp), written against the tile operations of
csrc/amx_tiles.h: in scalar emulation on every CPU (its layout, blocking and padding), on the
matrix units where the CPU has them."""

import numpy as np
import pytest

from fastret import _core

# (m, n, k): one tile; short row blocks and steps; several row blocks, panel groups and steps
SHAPES = [(1, 1, 1), (3, 5, 7), (16, 16, 64), (17, 33, 65), (15, 64, 128), (40, 70, 300), (64, 130, 388),
          (33, 17, 4), (2, 200, 1000)]


def product(rng, m, n, k):
    weights = rng.integers(-127, 128, (n, k)).astype(np.int8)
    codes = rng.integers(-127, 128, (m, k)).astype(np.int8)
    return codes, _core.pack_int8_weights(weights), codes.astype(np.int64) @ weights.astype(np.int64).T


@pytest.mark.parametrize("shape", SHAPES)
def test_the_emulated_tile_kernel_is_exact(shape):
    rng = np.random.default_rng(sum(shape))
    codes, packed, expected = product(rng, *shape)
    np.testing.assert_array_equal(_core.gemm_int8(codes, packed, kernel="amx-emulated"), expected)


def test_the_extreme_codes_stay_exact():
    k = 4096  # |sum| = k * 127 * 127 = 66M: well inside int32
    codes = np.full((3, k), -127, np.int8)
    weights = np.full((20, k), 127, np.int8)
    got = _core.gemm_int8(codes, _core.pack_int8_weights(weights), kernel="amx-emulated")
    assert (got == -k * 127 * 127).all()


@pytest.mark.skipif(not _core.amx_usable(), reason="this CPU has no AMX-INT8 tiles (grep amx_int8 /proc/cpuinfo)")
@pytest.mark.parametrize("shape", SHAPES)
def test_the_amx_kernel_equals_the_emulation_and_the_reference(shape):
    rng = np.random.default_rng(sum(shape) + 1)
    codes, packed, expected = product(rng, *shape)
    np.testing.assert_array_equal(_core.gemm_int8(codes, packed, kernel="amx"), expected)
    np.testing.assert_array_equal(_core.gemm_int8(codes, packed, kernel="amx-emulated"), expected)


def test_kernels_are_named_clearly():
    codes, packed, _ = product(np.random.default_rng(0), 2, 3, 8)
    with pytest.raises(ValueError, match="unknown kernel 'amx2'; expected one of .*amx, amx-emulated"):
        _core.gemm_int8(codes, packed, kernel="amx2")
    if not _core.amx_usable():
        with pytest.raises(ValueError, match="kernel 'amx' needs a CPU with AMX-INT8 .* use 'amx-emulated'"):
            _core.gemm_int8(codes, packed, kernel="amx")
    for name in [p for p in _core.simd_paths_supported() if p != "neon"]:
        np.testing.assert_array_equal(_core.gemm_int8(codes, packed, kernel=name),
                                      _core.gemm_int8(codes, packed, kernel="amx-emulated"))
