import numpy as np
import pyarrow as pa
import pytest

import fastret
from fastret.storage import index_file
from fastret.storage.fields import ColumnStats, StoredFields, concatenate, read_fields
from fastret.storage.index_file import IndexFileError
from fastret.storage.store import StoreError

from conftest import sidecar, unit_rows


def fields_path(segment_path):
    return sidecar(segment_path, "fields.arrow")

RECORDS = [{"title": "Statins", "text": "a", "year": 2019, "mesh": ["Humans", "Neoplasms"]},
           {"title": "Aspirin", "year": 2001, "mesh": []},
           {"title": "Vitamin D", "text": "c", "open_access": True},
           {}]


def test_index_fields_returns_dicts_in_the_shape_of_the_ids(rng):
    index = fastret.Index(8)
    index.add(unit_rows(rng, 4, 8), ids=[10, 11, 12, 13], fields=RECORDS)
    assert index.has_fields
    assert index.fields([10, 13]) == [RECORDS[0], {}]
    assert index.fields([[11], [12]], names=["title", "year"]) == [[{"title": "Aspirin", "year": 2001}],
                                                                   [{"title": "Vitamin D"}]]
    assert index.fields(np.array([12, -1])) == [RECORDS[2], None]  # -1: a padded result slot
    with pytest.raises(ValueError, match="id 99 is not in the index"):
        index.fields([99])
    with pytest.raises(TypeError, match="names must be a sequence of field names"):
        index.fields([10], names="title")


def test_rows_added_without_fields_have_none(rng):
    index = fastret.Index(8)
    index.add(unit_rows(rng, 2, 8))
    assert not index.has_fields and index.fields([0, 1]) == [{}, {}]
    index.add(unit_rows(rng, 2, 8), fields=[{"year": 2000}, {"year": 2001.5}])
    index.add(unit_rows(rng, 1, 8))
    index.add(unit_rows(rng, 1, 8), fields=[{"journal": "Cell"}])
    assert index.fields([0, 2, 3, 4, 5]) == [{}, {"year": 2000.0}, {"year": 2001.5}, {}, {"journal": "Cell"}]
    column = index.segments[0].fields.column("year")
    assert column.type == pa.float64() and column.null_count == 4  # int and float: float


def test_save_load_and_merge_keep_fields(rng, tmp_path):
    vectors = unit_rows(rng, 4, 8)
    index = fastret.Index(8)
    index.add(vectors, fields=RECORDS)
    index.delete([1])
    index.save(tmp_path / "one.frt")  # a file: fields beside it, live rows only
    assert fields_path(tmp_path / "one.frt").is_file()
    loaded = fastret.Index.load(tmp_path / "one.frt")
    assert loaded.fields([0, 2, 3]) == [RECORDS[0], RECORDS[2], {}]
    (tmp_path / "store").mkdir()
    loaded.add(unit_rows(rng, 1, 8), fields=[{"title": "new", "year": 1999}])
    loaded.save(tmp_path / "store")  # a store: one fields file per shard
    store = fastret.Index.load(tmp_path / "store")
    assert store.segment_count == 2 and store.fields([0, 4]) == [RECORDS[0], {"title": "new", "year": 1999}]
    assert isinstance(store.segments[0].fields, StoredFields)
    store.delete([0])
    store.merge()
    store.save(tmp_path / "store")
    merged = fastret.Index.load(tmp_path / "store")
    assert merged.fields([2, 3, 4]) == [RECORDS[2], {}, {"title": "new", "year": 1999}]
    arrow_files = [p.name for p in (tmp_path / "store").iterdir() if p.name.endswith(".arrow")]
    assert arrow_files == [fields_path(merged.segments[0].path).name]  # the replaced shards' went too


def test_fields_files_are_mapped_and_bound_to_their_segment(rng, tmp_path):
    for name, n in (("a.frt", 3), ("b.frt", 4)):
        index = fastret.Index(8)
        index.add(unit_rows(rng, n, 8), fields=[{"n": i} for i in range(n)])
        index.save(tmp_path / name)
    a, header = tmp_path / "a.frt", index_file.read_header(tmp_path / "a.frt")
    mapped = read_fields(fields_path(a), a, header, mmap=True)
    assert mapped.rows(np.array([2, 0])) == [{"n": 2}, {"n": 0}]
    assert read_fields(fields_path(a), a, header, mmap=False).table.equals(mapped.table)
    target = fields_path(a)
    fields_path(tmp_path / "b.frt").replace(target)  # another segment's fields
    with pytest.raises(IndexFileError, match=r"a.frt.[0-9a-f]{8}.fields.arrow belongs to another version of a.frt"):
        fastret.Index.load(a)
    target.write_bytes(b"not arrow")
    with pytest.raises(IndexFileError, match="is not a readable fastret fields file"):
        read_fields(target, a, header)
    index = fastret.Index(8)
    index.add(unit_rows(rng, 3, 8))
    index.save(a)  # no fields now: no fields file, and the old version's went
    assert not list(tmp_path.glob("a.frt.*.fields.arrow")) and not fastret.Index.load(a).has_fields


def test_a_bad_fields_file_in_a_store_is_a_store_error(rng, tmp_path):
    (tmp_path / "store").mkdir()
    index = fastret.Index(8)
    index.add(unit_rows(rng, 3, 8), fields=[{"n": 1}] * 3)
    index.save(tmp_path / "store")
    fields_path(tmp_path / "store" / "shard-00000.frt").write_bytes(b"\0" * 64)
    with pytest.raises(StoreError, match=r"shard-00000.frt.[0-9a-f]{8}.fields.arrow is not a readable fastret fields"):
        fastret.Index.load(tmp_path / "store")


