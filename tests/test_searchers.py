"""fastret.searchers.open_searchable: a store as an Index here, or as a ShardedIndex on Ray, searched alike."""

import numpy as np
import pytest

import fastret
from fastret.search import Searchable
from fastret.searchers import open_searchable

from conftest import unit_rows


@pytest.fixture
def store(tmp_path, rng):
    """A store of two shards (two saves), with float16 copies."""
    directory = tmp_path / "store"
    directory.mkdir()
    index = fastret.Index(16, store_float16=True)
    vectors = unit_rows(rng, 90, 16)
    vectors[60:70] = vectors[:10]  # ties across the shards
    index.add(vectors[:50])
    index.save(directory)
    index.add(vectors[50:])
    index.save(directory)
    return directory, vectors


def test_without_ray_a_store_opens_as_an_index(store):
    directory, vectors = store
    opened = open_searchable(directory)
    assert type(opened) is fastret.Index and isinstance(opened, Searchable)
    assert (len(opened), opened.segment_count) == (90, 2)
    with pytest.raises(FileNotFoundError):
        open_searchable(directory / "missing")


def test_with_shards_a_store_opens_on_ray_and_searches_as_one_index(store, ray_session):
    directory, vectors = store
    distributed = pytest.importorskip("fastret.distributed")
    sharded = open_searchable(directory, shards=2)
    assert isinstance(sharded, distributed.ShardedIndex) and isinstance(sharded, Searchable)
    assert len(sharded.shard_files) == 2  # one store shard each
    assert sorted(f for files in sharded.shard_files for f in files) == sorted(
        str(p) for p in directory.resolve().glob("*.frt"))
    local = fastret.Index.load(directory)
    for rescore in (False, True):
        got = sharded.search(vectors[:12], 15, rescore=rescore)
        expected = local.search(vectors[:12], 15, rescore=rescore)
        np.testing.assert_array_equal(got[1], expected[1])
        np.testing.assert_array_equal(got[0], expected[0])
    with pytest.raises(ValueError, match=r"shards must be an int in \[1, 2\]"):
        open_searchable(directory, shards=3)
