"""fastret.search.searchers.open_searchable: a store as an Index here, or as a ShardedIndex on Ray."""

import pytest

import fastret
from fastret.search.rules import Searchable
from fastret.search.searchers import open_searchable

from conftest import unit_rows


@pytest.fixture
def store(tmp_path, rng):
    """A store of two shards (two saves)."""
    directory = tmp_path / "store"
    directory.mkdir()
    index = fastret.Index(16)
    index.add(unit_rows(rng, 50, 16))
    index.save(directory)
    index.add(unit_rows(rng, 40, 16))
    index.save(directory)
    return directory


def test_without_ray_a_store_opens_as_an_index(store):
    opened = open_searchable(store)
    assert type(opened) is fastret.Index and isinstance(opened, Searchable)
    assert (len(opened), opened.segment_count) == (90, 2)
    with pytest.raises(FileNotFoundError):
        open_searchable(store / "missing")


def test_with_shards_a_store_opens_on_ray(store, ray_session):
    """What it opens on Ray searches as one Index: tests/test_cli.py (search --shards, --hybrid) and
    tests/test_serve.py (serve --shards) compare them end to end; here, the refusals."""
    with pytest.raises(ValueError, match=r"shards must be an int in \[1, 2\] \(a shard holds whole files"):
        open_searchable(store, shards=3)
    with pytest.raises(FileNotFoundError):
        open_searchable(store / "missing", shards=1)
