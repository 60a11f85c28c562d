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


# ---------------------------------------------------------------------------------- segments and deletes


class Reference:
    """What the index should hold: live id -> float vector, searched with topk_int8_ref."""

    def __init__(self, dim):
        self.dim, self.vectors = dim, {}

    def search(self, queries, k):
        ids = np.array(sorted(self.vectors), np.int64)
        codes, scales = fastret.quantize_int8(np.stack([self.vectors[i] for i in ids]))
        return fastret.topk_int8_ref(queries, codes, scales, k, ids=ids)


@pytest.mark.parametrize("seed", range(4))
def test_random_adds_deletes_saves_loads_and_merges_match_the_reference(tmp_path, seed):
    rng = np.random.default_rng(seed)
    dim, next_id = 24, 0
    index, ref = fastret.Index(dim, store_float16=True), Reference(dim)
    for step in range(40):
        op = rng.choice(["add", "add", "delete", "search", "save_file", "save_dir", "merge"])
        if op == "add" or not ref.vectors:
            n = int(rng.integers(1, 80))
            vectors = unit_rows(rng, n, dim)
            ids = np.arange(next_id, next_id + n) * 3 + 1
            next_id += n
            index.add(vectors, ids=ids)
            ref.vectors.update(zip(ids.tolist(), vectors))
        elif op == "delete":
            live = np.array(sorted(ref.vectors))
            chosen = rng.choice(live, size=int(rng.integers(0, len(live) + 1)), replace=False)
            unknown = np.array([-5, 10**12, 2])  # ids are 1 mod 3: never present
            assert index.delete(np.concatenate([chosen, chosen[:2], unknown])) == len(chosen)
            for i in chosen.tolist():
                del ref.vectors[i]
        elif op == "save_file":
            index.save(tmp_path / f"step{step}.frt")
            index = fastret.Index.load(tmp_path / f"step{step}.frt", mmap=bool(rng.integers(2)))
        elif op == "save_dir":
            directory = tmp_path / "store"
            directory.mkdir(exist_ok=True)
            index.save(directory)
            index = fastret.Index.load(directory)
        elif op == "merge":
            index.merge(max_rows=None if rng.integers(2) else 50)
        assert len(index) == len(ref.vectors)
        if ref.vectors:
            queries = unit_rows(rng, 3, dim)
            k = int(rng.integers(1, len(ref.vectors) + 1))
            for got, want in zip(index.search(queries, k), ref.search(queries, k)):
                np.testing.assert_array_equal(got, want)


def test_a_deleted_id_never_comes_back_while_threads_search_and_delete(rng):
    docs = unit_rows(rng, 3000, 32)
    index = fastret.Index(32)
    index.add(docs[:2000])
    index.add(docs[2000:])  # two segments' worth: one mapped-like, one growing
    deleted_so_far = set()
    lock = threading.Lock()
    errors = []

    def delete_in_rounds(ids_to_delete):
        for ids in np.array_split(ids_to_delete, 30):
            index.delete(ids)
            with lock:
                deleted_so_far.update(ids.tolist())

    def search_repeatedly():
        try:
            for _ in range(30):
                with lock:
                    gone_before = set(deleted_so_far)
                _, found = index.search(docs[::97], 20)
                if gone_before & set(found.reshape(-1).tolist()):
                    errors.append(gone_before & set(found.reshape(-1).tolist()))
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    # one thread deletes the even ids, one those that are 1 mod 4; ids 3 mod 4 stay
    threads = [threading.Thread(target=delete_in_rounds, args=(ids,))
               for ids in (np.arange(0, 3000, 2), np.arange(1, 3000, 4))]
    threads += [threading.Thread(target=search_repeatedly) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(index) == 750 and deleted_so_far.isdisjoint(index.search(docs, 750)[1].reshape(-1).tolist())


def test_default_ids_are_unique_when_threads_add_at_once(rng):
    # Regression: ids were read outside the lock, so two threads got the same ones.
    index = fastret.Index(4)
    vectors = unit_rows(rng, 1, 4)

    def add_many(_):
        for _ in range(2500):
            index.add(vectors)

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(add_many, range(2)))
    _, ids = index.search(vectors, 5000)
    assert len(np.unique(ids)) == 5000 == len(index)


def test_add_add_search_save_at_once_every_result_is_a_real_state(rng, tmp_path):
    docs = unit_rows(rng, 400, 16)
    index = fastret.Index(16)
    index.add(docs[:100])
    stop = threading.Event()

    def adder(part):
        for chunk in np.array_split(part, 20):
            index.add(chunk)

    def saver():
        number = 0
        while not stop.is_set():
            index.save(tmp_path / f"s{number % 3}.frt")
            number += 1

    workers = [threading.Thread(target=adder, args=(docs[100:250],)), threading.Thread(target=adder, args=(docs[250:],)),
               threading.Thread(target=saver)]
    for worker in workers:
        worker.start()
    for _ in range(30):
        _, ids = index.search(docs[:100], 1)
        np.testing.assert_array_equal(ids[:, 0], np.arange(100))  # the first 100 are always there
    for worker in workers[:2]:
        worker.join()
    stop.set()
    workers[2].join()
    for saved in tmp_path.glob("*.frt"):
        loaded = fastret.Index.load(saved)
        assert 100 <= len(loaded) <= 400 and len(loaded) % 1 == 0
    assert len(index) == 400 and len(np.unique(index.search(docs[0], 400)[1])) == 400
    assert not list(tmp_path.glob(".*.tmp"))


