import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import fastret

from conftest import needs_cuda, unit_rows


def exact_rescore_ref(queries, vectors, ids, candidate_ids, k):
    """Re-rank candidate ids by float32 dot products with the float16-rounded vectors."""
    row_of = {int(i): r for r, i in enumerate(ids)}
    out_scores, out_ids = [], []
    for query, cands in zip(queries, candidate_ids):
        rows = np.array([row_of[int(i)] for i in cands])
        exact = vectors[rows].astype(np.float16).astype(np.float32) @ query
        order = np.lexsort((ids[rows], -exact))[:k]
        out_scores.append(exact[order])
        out_ids.append(ids[rows][order])
    return np.array(out_scores), np.array(out_ids)


def test_search_equals_reference_on_quantized_vectors(rng):
    docs, queries = unit_rows(rng, 500, 97), unit_rows(rng, 9, 97)
    index = fastret.Index(97)
    index.add(docs)
    codes, scales = fastret.quantize_int8(docs)
    for k in (1, 10, 500):
        scores, ids = index.search(queries, k)
        ref_scores, ref_ids = fastret.topk_int8_ref(queries, codes, scales, k)
        np.testing.assert_array_equal(ids, ref_ids)
        np.testing.assert_array_equal(scores, ref_scores)
        assert scores.dtype == np.float32 and ids.dtype == np.int64 and scores.shape == (9, k)


def test_incremental_adds_equal_one_add(rng):
    docs, queries = unit_rows(rng, 700, 64), unit_rows(rng, 5, 64)
    whole, pieces = fastret.Index(64), fastret.Index(64)
    whole.add(docs)
    for start, stop in ((0, 1), (1, 64), (64, 65), (65, 400), (400, 700)):
        pieces.add(docs[start:stop])
    assert len(pieces) == 700
    for a, b in zip(whole.search(queries, 20), pieces.search(queries, 20)):
        np.testing.assert_array_equal(a, b)


def test_default_ids_continue_and_external_ids_are_returned(rng):
    index = fastret.Index(8)
    first = unit_rows(rng, 3, 8)
    index.add(first)
    index.add(unit_rows(rng, 2, 8), ids=np.array([1000, 7]))
    index.add(unit_rows(rng, 1, 8))
    _, ids = index.search(np.eye(8, dtype=np.float32), 6)
    assert sorted(ids[0].tolist()) == [0, 1, 2, 7, 1000, 1001]  # default ids go on after the largest
    _, top = index.search(first[1], 1)
    assert top[0, 0] == 1


def test_external_ids_break_ties(rng):
    vector = unit_rows(rng, 1, 16)
    index = fastret.Index(16)
    index.add(np.repeat(vector, 4, axis=0), ids=np.array([40, 10, 30, 20]))
    scores, ids = index.search(vector, 4)
    np.testing.assert_array_equal(ids, [[10, 20, 30, 40]])
    assert (scores == scores[0, 0]).all()


def test_adding_quantized_vectors(rng):
    docs = unit_rows(rng, 50, 32)
    codes, scales = fastret.quantize_int8(docs)
    a, b = fastret.Index(32), fastret.Index(32)
    a.add(docs)
    b.add((codes, scales))
    queries = unit_rows(rng, 4, 32)
    for x, y in zip(a.search(queries, 5), b.search(queries, 5)):
        np.testing.assert_array_equal(x, y)


def test_memory_is_codes_plus_scale_and_id(rng):
    index = fastret.Index(384)
    index.add(unit_rows(rng, 1000, 384))
    assert index.nbytes == 1000 * 384 + 1000 * (4 + 8)
    with_float16 = fastret.Index(384, store_float16=True)
    with_float16.add(unit_rows(rng, 1000, 384))
    assert with_float16.nbytes == 1000 * 384 * 3 + 1000 * 12


