import dataclasses
import json
import os

import numpy as np
import pytest

import fastret
from fastret.mesh import MeshTree
from fastret.search import field_lookup, row_sets
from fastret.search.filters import Filter
from fastret.storage import field_index, index_file, segment_files
from fastret.storage.field_index import NUMBERS, TERMS, build_field_index, read_field_index, write_field_index
from fastret.storage.fields import StoredFields

from conftest import unit_rows
from test_filters import DIM, reference_match

TREE = MeshTree([("D1", "Neoplasms", "C04"), ("D2", "Carcinoma", "C04.557"), ("D3", "Adenoma", "C04.557.470"),
                 ("D4", "Heart Diseases", "C14.280"), ("D5", "Arrhythmias", "C14.280.067"), ("D6", "Mice", "B01.050")])
DESCRIPTORS = ["D1", "D2", "D3", "D4", "D5", "D6", "Mice"]  # a name among the ids: $under matches either
JOURNALS = ["Nature", "Lancet", "BMJ", "Cell", "Ärzteblatt"]


def records_with_gaps(rng, n):
    """Rows with every kind of field, and missing values of each: nulls, NaN, empty and null lists."""
    out = []
    for row in range(n):
        record = {"title": f"title {row}"}  # free text: a distinct value per row
        if rng.random() < 0.9:
            record["year"] = int(rng.integers(1990, 2025))
        if rng.random() < 0.9:
            record["g"] = int(rng.integers(0, 12))
        if rng.random() < 0.85:
            record["journal"] = JOURNALS[int(rng.integers(len(JOURNALS)))]
        if rng.random() < 0.85:  # repeats within a row, and empty lists
            record["mesh"] = [DESCRIPTORS[i] for i in rng.integers(0, len(DESCRIPTORS), int(rng.integers(0, 4)))]
        roll = rng.random()
        if roll < 0.7:
            record["score"] = round(float(rng.random()), 2)
        elif roll < 0.8:
            record["score"] = float("nan")
        if rng.random() < 0.5:
            record["flag"] = bool(rng.random() < 0.5)
        out.append(record)
    return out


def random_spec(rng, depth=0):
    roll = rng.random()
    if depth < 2 and roll < 0.25:
        op = ["$and", "$or"][int(rng.integers(2))]
        return {op: [random_spec(rng, depth + 1) for _ in range(int(rng.integers(1, 4)))]}
    if depth < 2 and roll < 0.33:
        return {"$not": random_spec(rng, depth + 1)}
    field = ["year", "g", "score", "journal", "mesh", "flag", "title"][int(rng.integers(7))]
    if field in ("year", "g", "score"):
        op = ["$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists"][int(rng.integers(9))]
        draw = {"year": lambda: int(rng.integers(1988, 2027)), "g": lambda: int(rng.integers(-1, 13)),
                "score": lambda: round(float(rng.random()), 2)}[field]
        value = (bool(rng.random() < 0.5) if op == "$exists" else
                 [draw() for _ in range(int(rng.integers(0, 5)))] if op in ("$in", "$nin") else draw())
    elif field in ("journal", "mesh"):
        names = JOURNALS if field == "journal" else DESCRIPTORS
        op = ["$eq", "$ne", "$in", "$nin", "$exists", "$gt", "$under"][int(rng.integers(7))]
        if field == "journal" and op == "$under":
            op = "$lte"
        if op == "$exists":
            value = bool(rng.random() < 0.5)
        elif op == "$under":
            value = ["C04", "C04.557", "C14", "B01", "D2", "Heart Diseases"][int(rng.integers(6))]
        elif op in ("$in", "$nin"):
            value = [names[i] for i in rng.integers(0, len(names), int(rng.integers(0, 4)))]
        else:
            value = names[int(rng.integers(len(names)))]
    elif field == "flag":
        op, value = "$eq", bool(rng.random() < 0.5)
    else:
        op, value = ["$eq", "$exists"][int(rng.integers(2))], "title 3"
        value = True if op == "$exists" else value
    return {field: {"$not": {op: value}} if rng.random() < 0.1 else {op: value}}


def saved_segment(tmp_path, records, rng):
    index = fastret.Index(DIM)
    index.add(unit_rows(rng, len(records), DIM), fields=records)
    index.save(tmp_path / "index.frt")
    return fastret.Index.load(tmp_path / "index.frt").segments[0]


def without_index(segment):
    return dataclasses.replace(segment, field_index=None)


