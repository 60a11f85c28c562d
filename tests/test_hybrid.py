import numpy as np
import pytest

import fastret
from fastret.search.hybrid import HybridSearcher, reciprocal_rank_fusion, weighted_fusion
from fastret.search.lexical import LexicalIndex

from conftest import unit_rows


def test_rrf_on_hand_made_rankings():
    dense = np.array([[10, 20, 30]])
    lexical = np.array([[30, 40, -1]])
    scores, ids = reciprocal_rank_fusion([dense, lexical], k=4)
    # 30: 1/63 + 1/61; 10: 1/61; 40: 1/62; 20: 1/62 (tie with 40: lower id first)
    assert ids.tolist() == [[30, 10, 20, 40]]
    np.testing.assert_allclose(scores[0], [1 / 63 + 1 / 61, 1 / 61, 1 / 62, 1 / 62], rtol=1e-6)


def test_rrf_pads_short_results_and_breaks_ties_by_id():
    scores, ids = reciprocal_rank_fusion([np.array([[7, -1]]), np.array([[5, -1]])], k=3)
    assert ids.tolist() == [[5, 7, -1]] and scores[0, 0] == scores[0, 1] and np.isneginf(scores[0, 2])


def test_weighted_fusion_normalises_each_side():
    dense = (np.array([[0.9, 0.5, 0.1]], np.float32), np.array([[1, 2, 3]]))
    lexical = (np.array([[12.0, 2.0, -np.inf]], np.float32), np.array([[3, 4, -1]]))
    scores, ids = weighted_fusion(dense, lexical, k=4, alpha=0.5)
    # dense: 1 -> 1, 2 -> 0.5, 3 -> 0; lexical: 3 -> 1, 4 -> 0
    assert ids.tolist() == [[1, 3, 2, 4]]
    np.testing.assert_allclose(scores[0], [0.5, 0.5, 0.25, 0.0], atol=1e-7)
    only_dense = weighted_fusion(dense, lexical, k=2, alpha=1.0)
    assert only_dense[1].tolist() == [[1, 2]]
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        weighted_fusion(dense, lexical, k=2, alpha=1.5)


def test_a_side_whose_scores_are_all_equal_counts_fully():
    dense = (np.array([[0.3, 0.3]], np.float32), np.array([[8, 9]]))
    lexical = (np.full((1, 2), -np.inf, np.float32), np.full((1, 2), -1))
    assert weighted_fusion(dense, lexical, k=2, alpha=0.4)[0].tolist() == [[np.float32(0.4)] * 2]


@pytest.fixture
def searcher(rng):
    texts = ["statins lower cholesterol", "vitamin d and asthma in children", "breast cancer and statins",
             "green tea", "exercise and heart disease", "salt and blood pressure"]
    vectors = unit_rows(rng, len(texts), 16)
    index = fastret.Index(16, store_float16=True)
    index.add(vectors, ids=np.arange(len(texts)) * 10, documents=[f"d{i}" for i in range(len(texts))])
    lexical = LexicalIndex.build(texts, ids=np.arange(len(texts)) * 10)
    return HybridSearcher(index, lexical), vectors


def test_a_document_found_by_one_side_only_is_fused_in(searcher):
    hybrid, vectors = searcher
    scores, ids = hybrid.search(["statins"], vectors[4:5], k=6, method="rrf", candidates=6)
    # the dense side ranks document 40 first; only the lexical side finds the statins documents
    assert ids[0, 0] in (0, 20, 40) and {0, 20, 40} <= set(ids[0].tolist())
    assert hybrid.index.documents(ids).shape == (1, 6)


def test_deleted_documents_never_come_back_from_either_side(searcher):
    hybrid, vectors = searcher
    hybrid.index.delete([0, 20])
    for method in ("rrf", "weighted"):
        _, ids = hybrid.search(["statins cholesterol cancer"], vectors[:1], k=4, method=method, candidates=4)
        assert not {0, 20} & set(ids.reshape(-1).tolist())