def test_bad_fields_are_refused(rng):
    index = fastret.Index(8)
    with pytest.raises(TypeError, match="fields must be a sequence of 2 dicts"):
        index.add(unit_rows(rng, 2, 8), fields=[{}])
    with pytest.raises(TypeError, match=r"fields\[1\] must be a dict with str keys"):
        index.add(unit_rows(rng, 2, 8), fields=[{}, {1: "x"}])
    with pytest.raises(ValueError, match="the values of field 'year' do not share one type"):
        index.add(unit_rows(rng, 2, 8), fields=[{"year": 2000}, {"year": "2001"}])
    with pytest.raises(ValueError, match="the field name 'id' is reserved"):
        index.add(unit_rows(rng, 1, 8), fields=[{"id": 3}])
    index.add(unit_rows(rng, 1, 8), fields=[{"year": 2000}])
    with pytest.raises(ValueError, match="stored fields of different types under one name"):
        index.add(unit_rows(rng, 1, 8), fields=[{"year": "2001"}])
    assert len(index) == 1 and index.fields([0]) == [{"year": 2000}]  # the refused add changed nothing


def test_concatenate_fills_missing_columns_with_nulls():
    parts = [StoredFields.from_records([{"a": 1}]), None, StoredFields.from_records([{"b": ["x"]}, {}])]
    joined = concatenate(parts, [1, 2, 2])
    assert joined.count == 5 and joined.names == ("a", "b")
    assert joined.rows(np.arange(5)) == [{"a": 1}, {}, {}, {"b": ["x"]}, {}]
    assert concatenate([None, None], [1, 2]) is None
    assert concatenate([StoredFields(None, 2)], [2]).table is None


def test_numeric_statistics_are_written_with_the_fields_and_survive_save_load_and_merge(rng, tmp_path, monkeypatch):
    records = [{"year": 2001, "score": 0.5, "title": "a"}, {"year": 1999, "score": float("nan")},
               {"score": 0.25, "mesh": ["X"]}, {"year": 2010, "score": None}]
    index = fastret.Index(8)
    index.add(unit_rows(rng, 4, 8), fields=records)
    fields = index.segments[0].fields
    assert fields.stats("year") == ColumnStats(1999, 2010, 1, 0)
    assert fields.stats("score") == ColumnStats(0.25, 0.5, 1, 1)
    assert fields.stats("title") is None and fields.stats("mesh") is None and fields.stats("absent") is None
    index.delete([3])
    (tmp_path / "store").mkdir()
    index.save(tmp_path / "store")
    more = fastret.Index.load(tmp_path / "store")
    more.add(unit_rows(rng, 2, 8), fields=[{"year": 2020}, {"year": 1980}])
    more.merge()  # deleted row 3 dropped: the merged statistics are those of the rows kept
    assert more.segments[0].fields.stats("year") == ColumnStats(1980, 2020, 1, 0)
    more.save(tmp_path / "store")
    more.save(tmp_path / "one.frt")
    monkeypatch.setattr(pa.compute, "min_max", lambda *a, **k: pytest.fail("statistics recomputed"))
    for path in (tmp_path / "store", tmp_path / "one.frt"):
        loaded = fastret.Index.load(path).segments[0].fields
        assert loaded.stats("year") == ColumnStats(1980, 2020, 1, 0)
        assert loaded.stats("score") == ColumnStats(0.25, 0.5, 2, 1)  # the two added rows lack it
        assert loaded.stats("title") is None


def test_a_column_of_nulls_and_nans_has_no_range(rng):
    fields = StoredFields.from_records([{"score": float("nan")}, {"score": None}])
    assert fields.stats("score") == ColumnStats(None, None, 1, 1)


def test_a_fields_file_without_statistics_computes_them_on_first_use(rng, tmp_path):
    index = fastret.Index(8)
    index.add(unit_rows(rng, 3, 8), fields=[{"year": 2003}, {"year": 2001}, {}])
    index.save(tmp_path / "one.frt")
    path = fields_path(tmp_path / "one.frt")
    table = pa.ipc.open_file(pa.BufferReader(path.read_bytes())).read_all()

    def rewrite(metadata):  # a new file renamed over the old one: a table mapped from it stays valid
        with pa.OSFile(str(tmp_path / "new"), "wb") as sink, \
                pa.ipc.new_file(sink, table.schema.with_metadata(metadata)) as writer:
            writer.write_table(table.replace_schema_metadata(metadata))
        (tmp_path / "new").replace(path)

    old = (b"fastret.stats", b"fastret.fields_crc")  # what files of older versions lack
    metadata = {k: v for k, v in table.schema.metadata.items() if k not in old}
    assert len(metadata) == len(table.schema.metadata) - 2
    rewrite(metadata)  # as written before statistics (and the checksum) were kept
    loaded = fastret.Index.load(tmp_path / "one.frt")
    assert loaded.segments[0].fields.stats("year") == ColumnStats(2001, 2003, 1, 0)
    assert loaded.search(unit_rows(rng, 1, 8), 2, filter={"year": {"$lt": 2002}})[1][0].tolist() == [1, -1]
    rewrite({**metadata, b"fastret.stats": b'{"year": [1, 2]}'})
    with pytest.raises(IndexFileError, match="column statistics are unreadable"):
        read_fields(path, tmp_path / "one.frt", index_file.read_header(tmp_path / "one.frt"))