@pytest.mark.parametrize("factor", [1, 4, 50])
def test_rescoring_reranks_candidates_by_float_dot_products(rng, factor):
    docs, queries = unit_rows(rng, 300, 48), unit_rows(rng, 6, 48)
    ids = rng.permutation(300).astype(np.int64) * 3
    index = fastret.Index(48, store_float16=True)
    index.add(docs, ids=ids)
    k = 10
    candidates = min(300, k * factor)
    _, cand_ids = index.search(queries, candidates)
    scores, found = index.search(queries, k, rescore=True, rescore_factor=factor)
    ref_scores, ref_ids = exact_rescore_ref(queries, docs, ids, cand_ids, k)
    np.testing.assert_array_equal(found, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-6, atol=1e-6)


def test_rescoring_with_all_candidates_is_exact_float_search(rng):
    docs, queries = unit_rows(rng, 200, 24), unit_rows(rng, 5, 24)
    index = fastret.Index(24, store_float16=True)
    index.add(docs)
    _, ids = index.search(queries, 10, rescore=True, rescore_factor=20)
    exact = queries @ docs.astype(np.float16).astype(np.float32).T
    np.testing.assert_array_equal(ids, np.argsort(-exact, axis=1, kind="stable")[:, :10])


@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_round_trip(rng, tmp_path, mmap):
    docs, queries = unit_rows(rng, 130, 40), unit_rows(rng, 4, 40)
    index = fastret.Index(40, store_float16=True)
    index.add(docs, ids=np.arange(130) * 2 + 5)
    path = tmp_path / "docs.frt"
    index.save(path)
    loaded = fastret.Index.load(path, mmap=mmap)
    assert (len(loaded), loaded.dim, loaded.store_float16) == (130, 40, True)
    assert isinstance(loaded._snapshot()[0].codes, np.memmap) == mmap
    for rescore in (False, True):
        for a, b in zip(index.search(queries, 7, rescore=rescore), loaded.search(queries, 7, rescore=rescore)):
            np.testing.assert_array_equal(a, b)
    assert not list(tmp_path.glob("*.tmp"))


def test_add_after_mmap_load_copies_and_leaves_the_file_alone(rng, tmp_path):
    docs = unit_rows(rng, 20, 8)
    index = fastret.Index(8)
    index.add(docs)
    path = tmp_path / "i.frt"
    index.save(path)
    before = path.read_bytes()
    loaded = fastret.Index.load(path, mmap=True)
    loaded.add(unit_rows(rng, 5, 8))
    assert len(loaded) == 25 and path.read_bytes() == before
    _, ids = loaded.search(docs[3], 1)
    assert ids[0, 0] == 3


def test_empty_index_saves_loads_and_refuses_search(tmp_path):
    index = fastret.Index(12)
    index.save(tmp_path / "empty.frt")
    loaded = fastret.Index.load(tmp_path / "empty.frt")
    assert len(loaded) == 0 and loaded.dim == 12
    with pytest.raises(ValueError, match="index is empty; add vectors"):
        loaded.search(np.ones((1, 12), np.float32), 1)


def test_torch_queries_give_torch_results(rng):
    docs = unit_rows(rng, 30, 16)
    index = fastret.Index(16)
    index.add(torch.from_numpy(docs))
    scores, ids = index.search(torch.from_numpy(docs[:2]), 3)
    assert isinstance(scores, torch.Tensor) and isinstance(ids, torch.Tensor)
    assert ids[:, 0].tolist() == [0, 1]


def test_concurrent_searches_and_adds(rng):
    docs = unit_rows(rng, 1000, 32)
    index = fastret.Index(32)
    index.add(docs)
    queries = docs[:50]
    expected = index.search(queries, 1)[1][:, 0]
    stop = threading.Event()

    def keep_adding():
        while not stop.is_set():
            index.add(-docs[:10])  # never closer to a query than the query itself

    adder = threading.Thread(target=keep_adding)
    adder.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: index.search(queries, 1)[1][:, 0], range(40)))
    finally:
        stop.set()
        adder.join()
    for ids in results:
        np.testing.assert_array_equal(ids, expected)