def test_bad_hybrid_arguments(searcher):
    hybrid, vectors = searcher
    with pytest.raises(ValueError, match="unknown fusion method 'max'"):
        hybrid.search(["a"], vectors[:1], 2, method="max")
    with pytest.raises(ValueError, match=r"candidates must be an int >= k \(5\)"):
        hybrid.search(["a"], vectors[:1], 5, candidates=3)
    with pytest.raises(ValueError, match="2 query texts but 1 query vectors"):
        hybrid.search(["a", "b"], vectors[:1], 2)
    with pytest.raises(TypeError, match=r"needs a Searchable \(fastret.Index, .*got LexicalIndex and Index"):
        HybridSearcher(hybrid.lexical, hybrid.index)
    with pytest.raises(ValueError, match="oversample must be >= 1"):
        hybrid.search(["a"], vectors[:1], 2, first_stage="binary", oversample=0)
    with pytest.raises(ValueError, match="oversample must be 'auto' or an int"):
        hybrid.search(["a"], vectors[:1], 2, first_stage="binary", oversample="x")
    with pytest.raises(ValueError, match="oversample .binary candidates per result. applies to the binary first stage only"):
        hybrid.search(["a"], vectors[:1], 2, oversample=3)


def test_the_binary_first_stage_picks_the_dense_candidates(rng):
    words = ["statins", "asthma", "cancer", "tea", "salt", "heart", "vitamin"]
    texts = [" ".join(rng.choice(words, 3)) for _ in range(300)]
    index = fastret.Index(32)
    index.add(unit_rows(rng, 300, 32))
    lexical = LexicalIndex.build(texts)
    hybrid = HybridSearcher(index, lexical)
    query_texts, queries = [" ".join(rng.choice(words, 2)) for _ in range(6)], unit_rows(rng, 6, 32)
    stage = dict(first_stage="binary", oversample=1)
    dense, lex = index.search(queries, 10, **stage), lexical.search(query_texts, 10)
    expected = {"rrf": reciprocal_rank_fusion([dense[1], lex[1]], 5), "weighted": weighted_fusion(dense, lex, 5)}
    for method in ("rrf", "weighted"):
        got = hybrid.search(query_texts, queries, 5, method=method, candidates=10, **stage)
        np.testing.assert_array_equal(got[1], expected[method][1])
        np.testing.assert_array_equal(got[0], expected[method][0])
        exact = hybrid.search(query_texts, queries, 5, method=method, candidates=10)
        assert not np.array_equal(got[1], exact[1])  # the bits did pick the dense candidates


def test_a_filter_limits_both_sides_before_they_rank(rng):
    texts = ["statins statins statins", "statins and cancer", "statins", "green tea", "salt"]
    ids = np.arange(len(texts)) * 10
    index = fastret.Index(16)
    index.add(unit_rows(rng, len(texts), 16), ids=ids, fields=[{"year": 2000 + i} for i in range(len(texts))])
    hybrid = HybridSearcher(index, LexicalIndex.build(texts, ids=ids))
    spec = {"year": {"$gte": 2001}}
    # the lexical side's best document (0) fails the filter: with one candidate per side, the
    # best one that passes (10 or 20) must still be found, not filtered away afterwards
    lex_scores, lex_ids = hybrid.lexical.search(["statins"], 1, allowed=index.contains(ids, filter=spec))
    assert lex_ids[0, 0] in (10, 20)
    for method in ("rrf", "weighted"):
        _, found = hybrid.search(["statins"], unit_rows(rng, 1, 16), k=3, method=method, candidates=3, filter=spec)
        assert 0 not in found[0].tolist() and set(found[0].tolist()) <= {10, 20, 30, 40}
    _, found = hybrid.search(["statins"], unit_rows(rng, 1, 16), k=3, candidates=3, filter={"year": 1990})
    assert (found == -1).all()
    with pytest.raises(ValueError, match=r"allowed must be bool \[5\]"):
        hybrid.lexical.search(["statins"], 1, allowed=np.ones(4, bool))