@pytest.mark.parametrize("rows_share", [0.0, 1 / 16, 1.0])  # every row-set form: masks, the default, row lists
def test_indexes_answer_every_filter_as_the_column_scan_does(rng, tmp_path, monkeypatch, rows_share):
    monkeypatch.setattr(row_sets, "ROWS_SHARE", rows_share)
    records = records_with_gaps(rng, 300)
    segment = saved_segment(tmp_path, records, rng)
    indexed = segment.field_index
    assert {name: indexed.get(name).kind for name in indexed.names} == {
        "title": TERMS, "year": NUMBERS, "g": NUMBERS, "journal": TERMS, "mesh": TERMS, "score": NUMBERS}
    for trial in range(400):
        spec = random_spec(rng)
        compiled = Filter(spec, mesh=TREE)
        from_index = compiled.masks([segment])[0]
        got = np.ones(300, bool) if from_index is None else row_sets.as_mask(from_index, 300)
        if from_index is not None and row_sets.is_rows(from_index):
            assert from_index.dtype == np.int64 and np.all(np.diff(from_index) > 0), json.dumps(spec)
        scanned = compiled.mask(without_index(segment))
        np.testing.assert_array_equal(got, scanned, err_msg=json.dumps(spec))
        if "$under" not in json.dumps(spec):  # the plain-Python reference (it knows no tree)
            expected = [reference_match(spec, record, row) for row, record in enumerate(records)]
            np.testing.assert_array_equal(got, expected, err_msg=json.dumps(spec))


def test_indexed_fields_are_answered_without_reading_their_columns(rng, tmp_path, monkeypatch):
    segment = saved_segment(tmp_path, records_with_gaps(rng, 200), rng)
    monkeypatch.setattr(StoredFields, "column", lambda self, name: pytest.fail(f"column {name!r} scanned"))
    for spec in ({"mesh": {"$under": "C04"}}, {"mesh": {"$nin": ["D1", "D6"]}}, {"journal": "Cell"},
                 {"year": {"$gte": 2000, "$lt": 2010}}, {"g": {"$in": [1, 3, 5]}}, {"score": {"$exists": False}},
                 {"$or": [{"g": 2}, {"$not": {"year": {"$lte": 1999}}}]}):
        Filter(spec, mesh=TREE).masks([segment])
    # what an index cannot answer scans its column: string ordering, booleans
    with pytest.raises(pytest.fail.Exception, match="column 'journal' scanned"):
        Filter({"journal": {"$gt": "Cell"}}).masks([segment])
    with pytest.raises(pytest.fail.Exception, match="column 'flag' scanned"):
        Filter({"flag": True}).masks([segment])


def test_free_text_is_not_indexed_and_filters_on_it_still_work(rng, tmp_path, monkeypatch):
    monkeypatch.setattr(field_index, "TERMS_MIN", 10)
    records = records_with_gaps(rng, 120)
    built = build_field_index(StoredFields.from_records(records))
    assert "title" not in built and {"journal", "mesh", "year", "g", "score"} <= set(built)
    segment = saved_segment(tmp_path, records, rng)
    assert segment.field_index.get("title") is None
    mask = Filter({"title": "title 7"}).mask(segment)
    assert np.flatnonzero(mask).tolist() == [7]


def test_postings_and_sorted_values_hold_what_the_columns_do():
    records = [{"mesh": ["b", "a", "b"], "year": 2001}, {"mesh": [], "year": None}, {"mesh": None, "year": 1999},
               {"mesh": ["a"], "year": 2001, "x": -5.5}, {"year": 300000, "x": float("nan")}]
    built = build_field_index(StoredFields.from_records(records))
    kind, terms = built["mesh"]
    assert kind == TERMS and bytes(terms["value_blob"]) == b"ab" and terms["value_offsets"].tolist() == [0, 1, 2]
    assert terms["starts"].tolist() == [0, 2, 3] and terms["rows"].tolist() == [0, 3, 0]  # a row once per value
    assert terms["nulls"].tolist() == [2, 4]  # an empty list is a value (it $exists)
    kind, year = built["year"]
    assert kind == NUMBERS and year["values"].tolist() == [1999, 2001, 2001, 300000]
    assert year["order"].tolist() == [2, 0, 3, 4] and year["nulls"].tolist() == [1]
    assert year["by_row"].dtype == np.int32 and year["by_row"].tolist() == [2001, 1999, 1999, 2001, 300000]
    _, x = built["x"]
    assert x["values"].tolist() == [-5.5] and x["nulls"].tolist() == [0, 1, 2]  # NaN: a value, in no comparison
    assert np.isnan(x["by_row"][4])


