"""fastret.search.distributed: a ShardedIndex on a local Ray (2 CPUs) answers exactly as one Index over
the same vectors, routes adds and deletes, and survives killed actors without a wrong answer."""

import os
import re
import subprocess
import sys
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastret
from fastret.search import binary
from fastret.search.hybrid import HybridSearcher
from fastret.search.lexical import LexicalIndex
from fastret.search.rules import merge_candidates, rescored

from conftest import unit_rows

ray = pytest.importorskip("ray", reason="needs ray (pip install 'fastret[distributed]'; make test installs it)")
distributed = pytest.importorskip("fastret.search.distributed")

DIM = 32
SIZES = (700, 500, 6)  # the last shard holds fewer vectors than some searches' k
# Rounds of the kill test in `make test`; FASTRET_KILL_ROUNDS=20 for the acceptance run.
KILL_ROUNDS = int(os.environ.get("FASTRET_KILL_ROUNDS", "3"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Shard files, and the same vectors in one reference Index: exact duplicates in different
    shards (score ties across shards), ids not in row order, document ids."""
    rng = np.random.default_rng(7)
    vectors = unit_rows(rng, sum(SIZES), DIM)
    vectors[700:740] = vectors[0:40]  # shard 1 repeats shard 0's first rows
    vectors[1200:1203] = vectors[0:3]  # and so does the small shard
    ids = rng.permutation(np.arange(10, 10 + 2 * sum(SIZES), 2)).astype(np.int64)  # even ids
    documents = [f"doc-{i}" for i in ids]
    fields = [{"year": 1990 + int(i) % 30, "mesh": ["Humans", "Mice", "Aged"][: int(i) % 4]} for i in ids]
    directory = tmp_path_factory.mktemp("shards")
    paths, start = [], 0
    for number, size in enumerate(SIZES):
        part = fastret.Index(DIM, store_float16=True)
        part.add(vectors[start : start + size], ids[start : start + size], documents=documents[start : start + size],
                 fields=fields[start : start + size])
        paths.append(directory / f"part-{number}.frt")
        part.save(paths[-1])
        start += size
    reference = fastret.Index(DIM, store_float16=True)
    reference.add(vectors, ids, documents=documents, fields=fields)
    return paths, reference, vectors


@pytest.fixture(scope="module")
def sharded(ray_session, corpus):
    """3 shards, the first with 2 replicas: 4 actors of half a CPU each."""
    paths, _, _ = corpus
    return distributed.ShardedIndex([[p] for p in paths], replicas=[2, 1, 1], num_cpus=0.5, timeout_s=120)


def assert_same(got, expected):
    np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_array_equal(got[0], expected[0])


@pytest.mark.parametrize("k", [1, 10, 50])
@pytest.mark.parametrize("rescore", [False, True])
def test_search_is_identical_to_one_index(sharded, corpus, k, rescore):
    _, reference, vectors = corpus
    queries = np.concatenate([unit_rows(np.random.default_rng(k), 30, DIM), vectors[:10]])
    got = sharded.search(queries, k, rescore=rescore)
    assert_same(got, reference.search(queries, k, rescore=rescore))
    assert got[0].dtype == np.float32 and got[1].dtype == np.int64 and got[1].shape == (40, k)


def test_ties_across_shards_and_k_beyond_a_shard(sharded, corpus):
    _, reference, vectors = corpus
    # vectors[0] is stored in all three shards: its three copies tie at the top.
    scores, ids = sharded.search(vectors[:1], 3)
    assert scores[0, 0] == scores[0, 1] == scores[0, 2]
    assert list(ids[0]) == sorted(ids[0])  # ties go to the lower id, whichever shard holds it
    assert_same((scores, ids), reference.search(vectors[:1], 3))
    # k larger than the small shard (6 vectors): it returns all it has.
    for rescore in (False, True):
        assert_same(sharded.search(vectors[:3], 200, rescore=rescore),
                    reference.search(vectors[:3], 200, rescore=rescore))
    assert_same(sharded.search(vectors[:2], len(reference)), reference.search(vectors[:2], len(reference)))


def test_torch_and_single_vector_queries(sharded, corpus):
    torch = pytest.importorskip("torch")
    _, reference, _ = corpus
    query = unit_rows(np.random.default_rng(11), 1, DIM)[0]
    scores, ids = sharded.search(torch.from_numpy(query), 5)
    assert isinstance(ids, torch.Tensor)
    assert_same((scores.numpy(), ids.numpy()), reference.search(query, 5))


def test_len_dim_documents_and_placement(sharded, corpus):
    _, reference, _ = corpus
    assert len(sharded) == len(reference) == sum(SIZES)
    assert sharded.dim == DIM and sharded.store_float16 and sharded.has_documents
    assert sharded.replica_counts == [2, 1, 1]
    _, ids = reference.search(unit_rows(np.random.default_rng(5), 4, DIM), 7)
    assert sharded.documents(ids).tolist() == reference.documents(ids).tolist()
    with pytest.raises(ValueError, match="not in the index"):
        sharded.documents([1])  # every id is even
    assert distributed.place([5, 100, 60, 50], 2) == [[0, 1], [2, 3]]  # 100+5 against 60+50
    assert distributed.place([3, 3, 3], 3) == [[0], [1], [2]]


def test_bad_input_gets_the_errors_of_index(sharded):
    query = np.ones((1, DIM), np.float32)
    with pytest.raises(ValueError, match="exceeds"):
        sharded.search(query, len(sharded) + 1)
    with pytest.raises(ValueError, match="dimension"):
        sharded.search(np.ones((1, DIM + 1), np.float32), 3)
    with pytest.raises(ValueError, match="NaN"):
        sharded.search(np.full((1, DIM), np.nan, np.float32), 3)
    with pytest.raises(TypeError, match="k must be an int"):
        sharded.search(query, 2.5)
    with pytest.raises(ValueError, match="float queries"):
        sharded.search((np.ones((1, DIM), np.int8), np.ones(1, np.float32)), 3, rescore=True)
    with pytest.raises(ValueError, match="normalize"):
        sharded.search(np.full((1, DIM), 3e38, np.float32), 3)  # raised in the shards, passed on as it is
    before = len(sharded)
    with pytest.raises(ValueError, match="NaN or inf"):
        sharded.add(np.full((2, DIM), np.inf, np.float32))
    with pytest.raises(TypeError, match="integers"):
        sharded.delete(np.array([1.5]))
    assert len(sharded) == before  # nothing entered the log
    with pytest.raises(ValueError, match="replicas"):
        distributed.ShardedIndex([["a.frt"]], replicas=0)
    with pytest.raises(ValueError, match="non-empty"):
        distributed.ShardedIndex([[]])
    with pytest.raises(TypeError, match="list"):
        distributed.ShardedIndex("a.frt")


WORDS = ["statin", "asthma", "cancer", "tea", "salt", "heart", "vitamin"]


@pytest.mark.parametrize("spec", [{"year": {"$gte": 2015}}, {"mesh": "Aged"}, {"year": 1990}, {"year": 1700},
                                  {"$or": [{"mesh": {"$exists": False}}, {"id": {"$lt": 400}}]}])
def test_filters_are_evaluated_on_the_shards_as_one_index_would(sharded, corpus, spec):
    _, reference, vectors = corpus
    queries = vectors[[0, 5, 1201]]
    for rescore in (False, True):
        assert_same(sharded.search(queries, 20, rescore=rescore, filter=spec),
                    reference.search(queries, 20, rescore=rescore, filter=spec))
    some = reference.search(queries, 5, filter=spec)[1]
    assert sharded.fields(some, names=["year"]) == reference.fields(some, names=["year"])
    ids = np.concatenate([s.ids for s in reference.segments])
    np.testing.assert_array_equal(sharded.contains(ids, filter=spec), reference.contains(ids, filter=spec))
    with pytest.raises(ValueError, match="a row mask has no meaning across shards"):
        sharded.search(queries, 2, filter=np.ones(len(ids), bool))


@pytest.fixture(scope="module")
def tied(ray_session, tmp_path_factory):
    """Random data full of exact ties (400 vectors drawn from 12, shuffled ids, texts of 7 words) in
    one Index, a 2-shard ShardedIndex over 3 files and a LexicalIndex; some ids deleted in both."""
    rng = np.random.default_rng(3)
    vectors = unit_rows(rng, 12, DIM)[rng.integers(0, 12, 400)]
    ids = rng.permutation(1000)[:400].astype(np.int64)
    texts = [" ".join(rng.choice(WORDS, 3)) for _ in range(400)]
    directory = tmp_path_factory.mktemp("tied")
    files = []
    for number, (start, stop) in enumerate([(0, 150), (150, 300), (300, 400)]):
        part = fastret.Index(DIM, store_float16=True)
        part.add(vectors[start:stop], ids[start:stop])
        files.append(directory / f"tied-{number}.frt")
        part.save(files[-1])
    reference = fastret.Index(DIM, store_float16=True)
    reference.add(vectors, ids)
    # num_cpus=0: the module's other ShardedIndex holds Ray's 2 CPUs
    sharded = distributed.ShardedIndex([files[:2], files[2:]], num_cpus=0, timeout_s=120)
    doomed = ids[rng.choice(400, 30, replace=False)]
    assert sharded.delete(doomed) == reference.delete(doomed) == 30
    return vectors, ids, ~np.isin(ids, doomed), reference, sharded, LexicalIndex.build(texts, ids)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), k=st.integers(1, 80), rescore=st.booleans())
def test_index_sharded_index_hybrid_and_the_reference_agree_on_ties(tied, seed, k, rescore):
    """Index, ShardedIndex and topk_int8_ref give the same ids and scores; so do HybridSearcher
    over an Index and over a ShardedIndex (BM25 on the caller)."""
    vectors, ids, live, reference, sharded, lexical = tied
    rng = np.random.default_rng(seed)
    queries = np.concatenate([unit_rows(rng, 2, DIM), vectors[rng.integers(0, 400, 3)]])
    expected = reference.search(queries, k, rescore=rescore)
    assert_same(sharded.search(queries, k, rescore=rescore), expected)
    if not rescore:
        codes, scales = fastret.quantize_int8(vectors[live])
        assert_same(fastret.topk_int8_ref(queries, codes, scales, k, ids=ids[live]), expected)
    texts = [" ".join(rng.choice(WORDS, 2)) for _ in queries]
    for method in ("rrf", "weighted"):
        options = dict(method=method, candidates=k + int(rng.integers(0, 20)), rescore=rescore)
        got = HybridSearcher(sharded, lexical).search(texts, queries, k, **options)
        assert_same(got, HybridSearcher(reference, lexical).search(texts, queries, k, **options))
        assert not np.isin(got[1], ids[~live]).any()


def test_candidates_and_contains_are_those_of_index(tied):
    vectors, ids, live, reference, sharded, _ = tied
    queries = vectors[:4]
    for exact in (False, True):
        got, expected = sharded.candidates(queries, 50, exact=exact), reference.candidates(queries, 50, exact=exact)
        assert_same(got[:2], expected[:2])
        np.testing.assert_array_equal(got[2], expected[2])
    asked = np.concatenate([ids, [-5, 10**9]]).reshape(2, -1)
    np.testing.assert_array_equal(sharded.contains(asked), reference.contains(asked))
    assert sharded.contains(asked).sum() == live.sum()
    assert isinstance(sharded, fastret.search.rules.Searchable) and isinstance(reference, fastret.search.rules.Searchable)


def shard_indexes(sharded, deleted):
    """Each shard of `sharded` as its own Index over the same files, `deleted` ids deleted."""
    indexes = []
    for files in sharded.shard_files:
        segments = [segment for path in files for segment in fastret.Index.load(path).segments]
        indexes.append(fastret.Index.from_segments(segments, sharded.dim, sharded.store_float16))
        indexes[-1].delete(deleted)
    return indexes


def assert_not_worse(got, one):
    """Rank by rank, each of `got` ranks at or above `one`'s by the tie rule (score, then lower id)."""
    (got_scores, got_ids), (one_scores, one_ids) = got, one
    assert ((got_scores > one_scores) | ((got_scores == one_scores) & (got_ids <= one_ids))).all()


@pytest.mark.parametrize("k", [10, 40])
@pytest.mark.parametrize("rescore", [False, True])
def test_binary_first_stage_keeps_each_shards_own_candidates(tied, k, rescore):
    """first_stage="binary" reaches the shards: each keeps its own top c x oversample by the binary
    score, and the result is exactly the merge of each shard's Index.candidates (ties everywhere);
    its int8 candidates are rank by rank at least as good as one Index's."""
    vectors, ids, live, reference, sharded, _ = tied
    queries = np.concatenate([unit_rows(np.random.default_rng(k), 4, DIM), vectors[:3]])
    stage = dict(first_stage="binary", oversample=1)
    c = k * 2 if rescore else k
    parts = [shard.candidates(queries, min(c, len(shard)), exact=rescore, **stage)
             for shard in shard_indexes(sharded, ids[~live])]
    merged = merge_candidates(parts, c)
    got = sharded.search(queries, k, rescore=rescore, rescore_factor=2, **stage)
    assert_same(got, rescored(merged, k) if rescore else merged[:2])
    exact = sharded.search(queries, k, rescore=rescore, rescore_factor=2)
    assert not np.array_equal(got[1], exact[1])  # the bits did pick the candidates
    got_candidates = sharded.candidates(queries, c, exact=rescore, **stage)
    assert_same(got_candidates[:2], merged[:2])
    assert_not_worse(got_candidates[:2], reference.candidates(queries, c, **stage)[:2])


def test_binary_first_stage_on_one_shard_is_identical_to_index(tied):
    vectors, ids, live, reference, sharded, _ = tied
    one = distributed.ShardedIndex([sum(sharded.shard_files, [])], num_cpus=0, timeout_s=120)
    try:
        one.delete(ids[~live])
        queries = np.concatenate([unit_rows(np.random.default_rng(8), 4, DIM), vectors[:3]])
        for rescore in (False, True):
            for oversample in (1, 3, None):
                options = dict(rescore=rescore, first_stage="binary", oversample=oversample)
                assert_same(one.search(queries, 12, **options), reference.search(queries, 12, **options))
        got = one.candidates(queries, 30, exact=True, first_stage="binary", oversample=2)
        expected = reference.candidates(queries, 30, exact=True, first_stage="binary", oversample=2)
        assert_same(got[:2], expected[:2])
        np.testing.assert_array_equal(got[2], expected[2])
    finally:
        ray.kill(one.shard_actors(0)[0], no_restart=True)


def test_binary_first_stage_under_a_filter_on_shards(sharded, corpus):
    _, reference, vectors = corpus
    queries = np.concatenate([unit_rows(np.random.default_rng(13), 6, DIM), vectors[[0, 5]]])
    spec = {"year": {"$gte": 2005}}
    passing = reference.contains(np.concatenate([s.ids for s in reference.segments]), filter=spec).sum()
    # every passing row a candidate: the exact filtered search, on shards as in one index
    every = sharded.search(queries, 10, filter=spec, first_stage="binary", oversample=int(passing))
    assert_same(every, reference.search(queries, 10, filter=spec))
    few = sharded.search(queries, 10, filter=spec, first_stage="binary", oversample=1)
    assert reference.contains(few[1], filter=spec).all()
    assert not np.array_equal(few[1], every[1])
    assert_not_worse(few, reference.search(queries, 10, filter=spec, first_stage="binary", oversample=1))
    # "auto" is resolved once, from every shard's live rows (not the passing ones, as one Index does)
    resolved = binary.auto_oversample(len(reference), 10)
    assert_same(sharded.search(queries, 10, filter=spec, first_stage="binary"),
                sharded.search(queries, 10, filter=spec, first_stage="binary", oversample=resolved))


def test_bad_first_stage_arguments_get_the_errors_of_index(sharded):
    query = np.ones((1, DIM), np.float32)
    with pytest.raises(ValueError, match="oversample must be >= 1"):
        sharded.search(query, 3, first_stage="binary", oversample=0)
    with pytest.raises(ValueError, match="oversample must be 'auto' or an int"):
        sharded.search(query, 3, first_stage="binary", oversample="x")
    with pytest.raises(ValueError, match="oversample .binary candidates per result. applies to the binary first stage only"):
        sharded.search(query, 3, oversample=4)
    with pytest.raises(ValueError, match="first_stage must be one of 'int8', 'binary', got 'bits'"):
        sharded.candidates(query, 3, first_stage="bits")


def test_adds_and_deletes_are_routed(sharded, corpus):
    _, reference, _ = corpus
    rng = np.random.default_rng(21)
    queries = unit_rows(rng, 30, DIM)
    new = unit_rows(rng, 50, DIM)
    sharded.add(new, documents=[f"new-{i}" for i in range(50)])
    reference.add(new, documents=[f"new-{i}" for i in range(50)])
    assert len(sharded) == len(reference)
    # Default ids continue from the largest id in any shard, as in one index.
    assert_same(sharded.search(new[:5], 1), reference.search(new[:5], 1))
    assert sharded.documents(reference.search(new[:5], 1)[1][:, 0]).tolist() == [f"new-{i}" for i in range(5)]
    explicit = unit_rows(rng, 3, DIM)
    sharded.add(explicit, ids=[1, 3, 5], fields=[{"year": 1980}] * 3)
    reference.add(explicit, ids=[1, 3, 5], fields=[{"year": 1980}] * 3)
    assert not sharded.has_documents
    assert sharded.fields([1, 5]) == reference.fields([1, 5]) == [{"year": 1980}] * 2
    assert_same(sharded.search(queries, 4, filter={"year": 1980}), reference.search(queries, 4, filter={"year": 1980}))
    # Delete ids from every shard, old and new, one twice, and ids that are nowhere.
    _, found = reference.search(queries, 8)
    doomed = np.concatenate([np.unique(found)[:40], [3, 3, 10**12, -7]])
    assert sharded.delete(doomed) == reference.delete(doomed) > 0
    assert sharded.delete(doomed) == 0
    assert len(sharded) == len(reference)
    for rescore in (False, True):
        got = sharded.search(queries, 12, rescore=rescore)
        assert_same(got, reference.search(queries, 12, rescore=rescore))
        assert not np.isin(got[1], doomed).any()


def test_save_writes_what_index_save_writes(sharded, corpus, tmp_path):
    _, reference, _ = corpus
    queries = unit_rows(np.random.default_rng(31), 10, DIM)
    sharded.save(tmp_path / "all.frt")
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    sharded.save(store_dir)
    # no part files left (nor their sign bits, fields, field indexes or lock files)
    crc = f"{fastret.storage.index_file.read_header(tmp_path / 'all.frt').data_crc:08x}"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".all.frt.lock", "all.frt", f"all.frt.{crc}.bits",
                                                          f"all.frt.{crc}.fields.arrow", f"all.frt.{crc}.fields.index",
                                                          "store"]
    for saved in (fastret.Index.load(tmp_path / "all.frt"), fastret.Index.load(store_dir)):
        assert len(saved) == len(reference)
        assert_same(saved.search(queries, 9, rescore=True), reference.search(queries, 9, rescore=True))


@pytest.mark.parametrize("round_", range(KILL_ROUNDS))
def test_a_killed_actor_never_gives_a_wrong_answer(sharded, corpus, round_):
    """An actor killed while searches run (the replicated shard's, then each single one's): every
    search returns the right answer or ShardUnavailableError; the restarted actor reloads its file,
    catches up with the adds and deletes of the log (one made while it restarts), and answers."""
    _, reference, _ = corpus
    rng = np.random.default_rng(100 + round_)
    queries = unit_rows(rng, 20, DIM)
    shard = round_ % 3
    victim = sharded.shard_actors(shard)[round_ // 3 % len(sharded.shard_actors(shard))]
    outcomes = []
    killer = None
    for step in range(24):
        if step == 8:  # killed while the next search is in flight
            killer = threading.Thread(target=ray.kill, args=(victim,), kwargs={"no_restart": False})
            killer.start()
        if step == 16:  # an add and a delete while the victim may still be restarting
            new = unit_rows(rng, 2, DIM)
            sharded.add(new)
            reference.add(new)
            doomed = reference.search(queries[:1], 2)[1][0]
            assert sharded.delete(doomed) == reference.delete(doomed)
        rescore = bool(step % 2)
        expected = reference.search(queries, 10, rescore=rescore)
        try:
            got = sharded.search(queries, 10, rescore=rescore)
        except distributed.ShardUnavailableError as error:  # (Ray's memory monitor may kill another one)
            assert re.search(r"shard \d \(.*\.frt.*replica", str(error))
            outcomes.append("error")
            continue
        assert_same(got, expected)
        outcomes.append("ok")
    killer.join()
    assert outcomes.count("ok") >= 1
    # Afterwards every replica answers again (round robin reaches each of them), exactly.
    for step in range(4):
        assert_same(sharded.search(queries, 10, rescore=bool(step % 2)),
                    reference.search(queries, 10, rescore=bool(step % 2)))
    assert len(sharded) == len(reference)


def test_a_shard_that_stays_down_gets_a_clear_error(ray_session, corpus):
    paths, _, _ = corpus
    index = distributed.ShardedIndex([[paths[2]], [paths[1]]], num_cpus=0, timeout_s=3, max_restarts=0)
    query = np.ones((1, DIM), np.float32)
    assert index.search(query, 3)[1].shape == (1, 3)
    ray.kill(index.shard_actors(1)[0], no_restart=True)
    with pytest.raises(distributed.ShardUnavailableError, match=r"shard 1 \(.*part-1\.frt; 1 replica"):
        index.search(query, 3)


def test_import_fastret_does_not_import_ray():
    """ray is an optional extra: only `import fastret.search.distributed` loads it."""
    code = "import sys, fastret; print('ray' in sys.modules, 'fastret.search.distributed' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_shard_actors_search_without_torch(sharded, corpus):
    import ray

    _, reference, _ = corpus
    queries = unit_rows(np.random.default_rng(5), 3, DIM)
    assert_same(sharded.search(queries, 5, rescore=True), reference.search(queries, 5, rescore=True))

    def heavy_modules(server):
        import sys

        return sorted(name for name in ("torch", "triton", "transformers") if name in sys.modules)

    for replicas in sharded._actors:
        for actor in replicas:
            assert ray.get(actor.__ray_call__.remote(heavy_modules)) == []
