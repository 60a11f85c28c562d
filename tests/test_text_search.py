"""TextSearch: the one chain from query texts to hits, and the rules it checks before embedding."""

import numpy as np
import pytest

import fastret
from fastret.search.filters import Filter, FilterError
from fastret.search.hybrid import DEFAULT_CANDIDATES, HybridSearcher
from fastret.search.lexical import LexicalIndex
from fastret.search.text import Hit, TextSearch

from conftest import unit_rows

TEXTS = [f"statins trial {i % 5} cohort {i % 3}" for i in range(40)]


class Recorder:
    """An encoder stand-in: fixed vectors for known texts, and a note of every call."""

    def __init__(self, vectors, dim=8):
        self.vectors, self.dim, self.calls = vectors, dim, []

    def encode(self, texts, batch_size=32, prompt_name=None):
        self.calls.append(list(texts))
        return self.vectors[: len(texts)]


@pytest.fixture
def setup(rng):
    vectors = unit_rows(rng, 40, 8)
    index = fastret.Index(8, store_float16=True)
    index.add(vectors, documents=[f"doc{i}" for i in range(40)],
              fields=[{"year": 2000 + i, "title": f"t{i}"} for i in range(40)])
    index.delete([5])
    queries = unit_rows(rng, 3, 8)
    return index, queries, Recorder(queries)


def test_hits_are_the_index_results_named_with_their_fields(setup):
    index, queries, encoder = setup
    search = TextSearch(index, encoder)
    hits = search.search(["a", "b", "c"], 4, filter={"year": {"$gte": 2010}}, rescore=True, fields=["title"])
    scores, ids = index.search(queries, 4, filter={"year": {"$gte": 2010}}, rescore=True)
    assert encoder.calls == [["a", "b", "c"]]
    for row, row_scores, row_ids in zip(hits, scores, ids):
        assert row == [Hit(f"doc{i}", float(s), {"title": f"t{i}"}) for s, i in zip(row_scores, row_ids)]
    binary = search.rank(["a", "b", "c"], 4, first_stage="binary", oversample=2)
    for got, want in zip(binary, index.search(queries, 4, first_stage="binary", oversample=2)):
        np.testing.assert_array_equal(got, want)


def test_a_filter_that_few_rows_pass_gives_short_rows_and_k_is_capped(setup):
    index, queries, encoder = setup
    hits = TextSearch(index, encoder).search(["a"], 100, filter='{"year": {"$lt": 2003}}')
    assert sorted(hit.id for hit in hits[0]) == ["doc0", "doc1", "doc2"]
    without_documents = fastret.Index(8)
    without_documents.add(queries)
    assert [hit.id for hit in TextSearch(without_documents).search(["q"], 1, vectors=queries[:1])[0]] == [0]


def test_hybrid_is_the_hybrid_searcher_with_its_defaults(setup):
    index, queries, encoder = setup
    lexical = LexicalIndex.build(TEXTS)
    got = TextSearch(index, encoder, lexical=lexical).rank(["statins trial 3", "cohort 2", "x"], 5, hybrid=True)
    want = HybridSearcher(index, lexical).search(["statins trial 3", "cohort 2", "x"], queries, 5,
                                                 candidates=max(5, DEFAULT_CANDIDATES))
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("options, error, message", [
    ({"filter": {"year": {"$near": 1}}}, FilterError, r"unknown operator '\$near'"),
    ({"filter": {"mesh": {"$under": "C04"}}}, FilterError, r"\$under needs the MeSH tree"),
    ({"oversample": 4}, ValueError, "applies to the binary first stage only"),
    ({"first_stage": "bits"}, ValueError, "first_stage must be one of"),
    ({"hybrid": True}, ValueError, "a hybrid search needs a BM25 index"),
    ({"fusion": "rrf"}, ValueError, "fusion, alpha and candidates set how a hybrid search fuses"),
    ({"k": 0}, ValueError, "k must be an int >= 1"),
])
def test_bad_arguments_fail_before_any_query_is_embedded(setup, options, error, message):
    index, _, encoder = setup
    options = {"k": 3, **options}
    with pytest.raises(error, match=message):
        TextSearch(index, encoder).search(["a"], **options)
    assert encoder.calls == []


def test_rescoring_without_float16_copies_and_mismatched_inputs_are_refused(rng, setup):
    _, queries, encoder = setup
    plain = fastret.Index(8)
    plain.add(unit_rows(rng, 5, 8))
    with pytest.raises(ValueError, match="rescore=True needs float16 copies"):
        TextSearch(plain, encoder).search(["a"], 2, rescore=True)
    assert encoder.calls == []
    with pytest.raises(ValueError, match="the model makes 16-d vectors but the index holds 8-d ones"):
        TextSearch(plain, Recorder(queries, dim=16))
    with pytest.raises(ValueError, match="2 query texts but 1 query vectors"):
        TextSearch(plain).rank(["a", "b"], 2, vectors=queries[:1])
    with pytest.raises(ValueError, match="has no encoder"):
        TextSearch(plain).rank(["a"], 2)
    with pytest.raises(TypeError, match=r"texts\[1\] is int"):
        TextSearch(plain).rank(["a", 3], 2, vectors=queries[:2])
    with pytest.raises(TypeError, match="fields must be a list of stored field names"):
        TextSearch(plain).search(["a"], 2, vectors=queries[:1], fields="title")
    assert isinstance(TextSearch(plain).filter({"id": {"$in": [1]}}), Filter)


def test_a_store_opens_with_its_bm25_index(tmp_path, rng):
    vectors = unit_rows(rng, 40, 8)
    index = fastret.Index(8)
    index.add(vectors, documents=[f"doc{i}" for i in range(40)])
    (tmp_path / "s").mkdir()
    index.save(tmp_path / "s")
    search = TextSearch.open(tmp_path / "s")
    with pytest.raises(ValueError, match="has no lexical index"):  # a store without BM25 says how to build it
        search.rank(["statins"], 3, vectors=vectors[:1], hybrid=True)
    LexicalIndex.build(TEXTS).save(tmp_path / "s")
    scores, ids = TextSearch.open(tmp_path / "s").rank(["statins trial 3"], 3, vectors=vectors[:1], hybrid=True)
    assert ids.shape == (1, 3) and (ids >= 0).all()
    assert TextSearch.open(tmp_path / "s").search(["q"], 1, vectors=vectors[7:8])[0][0].id == "doc7"


def test_bm25_alone_is_the_lexical_index_over_the_rows_that_pass(setup):
    index, _, _ = setup
    lexical = LexicalIndex.build(TEXTS)
    search = TextSearch(index, lexical=lexical)
    for got, want in zip(search.rank_bm25(["statins trial 3", "cohort 2"], 5),
                         lexical.search(["statins trial 3", "cohort 2"], 5)):
        np.testing.assert_array_equal(got, want)
    allowed = index.contains(lexical.ids, filter={"year": {"$lt": 2010}})
    for got, want in zip(search.rank_bm25(["trial 3"], 5, filter={"year": {"$lt": 2010}}),
                         lexical.search(["trial 3"], 5, allowed=allowed)):
        np.testing.assert_array_equal(got, want)
    assert TextSearch(None, lexical=lexical).rank_bm25(["cohort 1"], 3)[1].shape == (1, 3)
    with pytest.raises(ValueError, match="has no index: only rank_bm25"):
        TextSearch(None, lexical=lexical).rank(["x"], 3, vectors=np.zeros((1, 8), np.float32))
    with pytest.raises(ValueError, match="a hybrid search needs a BM25 index"):
        TextSearch(index).rank_bm25(["x"], 3)