def test_the_file_is_bound_to_its_segment_and_checked(rng, tmp_path):
    records = records_with_gaps(rng, 50)
    segment = saved_segment(tmp_path, records, rng)
    path = tmp_path / "index.frt"
    header = index_file.read_header(path)
    target = segment_files.sidecar_path(path, header, segment_files.FIELD_INDEX)
    assert target.is_file() and read_field_index(target, header).names == segment.field_index.names
    other = index_file.Header(**{**header.__dict__, "data_crc": header.data_crc ^ 1})
    assert read_field_index(target, other) is None  # another version of the segment: stale
    data = bytearray(target.read_bytes())
    data[-3] ^= 0xFF
    damaged = tmp_path / "damaged"
    damaged.write_bytes(bytes(data))
    with pytest.raises(index_file.IndexFileError, match="damaged.*corrupted.*fastret index --field-indexes"):
        read_field_index(damaged, header)
    assert read_field_index(damaged, header, verify=False) is not None  # trusted without verification
    damaged.write_bytes(bytes(data[:200]))
    with pytest.raises(index_file.IndexFileError, match="outside the file|unreadable"):
        read_field_index(damaged, header, verify=False)
    damaged.write_bytes(b"nonsense" * 10)
    with pytest.raises(index_file.IndexFileError, match="not a fastret field index"):
        read_field_index(damaged, header)
    with pytest.raises(ValueError, match="3 rows of fields for a segment of 50"):
        write_field_index(tmp_path / "x", header, StoredFields.from_records(records[:3]))


def test_a_save_commits_the_index_with_its_segment_and_removes_the_old_one(rng, tmp_path):
    index = fastret.Index(DIM)
    index.add(unit_rows(rng, 30, DIM), fields=records_with_gaps(rng, 30))
    path = tmp_path / "index.frt"
    index.save(path)
    first = segment_files.sidecar_path(path, index_file.read_header(path), segment_files.FIELD_INDEX)
    assert first.is_file()
    index.add(unit_rows(rng, 5, DIM), fields=records_with_gaps(rng, 5))
    index.save(path)
    second = segment_files.sidecar_path(path, index_file.read_header(path), segment_files.FIELD_INDEX)
    assert second.is_file() and not first.exists()
    loaded = fastret.Index.load(path)
    assert len(loaded.segments[0].field_index.get("g").by_row) == 35
    without_fields = fastret.Index(DIM)
    without_fields.add(unit_rows(rng, 5, DIM))
    without_fields.save(tmp_path / "plain.frt")
    assert not segment_files.has_sidecar(tmp_path / "plain.frt", segment_files.FIELD_INDEX)


def test_fields_written_before_indexes_existed_are_scanned_until_indexed(rng, tmp_path):
    records = records_with_gaps(rng, 40)
    saved_segment(tmp_path, records, rng)
    path = tmp_path / "index.frt"
    header = index_file.read_header(path)
    target = segment_files.sidecar_path(path, header, segment_files.FIELD_INDEX)
    os.remove(target)
    old = fastret.Index.load(path)
    assert old.segments[0].field_index is None
    spec = {"mesh": {"$under": "C04"}, "year": {"$gt": 2000}}
    scanned = Filter(spec, mesh=TREE).mask(old.segments[0])
    assert segment_files.add_field_index(path) and target.is_file()
    assert not segment_files.add_field_index(path)  # present and sound: left alone
    data = target.read_bytes()
    target.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    assert segment_files.add_field_index(path)  # damaged: made again
    new = fastret.Index.load(path)
    assert new.segments[0].field_index is not None
    np.testing.assert_array_equal(Filter(spec, mesh=TREE).mask(new.segments[0]), scanned)


def test_lookup_of_a_condition_the_index_cannot_answer_is_none():
    built = build_field_index(StoredFields.from_records([{"j": "a"}, {"j": "b"}]))
    terms = field_index.TermsIndex(built["j"][1])
    node = Filter({"j": {"$gt": "a"}}).root
    assert field_lookup.lookup(node, terms, 2) is None
    assert row_sets.as_rows(field_lookup.lookup(Filter({"j": {"$in": ["b", "zzz"]}}).root, terms, 2)).tolist() == [1]