@needs_cuda
def test_cuda_queries_search_on_the_gpu_with_cpu_results(rng):
    docs, queries = unit_rows(rng, 3000, 768), unit_rows(rng, 100, 768)
    index = fastret.Index(768, store_float16=True)
    index.add(docs, ids=np.arange(3000) * 7)
    for rescore in (False, True):
        cpu_scores, cpu_ids = index.search(queries, 10, rescore=rescore)
        scores, ids = index.search(torch.from_numpy(queries).cuda(), 10, rescore=rescore)
        assert ids.is_cuda
        np.testing.assert_array_equal(ids.cpu().numpy(), cpu_ids)
        np.testing.assert_allclose(scores.cpu().numpy(), cpu_scores, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------- bad input


def test_bad_dimension():
    with pytest.raises(ValueError, match=r"dim must be in \[1, 65536\]"):
        fastret.Index(0)
    with pytest.raises(TypeError, match="dim must be an int"):
        fastret.Index(3.5)


def test_bad_vectors(rng):
    index = fastret.Index(8)
    with pytest.raises(ValueError, match="dimension 9 but the index has dimension 8"):
        index.add(np.ones((2, 9), np.float32))
    with pytest.raises(ValueError, match="NaN or inf"):
        index.add(np.full((2, 8), np.nan, np.float32))
    with pytest.raises(TypeError, match="float32, float16 or float64"):
        index.add(np.ones((2, 8), np.int64))
    with pytest.raises(ValueError, match="vectors is empty"):
        index.add(np.ones((0, 8), np.float32))
    with pytest.raises(ValueError, match=r"\(codes int8 \[n, d\], scales float32 \[n\]\)"):
        index.add((np.ones((2, 8), np.int8),))
    assert len(index) == 0


def test_bad_ids(rng):
    index = fastret.Index(4)
    with pytest.raises(ValueError, match=r"one id per vector \(3\)"):
        index.add(np.ones((3, 4), np.float32), ids=np.arange(2))
    with pytest.raises(TypeError, match="ids must be integers"):
        index.add(np.ones((3, 4), np.float32), ids=np.arange(3.0))
    assert len(index) == 0


def test_bad_search_arguments(rng):
    index = fastret.Index(8)
    index.add(unit_rows(rng, 5, 8))
    with pytest.raises(ValueError, match="k = 6 exceeds the 5 vectors"):
        index.search(np.ones((1, 8), np.float32), 6)
    with pytest.raises(ValueError, match="rescore=True needs float16 copies; build the index with"):
        index.search(np.ones((1, 8), np.float32), 1, rescore=True)
    with_float16 = fastret.Index(8, store_float16=True)
    with_float16.add(unit_rows(rng, 5, 8))
    with pytest.raises(ValueError, match="rescore_factor must be an int >= 1"):
        with_float16.search(np.ones((1, 8), np.float32), 1, rescore=True, rescore_factor=0)
    q = fastret.quantize_int8(np.ones((1, 8), np.float32))
    with pytest.raises(ValueError, match="needs float queries"):
        with_float16.search(q, 1, rescore=True)
    with pytest.raises(ValueError, match="needs float vectors, not \\(codes, scales\\)"):
        with_float16.add(q)


def test_repr_and_properties(rng):
    index = fastret.Index(8, store_float16=True)
    index.add(unit_rows(rng, 3, 8))
    assert repr(index) == "fastret.Index(dim=8, count=3, segments=1, store_float16=True)"
    assert (index.dim, len(index), index.store_float16) == (8, 3, True)


@pytest.mark.parametrize("rescore", [False, True])
def test_torch_search_path_matches_the_cpu_core(rng, rescore):
    """The GPU search code (torch top-k with rank keys, torch rescoring), run on CPU tensors."""
    docs, queries = unit_rows(rng, 400, 33), unit_rows(rng, 7, 33)
    docs[200:260] = docs[0]
    queries[0] = docs[0]  # its top 10 are all ties
    index = fastret.Index(33, store_float16=True)
    index.add(docs, ids=rng.permutation(400) + 10)
    candidates = 40 if rescore else 10
    scores, ids = index._search_torch(torch.from_numpy(queries), 10, candidates, rescore)
    cpu_scores, cpu_ids = index.search(queries, 10, rescore=rescore)
    np.testing.assert_array_equal(ids.numpy(), cpu_ids)
    np.testing.assert_allclose(scores.numpy(), cpu_scores, rtol=1e-6, atol=1e-6)