def test_float16_copies_refuse_values_beyond_their_range(rng):
    # Regression: values past 65,504 became inf in the float16 copy and rescoring returned inf/nan.
    index = fastret.Index(4, store_float16=True)
    with pytest.raises(ValueError, match=r"beyond float16's range .* in 1 row\(s\), first at row 1"):
        index.add(np.array([[1, 0, 0, 0], [7e4, 0, 0, 0]], np.float32))
    assert len(index) == 0
    plain = fastret.Index(4)
    plain.add(np.array([[7e4, 0, 0, 0]], np.float32))  # no float16 copy, no limit
    assert len(plain) == 1


def test_segments_search_like_one_concatenated_index(rng, tmp_path):
    docs, queries = unit_rows(rng, 1000, 40), unit_rows(rng, 7, 40)
    docs[500:540] = docs[0]  # ties across segments
    ids = rng.permutation(1000).astype(np.int64)
    for start, stop in ((0, 130), (130, 131), (131, 700)):
        part = fastret.Index(40)
        part.add(docs[start:stop], ids=ids[start:stop])
        part.save(tmp_path / f"p{start}.frt")
    segments = [fastret.storage.store.open_segment_file(tmp_path / f"p{s}.frt") for s in (0, 130, 131)]
    index = fastret.Index.from_segments(segments, 40, store_float16=False)
    index.add(docs[700:], ids=ids[700:])  # plus the growing in-memory segment
    assert index.segment_count == 4
    whole = fastret.Index(40)
    whole.add(docs, ids=ids)
    for k in (1, 10, 1000):
        for got, want in zip(index.search(queries, k), whole.search(queries, k)):
            np.testing.assert_array_equal(got, want)


def test_delete_ignores_unknown_ids_and_counts_what_it_deleted(rng):
    index = fastret.Index(8)
    index.add(unit_rows(rng, 10, 8), ids=np.array([5, 5, 6, 7, 8, 9, 10, 11, 12, 13]))
    assert index.delete(5) == 2  # every vector with that id
    assert index.delete([5, 99, -1]) == 0
    assert index.delete(np.array([], np.int64)) == 0
    assert len(index) == 8
    with pytest.raises(ValueError, match="k = 9 exceeds the 8 vectors"):
        index.search(unit_rows(rng, 1, 8), 9)
    with pytest.raises(TypeError, match="ids must be integers"):
        index.delete(np.array([1.5]))
    index.merge()
    assert index.segment_count == 1 and len(index) == 8


def test_documents_name_search_results_and_refuse_unknown_ids(rng, tmp_path):
    index = fastret.Index(8)
    index.add(unit_rows(rng, 3, 8))
    assert not index.has_documents
    with pytest.raises(ValueError, match="no document ids"):
        index.documents(np.array([0]))
    from fastret.storage.doc_ids import PackedDocIds
    from fastret.storage.segment import Segment

    codes, scales = fastret.quantize_int8(unit_rows(rng, 3, 8))
    named = Segment(codes, scales, np.array([10, 11, 12]), doc_ids=PackedDocIds.from_list(["a", "b", "c"]))
    index = fastret.Index.from_segments([named], 8, store_float16=False)
    assert index.has_documents
    assert index.documents(np.array([[12, 10], [11, 11]])).tolist() == [["c", "a"], ["b", "b"]]
    index.delete(11)
    with pytest.raises(ValueError, match="id 11 is not in the index"):
        index.documents([11])
    index.save(tmp_path / "named.frt")  # document ids travel in the file
    assert fastret.Index.load(tmp_path / "named.frt").documents([10, 12]).tolist() == ["a", "c"]


def test_added_documents_must_be_one_str_per_vector(rng):
    index = fastret.Index(4)
    for bad in (["a"], "ab", ["a", 2]):
        with pytest.raises(TypeError, match="documents must be a sequence of 2 str"):
            index.add(unit_rows(rng, 2, 4), documents=bad)
    assert len(index) == 0
    index.add(unit_rows(rng, 2, 4), documents=["a", "b"])
    assert index.has_documents and index.documents([1, 0]).tolist() == ["b", "a"]
    index.add(unit_rows(rng, 1, 4))  # one vector without: the index no longer names documents
    assert not index.has_documents


def test_candidates_are_what_search_ranks(rng):
    """Index.candidates: the int8 top c of search, and the float dot products that rescoring sorts."""
    index = fastret.Index(24, store_float16=True)
    vectors = unit_rows(rng, 300, 24)
    vectors[200:210] = vectors[:10]  # ties
    index.add(vectors[:150])
    index.add(vectors[150:])
    index.delete([3, 7, 151])
    queries = unit_rows(rng, 12, 24)
    scores, ids, exact = index.candidates(queries, 20, exact=True)
    expected = index.search(queries, 20)
    np.testing.assert_array_equal(scores, expected[0])
    np.testing.assert_array_equal(ids, expected[1])
    floats = vectors.astype(np.float16).astype(np.float32)
    np.testing.assert_allclose(exact, np.einsum("qcd,qd->qc", floats[ids], queries), rtol=1e-5, atol=1e-6)
    order = np.lexsort((ids, -exact), axis=-1)[:, :5]
    rescored = index.search(queries, 5, rescore=True, rescore_factor=4)
    np.testing.assert_array_equal(np.take_along_axis(ids, order, 1), rescored[1])
    np.testing.assert_array_equal(np.take_along_axis(exact, order, 1), rescored[0])
    assert index.candidates(queries, 3)[2] is None
    plain = fastret.Index(24)
    plain.add(vectors)
    with pytest.raises(ValueError, match="float16 copies"):
        plain.candidates(queries, 1, exact=True)
    with pytest.raises(ValueError, match="exceeds"):
        index.candidates(queries, 298)
