import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import fastret
from fastret import _core
from fastret.search.core import PICK_FRACTION, binary_candidates, core_candidates, narrowed, segment_candidates
from fastret.search.rules import query_codes
from fastret.search.torch_backend import device_arrays, topk_int8_torch, torch_candidates
from fastret.storage.segment import Segment

from conftest import needs_cuda, unit_rows


def quantized(rng, n, d):
    return fastret.quantize_int8(unit_rows(rng, n, d))


def assert_same(got, expected):
    np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_array_equal(got[0], expected[0])


@pytest.mark.parametrize("dim", [1, 3, 97, 384, 768, 1024])
@pytest.mark.parametrize("n", [1, 63, 150])
def test_matches_reference_exactly(simd_path, rng, dim, n):
    codes, scales = quantized(rng, n, dim)
    for n_queries in (1, 2, 7):
        queries = unit_rows(rng, n_queries, dim)
        for k in sorted({1, min(10, n), n}):
            assert_same(fastret.topk_int8(queries, codes, scales, k),
                        fastret.topk_int8_ref(queries, codes, scales, k))


def test_scores_are_the_documented_float32_expression(rng):
    codes, scales = quantized(rng, 40, 97)
    q_codes, q_scales = quantized(rng, 3, 97)
    scores, ids = fastret.topk_int8((q_codes, q_scales), codes, scales, 5)
    dots = q_codes.astype(np.int64) @ codes.astype(np.int64).T
    expected = (dots.astype(np.float32) * q_scales[:, None]) * scales[None, :]
    np.testing.assert_array_equal(scores, np.take_along_axis(expected, ids, axis=1))
    assert (np.diff(scores, axis=1) <= 0).all()


def test_ties_go_to_the_lower_row(simd_path, rng):
    base, scales = quantized(rng, 5, 64)
    codes = np.repeat(base, 40, axis=0)  # rows 0..39 equal, 40..79 equal, ...
    all_scales = np.repeat(scales, 40)
    query = unit_rows(rng, 2, 64)
    scores, ids = fastret.topk_int8(query, codes, all_scales, 70)
    expected = fastret.topk_int8_ref(query, codes, all_scales, 70)
    assert_same((scores, ids), expected)
    for row_scores, row_ids in zip(scores, ids):
        for equal in np.unique(row_scores):
            tied = row_ids[row_scores == equal]
            assert (np.diff(tied) > 0).all()


def test_ties_go_to_the_lower_external_id(simd_path, rng):
    codes = np.repeat(quantized(rng, 1, 32)[0], 200, axis=0)
    scales = np.ones(200, np.float32)
    ids = rng.permutation(10_000)[:200].astype(np.int64)
    scores, found = fastret.topk_int8(unit_rows(rng, 3, 32), codes, scales, 10, ids=ids)
    np.testing.assert_array_equal(found, np.tile(np.sort(ids)[:10], (3, 1)))
    assert (scores == scores[:, :1]).all()


def test_corpus_codes_may_hold_minus_128(simd_path, rng):
    codes = rng.integers(-128, 128, (130, 70), dtype=np.int8)
    codes[:, 0] = -128
    scales = rng.random(130).astype(np.float32)
    q_codes = rng.integers(-127, 128, (5, 70), dtype=np.int8)
    q_scales = rng.random(5).astype(np.float32)
    assert_same(fastret.topk_int8((q_codes, q_scales), codes, scales, 9),
                fastret.topk_int8_ref((q_codes, q_scales), codes, scales, 9))


def test_extreme_codes_do_not_overflow(simd_path):
    dim = 4096
    codes = np.full((3, dim), 127, np.int8)
    codes[1] = -128
    codes[2] = -127
    scales = np.ones(3, np.float32)
    queries = (np.stack([np.full(dim, 127), np.full(dim, -127)]).astype(np.int8), np.ones(2, np.float32))
    assert_same(fastret.topk_int8(queries, codes, scales, 3), fastret.topk_int8_ref(queries, codes, scales, 3))


