import numpy as np
import pytest

from fastret.storage.doc_ids import DocIdsError, LazyDocIds, PackedDocIds, pack_doc_ids


def test_pack_and_lookup_round_trip():
    ids = ["PMID:1", "", "ä-ß-文", "x" * 300]
    packed = PackedDocIds.from_list(ids)
    assert len(packed) == 4 and packed.offsets[0] == 0 and packed.offsets[-1] == len(packed.blob)
    assert packed.lookup(np.array([3, 0, 2, 1])) == [ids[3], ids[0], ids[2], ids[1]]
    assert packed.subset(np.array([2, 2])).lookup(np.array([0, 1])) == [ids[2], ids[2]]


def test_non_string_ids_are_refused():
    with pytest.raises(TypeError, match="must be str, got int at position 1"):
        pack_doc_ids(["a", 7])


def test_corrupted_offsets_and_bytes_raise_not_crash():
    offsets, blob = pack_doc_ids(["aa", "bb"])
    bad = offsets.copy()
    bad[1] = 10**12
    with pytest.raises(DocIdsError, match="offsets are corrupted"):
        PackedDocIds(bad, blob).lookup(np.array([0]))
    with pytest.raises(DocIdsError, match="not UTF-8"):
        PackedDocIds(offsets, np.array([0xFF, 0xFE, 1, 2], np.uint8)).lookup(np.array([0]))


def test_lazy_ids_load_once_and_check_their_count():
    calls = []
    lazy = LazyDocIds(2, lambda: calls.append(1) or ["a", "b"], "shard.ids.json")
    assert lazy.lookup(np.array([1, 0])) == ["b", "a"] and lazy.lookup(np.array([0])) == ["a"]
    assert len(calls) == 1
    with pytest.raises(DocIdsError, match="3 document ids for 2 vectors"):
        LazyDocIds(2, lambda: ["a", "b", "c"], "shard.ids.json").lookup(np.array([0]))
