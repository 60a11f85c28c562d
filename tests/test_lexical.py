import json

import numpy as np
import pytest

import fastret
from fastret.storage import store
from fastret.search.lexical import LexicalIndex
from fastret.storage.store import StoreError

DOCS = ["statins lower cholesterol", "vitamin d and asthma", "breast cancer and statins risk", "green tea"]


def test_bm25_ranks_matching_documents_with_ids_and_ties_by_id():
    lexical = LexicalIndex.build(DOCS, ids=[7, 5, 9, 3])
    scores, ids = lexical.search(["statins", "tea", "zzz unknown"], k=3)
    assert set(ids[0, :2].tolist()) == {7, 9} and ids[0, 2] == -1  # no other document has the term
    assert ids[1].tolist() == [3, -1, -1] and np.isneginf(scores[1, 1:]).all()
    assert (ids[2] == -1).all()
    tied = LexicalIndex.build(["same words", "same words", "same words"], ids=[30, 10, 20])
    assert tied.search(["same"], 3)[1].tolist() == [[10, 20, 30]]


def test_saved_into_a_store_atomically_and_loaded_with_it(tmp_path):
    directory = tmp_path / "s"
    directory.mkdir()
    store.write_manifest(directory, {"dim": 4, "float16": False}, complete=True, shards=[])
    first = LexicalIndex.build(DOCS).save(directory)
    second = LexicalIndex.build(DOCS[:2]).save(directory)
    assert not first.exists() and second.exists()  # the old one is removed once the new is current
    assert json.loads((directory / "manifest.json").read_text())["lexical"] == second.name
    loaded = LexicalIndex.load(directory)
    assert len(loaded) == 2 and loaded.search(["asthma"], 1)[1].tolist() == [[1]]


def test_a_store_without_a_lexical_index_says_how_to_build_one(tmp_path):
    store.write_manifest(tmp_path, {"dim": 4, "float16": False}, complete=True, shards=[])
    with pytest.raises(StoreError, match="has no lexical index; build one with `fastret index"):
        LexicalIndex.load(tmp_path)


def test_bad_input():
    with pytest.raises(ValueError, match="at least one document"):
        LexicalIndex.build([])
    with pytest.raises(TypeError, match=r"documents\[1\] is int"):
        LexicalIndex.build(["a b", 3])
    lexical = LexicalIndex.build(DOCS)
    with pytest.raises(TypeError, match=r"queries\[0\] is bytes"):
        lexical.search([b"statins"], 2)
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        lexical.search(["statins"], 0)