@pytest.mark.parametrize("max_code", [63, 127])
def test_extreme_codes_in_a_batch_do_not_overflow(simd_path, max_code):
    # Batches of 3+ queries take the packed kernels: the narrow one (AVX2) for codes within +-63.
    dim = 2048
    codes = np.stack([np.full(dim, 127), np.full(dim, -128), np.full(dim, -127),
                      np.tile([127, -128], dim // 2)]).astype(np.int8)
    scales = np.ones(4, np.float32)
    q = np.stack([np.full(dim, max_code), np.full(dim, -max_code), np.tile([max_code, -max_code], dim // 2),
                  np.tile([-max_code, max_code], dim // 2), np.zeros(dim)]).astype(np.int8)
    queries = (q, np.ones(5, np.float32))
    assert_same(fastret.topk_int8(queries, codes, scales, 4), fastret.topk_int8_ref(queries, codes, scales, 4))


def test_float_queries_search_with_seven_bit_codes(rng):
    codes, scales = quantized(rng, 200, 96)
    queries = unit_rows(rng, 6, 96)
    q_codes, q_scales = fastret.quantize_queries(queries)
    assert np.abs(q_codes).max() == fastret.QUERY_MAX_CODE == 63
    assert_same(fastret.topk_int8(queries, codes, scales, 7), fastret.topk_int8((q_codes, q_scales), codes, scales, 7))


def test_one_wide_query_code_sends_the_block_to_the_full_kernel(simd_path, rng):
    codes = rng.integers(-128, 128, (300, 77), dtype=np.int8)
    scales = rng.random(300).astype(np.float32)
    q_codes = rng.integers(-63, 64, (9, 77), dtype=np.int8)
    q_codes[4, 10] = 64  # outside the narrow kernel's range: the whole block must stay exact
    q_scales = rng.random(9).astype(np.float32)
    assert_same(fastret.topk_int8((q_codes, q_scales), codes, scales, 12),
                fastret.topk_int8_ref((q_codes, q_scales), codes, scales, 12))


def test_query_blocks_and_thread_counts_agree(rng):
    codes, scales = quantized(rng, 3000, 48)
    queries = unit_rows(rng, 900, 48)
    expected = fastret.topk_int8_ref(queries, codes, scales, 3000)  # k = n: several query blocks
    before = fastret.get_num_threads()
    try:
        for threads in (1, 2, 3):
            fastret.set_num_threads(threads)
            assert_same(fastret.topk_int8(queries, codes, scales, 3000), expected)
    finally:
        fastret.set_num_threads(0)
    assert fastret.get_num_threads() == before


def test_concurrent_searches_from_python_threads(rng):
    codes, scales = quantized(rng, 2000, 96)
    batches = [unit_rows(rng, n, 96) for n in (1, 2, 5, 33, 100, 1, 7, 64)]
    expected = [fastret.topk_int8(b, codes, scales, 10) for b in batches]
    start = threading.Barrier(len(batches))

    def search(batch):
        start.wait()
        return fastret.topk_int8(batch, codes, scales, 10)

    with ThreadPoolExecutor(len(batches)) as pool:
        for _ in range(3):
            for got, want in zip(pool.map(search, batches), expected):
                assert_same(got, want)


def test_inputs_may_be_non_contiguous_torch_or_float64(rng):
    codes, scales = quantized(rng, 50, 40)
    queries = unit_rows(rng, 4, 80)[:, ::2]
    expected = fastret.topk_int8_ref(np.ascontiguousarray(queries), codes, scales, 5)
    assert_same(fastret.topk_int8(queries, codes, scales, 5), expected)
    assert_same(fastret.topk_int8(queries.astype(np.float64), codes, scales, 5), expected)
    got = fastret.topk_int8(torch.from_numpy(np.ascontiguousarray(queries)), torch.from_numpy(codes),
                            torch.from_numpy(scales), 5)
    assert_same(got, expected)
    wide = np.zeros((50, 80), np.int8)
    wide[:, ::2] = codes
    assert_same(fastret.topk_int8(queries, wide[:, ::2], scales, 5), expected)


def test_a_single_1d_query_counts_as_one_row(rng):
    codes, scales = quantized(rng, 20, 16)
    query = unit_rows(rng, 1, 16)
    scores, ids = fastret.topk_int8(query[0], codes, scales, 3)
    assert scores.shape == ids.shape == (1, 3)
    assert_same((scores, ids), fastret.topk_int8(query, codes, scales, 3))


@pytest.mark.parametrize("dim", [1, 5, 96])
def test_torch_backend_matches_reference(rng, dim):
    codes = np.repeat(quantized(rng, 40, dim)[0], 3, axis=0)
    scales = np.repeat(quantized(rng, 40, dim)[1], 3)
    ids = rng.permutation(120).astype(np.int64)
    q_codes, q_scales = quantized(rng, 6, dim)
    for k in (1, 10, 120):
        scores, rows = topk_int8_torch(torch.from_numpy(q_codes), torch.from_numpy(q_scales),
                                       torch.from_numpy(codes), torch.from_numpy(scales), k,
                                       torch.from_numpy(ids))
        expected = fastret.topk_int8_ref((q_codes, q_scales), codes, scales, k, ids=ids)
        assert_same((scores.numpy(), ids[rows.numpy()]), expected)


def test_torch_backend_chunks_the_corpus(rng, monkeypatch):
    import fastret.search.torch_backend as search

    monkeypatch.setattr(search, "_TORCH_CHUNK_ELEMENTS", 64)
    codes, scales = quantized(rng, 300, 12)
    q_codes, q_scales = quantized(rng, 4, 12)
    scores, rows = topk_int8_torch(*(torch.from_numpy(a) for a in (q_codes, q_scales, codes, scales)), 25)
    assert_same((scores.numpy(), rows.numpy()), fastret.topk_int8_ref((q_codes, q_scales), codes, scales, 25))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
@pytest.mark.parametrize("chunk_elements", [64, 5 * 2000, 1 << 27])
def test_torch_backend_breaks_ties_across_the_kth_score_by_id(rng, monkeypatch, chunk_elements, device):
    """Whole blocks of equal scores straddle the k-th place: the plain float top-k alone would pick
    any of them, the backend must pick the lowest ids (here in shuffled order, across chunks)."""
    import fastret.search.torch_backend as search

    monkeypatch.setattr(search, "_TORCH_CHUNK_ELEMENTS", chunk_elements)
    codes, scales = quantized(rng, 12, 16)
    codes, scales = np.repeat(codes, 400, axis=0), np.repeat(scales, 400)  # 400 copies of each row
    ids = rng.permutation(len(codes)).astype(np.int64)
    q_codes, q_scales = quantized(rng, 5, 16)
    for k in (3, 30, 4799):
        scores, rows = topk_int8_torch(*(torch.from_numpy(a).to(device) for a in (q_codes, q_scales, codes, scales)),
                                       k, torch.from_numpy(ids).to(device))
        expected = fastret.topk_int8_ref((q_codes, q_scales), codes, scales, k, ids=ids)
        assert_same((scores.cpu().numpy(), ids[rows.cpu().numpy()]), expected)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_torch_backend_candidate_groups_hold_the_top_k(rng, device):
    """Distinct scores over many groups of columns: the group maxima alone pick the candidates."""
    codes, scales = quantized(rng, 20000, 24)
    q_codes, q_scales = quantized(rng, 7, 24)
    for k in (1, 10, 60):
        scores, rows = topk_int8_torch(*(torch.from_numpy(a).to(device) for a in (q_codes, q_scales, codes, scales)), k)
        expected = fastret.topk_int8_ref((q_codes, q_scales), codes, scales, k)
        assert_same((scores.cpu().numpy(), rows.cpu().numpy()), expected)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
@pytest.mark.parametrize("exact", [False, True])
def test_torch_backend_over_segments_equals_the_core(rng, tmp_path, exact, device):
    """The CUDA path's code (on CPU tensors without a GPU): a mapped segment and an in-memory one,
    deletes in both, ties across them; device copies are made once per segment and renewed only
    where deletions changed."""
    device = torch.device(device)
    docs = unit_rows(rng, 500, 33)
    docs[300:360] = docs[0]  # ties within and across segments
    ids = rng.permutation(500).astype(np.int64) + 10
    first = fastret.Index(33, store_float16=True)
    first.add(docs[:250], ids[:250])
    first.save(tmp_path / "a.frt")
    index = fastret.Index.load(tmp_path / "a.frt")
    index.add(docs[250:], ids[250:])
    index.delete(ids[[0, 5, 260, 300]])
    queries = unit_rows(rng, 7, 33)
    queries[0] = docs[0]  # its top 59 are ties
    q_codes, q_scales, q_floats = query_codes(queries, 33)
    torch_queries = [torch.from_numpy(a).to(device) for a in (q_codes, q_scales)]

    def compare(segments):
        for c in (1, 10, 59, 200, sum(s.live_count for s in segments)):
            expected = core_candidates(segments, q_codes, q_scales, c, q_floats if exact else None)
            floats = torch.from_numpy(q_floats).to(device) if exact else None
            got = torch_candidates(segments, *torch_queries, c, floats)
            assert_same(got[:2], expected[:2])
            if exact:  # float dot products: torch sums in its own order
                np.testing.assert_allclose(got[2], expected[2], rtol=1e-5, atol=1e-7)
            else:
                assert got[2] is None

    segments = index.segments
    assert len(segments) == 2 and segments[0].path is not None and segments[1].path is None
    compare(segments)
    copies = [device_arrays(s, device) for s in segments]
    assert len(copies[0][0]) == 248 and len(copies[1][0]) == 248  # live rows only
    assert all(t.device.type == device.type for copy in copies for t in copy)
    index.delete(ids[[1]])  # in the mapped segment only
    renewed = index.segments
    assert device_arrays(renewed[1], device) is copies[1]
    assert len(device_arrays(renewed[0], device)[0]) == 247
    compare(renewed)


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 63, 64, 1000])
def test_picked_rows_are_the_set_rows(rng, n):
    masks = [rng.random(n) < p for p in (0.0, 0.01, 0.3, 1.0)]
    for mask, rows in zip(masks, _core.picked_rows(masks)):
        assert rows.dtype == np.int64 and rows.tolist() == np.flatnonzero(mask).tolist()
    odd_bytes = np.array([0, 2, 0, 0, 0, 0, 0, 0, 255, 0, 1], np.uint8).view(bool)  # any nonzero byte is set
    assert _core.picked_rows([odd_bytes])[0].tolist() == [1, 8, 10]
    with pytest.raises(TypeError, match="mask 0 must be a C-contiguous numpy array of bool"):
        _core.picked_rows([np.zeros(4, np.uint8)])


def test_narrowed_skips_keeps_picks_or_masks_each_segment(rng):
    vectors = unit_rows(rng, 800, 16)
    codes, scales = (np.asarray(a) for a in fastret.quantize_int8(vectors))
    segments = [Segment(codes[a:a + 160], scales[a:a + 160], np.arange(a, a + 160, dtype=np.int64),
                        vectors[a:a + 160].astype(np.float16)).with_deleted(np.array([0, 7], np.int64))
                for a in range(0, 800, 160)]
    few = np.zeros(160, bool)
    few[[0, 3, 9, 50, 151]] = True  # 4 live rows pass (row 0 is deleted): below 160 * PICK_FRACTION
    many = rng.random(160) < 0.7
    allowed = [np.zeros(160, bool), None, np.ones(160, bool), few, many]
    kept, masks, passing = narrowed(segments, allowed, pick=True)
    assert passing == 0 + 158 + 158 + 4 + int((many & ~segments[4].deleted_mask()).sum())
    assert [s.ids[0] for s in kept] == [160, 320, 480, 640]  # the empty one left out, the others as they are
    assert masks[0] is None and masks[1] is None  # every live row passes: the plain deletion bitmap
    assert masks[2].dtype == np.int64 and masks[2].tolist() == [3, 9, 50, 151]  # few: the core reads just these
    assert masks[3].dtype == bool and (masks[3] == many & ~segments[4].deleted_mask()).all()
    assert 4 < PICK_FRACTION * 160 < int(masks[3].sum())
    kept, masks, _ = narrowed(segments, allowed, pick=False)
    assert kept[2] is segments[3] and masks[2].dtype == bool  # the torch backend picks its rows itself
    queries = unit_rows(rng, 3, 16)
    q_codes, q_scales, q_floats = query_codes(queries, 16)
    for c in (1, 5, 400):
        expected = segment_candidates(segments, q_codes, q_scales, c, q_floats, allowed)
        got = segment_candidates(segments, *(torch.from_numpy(a) for a in (q_codes, q_scales)), c,
                                 torch.from_numpy(q_floats), allowed)
        assert_same(got[:2], expected[:2])
        np.testing.assert_allclose(got[2], expected[2], rtol=1e-5, atol=1e-7)


def test_binary_candidates_take_any_oversample(rng):
    """c x oversample past the rows keeps every row (the exact search), however large the oversample:
    no size past the core's range."""
    vectors = unit_rows(rng, 60, 16)
    codes, scales = (np.asarray(a) for a in fastret.quantize_int8(vectors))
    segments = [Segment(codes[a:a + 30], scales[a:a + 30], np.arange(a, a + 30, dtype=np.int64), None)
                for a in (0, 30)]
    q_codes, q_scales, _ = query_codes(unit_rows(rng, 2, 16), 16)
    expected = core_candidates(segments, q_codes, q_scales, 5)
    for oversample in (12, 2**62, 10**30):
        assert_same(binary_candidates(segments, q_codes, q_scales, 5, oversample=oversample)[:2], expected[:2])


def test_query_codes_on_a_torch_device_equal_the_numpy_ones(rng):
    """The query checks of the GPU path, run on the CPU: same codes, scales and floats; same refusals."""
    queries = unit_rows(rng, 4, 12)
    expected = query_codes(queries, 12)
    got = query_codes(torch.from_numpy(queries), 12, device=torch.device("cpu"))
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a.numpy(), b)
    one = query_codes(torch.from_numpy(queries[0]), 12, device="cpu")
    assert one[0].shape == (1, 12) and one[1].shape == (1,)
    given = query_codes(tuple(torch.from_numpy(a) for a in expected[:2]), 12, device="cpu")
    assert given[2] is None and torch.equal(given[0], got[0])
    with pytest.raises(ValueError, match=r"queries must be \[q, 12\] with q >= 1, got \(4, 11\)"):
        query_codes(torch.from_numpy(queries[:, :11]), 12, device="cpu")
    with pytest.raises(TypeError, match="floating point"):
        query_codes(torch.ones(2, 12, dtype=torch.int32), 12, device="cpu")
    with pytest.raises(TypeError, match="query codes must be int8"):
        query_codes((torch.ones(2, 12), torch.ones(2)), 12, device="cpu")
    with pytest.raises(ValueError, match=r"one scale per query \(2\)"):
        query_codes((torch.ones(2, 12, dtype=torch.int8), torch.ones(3)), 12, device="cpu")
    with pytest.raises(ValueError, match="-128"):
        query_codes((torch.full((2, 12), -128, dtype=torch.int8), torch.ones(2)), 12, device="cpu")
    bad = torch.from_numpy(queries.copy())
    bad[1, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        query_codes(bad, 12, device="cpu")


@needs_cuda
def test_cuda_matches_cpu(rng):
    codes, scales = quantized(rng, 5000, 384)
    queries = unit_rows(rng, 300, 384)
    expected = fastret.topk_int8(queries, codes, scales, 10)
    scores, ids = fastret.topk_int8(torch.from_numpy(queries).cuda(), torch.from_numpy(codes).cuda(),
                                    torch.from_numpy(scales).cuda(), 10)
    assert_same((scores.cpu().numpy(), ids.cpu().numpy()), expected)


# ---------------------------------------------------------------------------------- bad input


@pytest.fixture
def small(rng):
    codes, scales = quantized(rng, 20, 8)
    return codes, scales, unit_rows(rng, 3, 8)


def test_k_out_of_range(small):
    codes, scales, queries = small
    with pytest.raises(ValueError, match="k must be >= 1"):
        fastret.topk_int8(queries, codes, scales, 0)
    with pytest.raises(ValueError, match="k = 21 exceeds the 20 vectors in the index; pass k <= 20"):
        fastret.topk_int8(queries, codes, scales, 21)
    with pytest.raises(TypeError, match="k must be an int"):
        fastret.topk_int8(queries, codes, scales, 2.0)


def test_wrong_dtypes(small):
    codes, scales, queries = small
    with pytest.raises(TypeError, match="codes must be int8, got float32"):
        fastret.topk_int8(queries, codes.astype(np.float32), scales, 1)
    with pytest.raises(TypeError, match="float32, float16 or float64"):
        fastret.topk_int8(queries.astype(np.int32), codes, scales, 1)
    with pytest.raises(TypeError, match="scales must be floating point"):
        fastret.topk_int8(queries, codes, scales.astype(np.int32), 1)
    with pytest.raises(TypeError, match="numpy array or torch tensor"):
        fastret.topk_int8("query", codes, scales, 1)


def test_wrong_shapes(small):
    codes, scales, queries = small
    with pytest.raises(ValueError, match="has dimension 7 but the index has dimension 8"):
        fastret.topk_int8(queries[:, :7], codes, scales, 1)
    with pytest.raises(ValueError, match=r"must be 2-D \[n, dim\]"):
        fastret.topk_int8(queries[None], codes, scales, 1)
    with pytest.raises(ValueError, match="one scale per vector"):
        fastret.topk_int8(queries, codes, scales[:-1], 1)
    with pytest.raises(ValueError, match="one id per vector"):
        fastret.topk_int8(queries, codes, scales, 1, ids=np.arange(5))
    with pytest.raises(ValueError, match="ragged"):
        fastret.topk_int8([[1.0, 2.0], [3.0]], codes, scales, 1)


def test_empty_inputs(small):
    codes, scales, queries = small
    with pytest.raises(ValueError, match="queries is empty"):
        fastret.topk_int8(queries[:0], codes, scales, 1)
    with pytest.raises(ValueError, match="db codes is empty"):
        fastret.topk_int8(queries, codes[:0], scales[:0], 1)


def test_non_finite_values(small):
    codes, scales, queries = small
    queries[1, 3] = np.nan
    with pytest.raises(ValueError, match="NaN or inf in 1 row.*row 1"):
        fastret.topk_int8(queries, codes, scales, 1)
    bad_scales = scales.copy()
    bad_scales[4] = np.inf
    with pytest.raises(ValueError, match="finite and >= 0"):
        fastret.topk_int8(np.ones((1, 8), np.float32), codes, bad_scales, 1)


def test_query_codes_of_minus_128_are_rejected(small):
    codes, scales, _ = small
    q_codes = np.full((1, 8), -128, np.int8)
    with pytest.raises(ValueError, match=r"-128.*\[-127, 127\]"):
        fastret.topk_int8((q_codes, np.ones(1, np.float32)), codes, scales, 1)


def test_core_refuses_silent_conversions(small):
    codes, scales, _ = small
    ids = np.arange(len(codes), dtype=np.int64)
    q_codes, q_scales = fastret.quantize_int8(np.ones((2, 8), np.float32))
    with pytest.raises(TypeError):
        _core.topk_int8(q_codes.astype(np.float64), q_scales, [(codes, scales, ids, None)], 1)
    with pytest.raises(TypeError, match="segment 0 codes must be a C-contiguous"):
        _core.topk_int8(q_codes, q_scales, [(codes[:, ::2], scales, ids, None)], 1)
    with pytest.raises(TypeError, match="segment 0 scales"):
        _core.topk_int8(q_codes, q_scales, [(codes, scales.astype(np.float64), ids, None)], 1)
    with pytest.raises(ValueError, match=r"segment 1: codes must be 2-D \[n, 8\]"):
        _core.topk_int8(q_codes, q_scales, [(codes, scales, ids, None),
                                            (np.ascontiguousarray(codes[:, :4]), scales, ids, None)], 1)
    with pytest.raises(ValueError, match="deleted bitmap must be uint64"):
        _core.topk_int8(q_codes, q_scales, [(codes, scales, ids, np.zeros(3, np.uint64))], 1)
    with pytest.raises(ValueError, match=r"k must be in \[1, 20\]"):
        _core.topk_int8(q_codes, q_scales, [(codes, scales, ids, None)], 21)
    with pytest.raises(ValueError, match="k must be in"):
        _core.topk_int8(q_codes[:0], q_scales[:0], [(codes, scales, ids, None)], 1)


def test_core_ranks_nan_scores_last_and_never_reads_past_its_lists(simd_path):
    # Regression: zero scales times an overflowing query product gave NaN scores, short per-thread
    # lists and a merge that read past them (a segfault, or ids such as -453618317875033993).
    codes = np.full((100, 64), 127, np.int8)
    segment = (codes, np.zeros(100, np.float32), np.arange(100, dtype=np.int64), None)
    for n_queries in (1, 7):
        q = np.full((n_queries, 64), 127, np.int8)
        scores, rows = _core.topk_int8(q, np.full(n_queries, 3e36, np.float32), [segment], 10)
        assert np.isneginf(scores).all()
        np.testing.assert_array_equal(rows, np.tile(np.arange(10), (n_queries, 1)))


@pytest.mark.parametrize("n_queries", [1, 7])
def test_core_is_exact_with_negative_and_zero_scales(simd_path, rng, n_queries):
    # The core skips tiles whose best possible score misses the heap's threshold; that bound
    # assumes scales >= 0, so tiles holding a negative scale must be scored row by row.
    codes = rng.integers(-127, 128, (300, 40), dtype=np.int8)
    scales = rng.uniform(-1, 1, 300).astype(np.float32)
    scales[::7] = 0
    q_codes = rng.integers(-63, 64, (n_queries, 40), dtype=np.int8)
    q_scales = rng.uniform(-1, 1, n_queries).astype(np.float32)
    scores, rows = _core.topk_int8(q_codes, q_scales, [(codes, scales, np.arange(300, dtype=np.int64), None)], 15)
    expected = (((q_codes.astype(np.int64) @ codes.astype(np.int64).T).astype(np.float32) * q_scales[:, None])
                * scales[None, :])
    order = np.lexsort((np.broadcast_to(np.arange(300), expected.shape), -expected), axis=-1)[:, :15]
    np.testing.assert_array_equal(rows, order)
    np.testing.assert_array_equal(scores, np.take_along_axis(expected, order, axis=1))

    # The second tile's largest dot product is -1, yet a row of it scores (-100 * 1) * -0.5 = 50;
    # likewise with the signs moved to the query scale.
    codes = np.zeros((128, 4), np.int8)
    codes[:64, 0], codes[64:, 0], codes[100, 0] = 10, -1, -100
    scales = np.ones(128, np.float32)
    scales[64:], scales[100] = -1, -0.5
    q_codes = np.tile(np.array([[1, 0, 0, 0]], np.int8), (n_queries, 1))
    fastret.set_num_threads(1)  # one heap sees both tiles: the first fills it
    try:
        scores, rows = _core.topk_int8(q_codes, np.ones(n_queries, np.float32),
                                       [(codes, scales, np.arange(128, dtype=np.int64), None)], 5)
        assert (rows[:, 0] == 100).all() and (scores[:, 0] == 50).all()
        codes[:64, 0], codes[64:, 0], codes[100, 0] = -10, 1, -100
        scales[64:], scales[100] = 1, 0.5
        scores, rows = _core.topk_int8(q_codes, np.full(n_queries, -1, np.float32),
                                       [(codes, scales, np.arange(128, dtype=np.int64), None)], 5)
        assert (rows[:, 0] == 100).all() and (scores[:, 0] == 50).all()
    finally:
        fastret.set_num_threads(0)


def test_scores_that_would_overflow_float32_are_refused():
    codes, scales = np.full((100, 64), 127, np.int8), np.zeros(100, np.float32)
    query = np.full((1, 64), 3e38, np.float32)
    for search in (fastret.topk_int8, fastret.topk_int8_ref):
        with pytest.raises(ValueError, match="beyond float32's range.*normalize"):
            search(query, codes, scales, 10)
    index = fastret.Index(64)
    index.add((codes, scales))
    with pytest.raises(ValueError, match="beyond float32's range"):
        index.search(query, k=10)
    big = fastret.Index(4)
    big.add(np.full((3, 4), 1e30, np.float32))
    with pytest.raises(ValueError, match="beyond float32's range"):
        big.search(np.full((1, 4), 1e30, np.float32), k=1)


def test_core_fills_a_short_result_when_rows_are_deleted(rng):
    codes, scales = quantized(rng, 70, 16)
    deleted = np.zeros(2, np.uint64)
    deleted[0] = np.uint64((1 << 64) - 1)  # rows 0..63
    segment = (codes, scales, np.arange(70, dtype=np.int64), deleted)
    scores, rows = _core.topk_int8(*quantized(rng, 1, 16), [segment], 10)
    assert sorted(rows[0, :6]) == list(range(64, 70))
    assert (rows[0, 6:] == -1).all() and np.isneginf(scores[0, 6:]).all()


@pytest.mark.parametrize("m, d, n", [(1, 1, 1), (3, 5, 7), (17, 8, 8), (20, 97, 130)])
def test_padded_int_mm_is_exact(rng, m, d, n):
    from fastret.search.torch_backend import int_mm_padded

    a = torch.from_numpy(rng.integers(-127, 128, (m, d), dtype=np.int8))
    b = torch.from_numpy(rng.integers(-128, 128, (n, d), dtype=np.int8))
    expected = a.numpy().astype(np.int64) @ b.numpy().astype(np.int64).T
    np.testing.assert_array_equal(int_mm_padded(a, b).numpy(), expected)
