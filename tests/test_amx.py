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
    for name in [p for p in _core.simd_paths_supported() if p not in ("neon", "i8mm")]:  # ARM: no GEMM kernel of its own
        np.testing.assert_array_equal(_core.gemm_int8(codes, packed, kernel=name),
                                      _core.gemm_int8(codes, packed, kernel="amx-emulated"))


def search_paths():
    return ["amx-emulated"] + (["amx"] if _core.amx_usable() else [])


@pytest.fixture
def restore_simd_path():
    import fastret

    before = fastret.simd_path()
    yield fastret.set_simd_path
    fastret.set_simd_path(before)


# (rows, dim, queries): full 64-row tiles read in place (dim a multiple of 64) and a short last tile
# from scratch; a dim that is not (scratch for every tile); one group of 16 queries, a group and one
# more, several groups and a short one
SEARCH_SHAPES = [(200, 128, 16), (128, 64, 17), (130, 100, 40), (64, 768, 3), (300, 384, 35)]


@pytest.mark.parametrize("path", search_paths())
@pytest.mark.parametrize("shape", SEARCH_SHAPES)
def test_the_tile_search_kernel_equals_the_reference(restore_simd_path, path, shape):
    import fastret

    rows, dim, n_queries = shape
    rng = np.random.default_rng(rows + dim + n_queries)
    codes = rng.integers(-128, 128, (rows, dim), dtype=np.int8)
    scales = rng.random(rows).astype(np.float32)
    queries = (rng.integers(-127, 128, (n_queries, dim), dtype=np.int8), rng.random(n_queries).astype(np.float32))
    restore_simd_path(path)
    for k in (1, 10, rows):
        got = fastret.topk_int8(queries, codes, scales, k)
        expected = fastret.topk_int8_ref(queries, codes, scales, k)
        np.testing.assert_array_equal(got[1], expected[1])
        np.testing.assert_array_equal(got[0], expected[0])


@pytest.mark.skipif(not _core.amx_usable(), reason="this CPU has no AMX-INT8 tiles (grep amx_int8 /proc/cpuinfo)")
def test_an_amx_cpu_dispatches_to_the_tiles_and_they_beat_vnni_on_a_batch(restore_simd_path):
    """The smoke test of a dispatch that silently runs the slow kernel: the path a fresh process picks
    on its own is the AMX one, and it out-runs the AVX-512 VNNI path on a batch."""
    import os
    import subprocess
    import sys
    import time

    import fastret

    env = {name: value for name, value in os.environ.items() if name != "FASTRET_SIMD"}
    picked = subprocess.run([sys.executable, "-c", "import fastret; print(fastret.simd_path())"], env=env,
                            capture_output=True, text=True, check=True).stdout.strip()
    assert picked == "amx"
    rng = np.random.default_rng(0)
    codes = rng.integers(-127, 128, (65536, 768), dtype=np.int8)
    scales = np.ones(65536, np.float32)
    queries = (rng.integers(-63, 64, (256, 768), dtype=np.int8), np.ones(256, np.float32))
    seconds = {}
    for path in ("avx512vnni", "amx"):
        restore_simd_path(path)
        fastret.topk_int8(queries, codes, scales, 10)
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fastret.topk_int8(queries, codes, scales, 10)
            times.append(time.perf_counter() - start)
        seconds[path] = min(times)
    assert seconds["amx"] * 1.5 < seconds["avx512vnni"], seconds
