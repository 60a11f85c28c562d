import json
from pathlib import Path

import numpy as np
import pytest
import pyarrow as pa
import torch

import fastret
import fastret.search.core
import fastret.storage.segment
from fastret.search import row_sets
from fastret.storage.field_index import NumbersIndex
from fastret.storage.fields import StoredFields
from fastret.search.filters import MAX_IN_VALUES, Filter, FilterError, SegmentMasks, allowed_rows
from fastret.search.core import PICK_FRACTION, segment_candidates
from fastret.search.rules import pad, query_codes
from fastret.search.torch_backend import device_arrays

from conftest import needs_cuda, unit_rows

MESH_FILE = Path(__file__).resolve().parents[2] / "shared" / "data" / "mesh" / "mesh2015_tree_numbers.tsv"
DIM = 24
JOURNALS = ["Nature", "Lancet", "BMJ", "Cell"]
TERMS = ["Humans", "Mice", "Neoplasms", "Aged", "Female"]


def random_records(rng, n):
    """Records with ints, floats, strings and lists, and missing values of each."""
    records = []
    for _ in range(n):
        record = {"title": f"t{int(rng.integers(1000))}"}
        if rng.random() < 0.85:
            record["year"] = int(rng.integers(1990, 2025))
        if rng.random() < 0.8:
            record["journal"] = JOURNALS[int(rng.integers(len(JOURNALS)))]
        if rng.random() < 0.8:
            record["mesh"] = [TERMS[i] for i in rng.choice(len(TERMS), int(rng.integers(0, 4)), replace=False)]
        if rng.random() < 0.7:
            record["score"] = float(rng.random())
        records.append(record)
    return records


def random_condition(rng, depth=0):
    """A random filter in the JSON operator form."""
    roll = rng.random()
    if depth < 2 and roll < 0.25:
        op = ["$and", "$or"][int(rng.integers(2))]
        return {op: [random_condition(rng, depth + 1) for _ in range(int(rng.integers(1, 4)))]}
    if depth < 2 and roll < 0.35:
        return {"$not": random_condition(rng, depth + 1)}
    field = ["year", "journal", "mesh", "score", "id", "title"][int(rng.integers(6))]
    if field == "year":
        op = ["$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin"][int(rng.integers(8))]
        years = [int(v) for v in rng.integers(1990, 2025, 3)]
        value = years if op in ("$in", "$nin") else years[0]
    elif field == "score":
        op = ["$gt", "$lte"][int(rng.integers(2))]
        value = float(rng.random())
    elif field == "id":
        op = ["$in", "$nin", "$gte", "$lt"][int(rng.integers(4))]
        value = [int(v) for v in rng.integers(0, 400, 60)] if op in ("$in", "$nin") else int(rng.integers(0, 400))
    elif field in ("journal", "mesh"):
        names = JOURNALS if field == "journal" else TERMS
        op = ["$eq", "$ne", "$in", "$nin", "$exists"][int(rng.integers(5))]
        if op == "$exists":
            value = bool(rng.random() < 0.5)
        elif op in ("$in", "$nin"):
            value = [names[i] for i in rng.choice(len(names), int(rng.integers(0, 3)), replace=False)]
        else:
            value = names[int(rng.integers(len(names)))]
    else:
        op, value = "$exists", True
    if op == "$eq" and rng.random() < 0.3:
        return {field: value}  # the bare form
    condition = {op: value}
    if rng.random() < 0.1:
        condition = {"$not": condition}
    return {field: condition}


def reference_match(spec, record, row_id):
    """An independent evaluation of a filter on one record (plain Python)."""
    result = True
    for key, condition in spec.items():
        if key == "$and":
            result &= all(reference_match(part, record, row_id) for part in condition)
        elif key == "$or":
            result &= any(reference_match(part, record, row_id) for part in condition)
        elif key == "$not":
            result &= not reference_match(condition, record, row_id)
        else:
            value = row_id if key == "id" else record.get(key)
            if not isinstance(condition, dict):
                condition = {"$eq": condition}
            result &= all(field_match(op, arg, value) for op, arg in condition.items())
    return result


def field_match(op, arg, value):
    values = [] if value is None else value if isinstance(value, list) else [value]
    if op == "$not":
        return not all(field_match(o, a, value) for o, a in arg.items())
    if op == "$exists":
        return (value is not None) == arg
    if op in ("$ne", "$nin"):
        return not field_match({"$ne": "$eq", "$nin": "$in"}[op], arg, value)
    test = {"$eq": lambda x: x == arg, "$gt": lambda x: x > arg, "$gte": lambda x: x >= arg,
            "$lt": lambda x: x < arg, "$lte": lambda x: x <= arg, "$in": lambda x: x in arg}[op]
    return any(test(x) for x in values)


def expected_results(vectors, ids, passing, queries, k, rescore=False):
    """Search an index holding only the passing rows; padded to k."""
    if not passing.any():
        return pad(np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64), k)
    sub = fastret.Index(DIM, store_float16=rescore)
    sub.add(vectors[passing], ids=ids[passing])
    scores, found = sub.search(queries, min(k, int(passing.sum())), rescore=rescore)
    return pad(scores, found, k)


def build(rng, tmp_path, mapped, store_float16=False):
    """An index of several segments with deletions: (index, vectors, ids, records, live)."""
    n = 360
    vectors = unit_rows(rng, n, DIM)
    vectors[200:220] = vectors[10]  # ties across segments
    ids = rng.permutation(n).astype(np.int64)
    records = random_records(rng, n)
    if mapped:
        first = fastret.Index(DIM, store_float16=store_float16)
        first.add(vectors[:120], ids[:120], fields=records[:120])
        (tmp_path / "store").mkdir()
        first.save(tmp_path / "store")  # a store: one mapped shard
        second = fastret.Index.load(tmp_path / "store")
        second.add(vectors[120:250], ids[120:250], fields=records[120:250])
        second.save(tmp_path / "store")  # two mapped shards
        index = fastret.Index.load(tmp_path / "store")
    else:
        parts = []
        for start, stop in ((0, 120), (120, 250)):
            part = fastret.Index(DIM, store_float16=store_float16)
            part.add(vectors[start:stop], ids[start:stop], fields=records[start:stop])
            parts.append(part.segments[0])
        index = fastret.Index.from_segments(parts, DIM, store_float16)  # two segments in memory
    index.add(vectors[250:], ids[250:], fields=records[250:])  # the in-memory segment
    deleted = rng.choice(ids, 40, replace=False)
    index.delete(deleted)
    live = ~np.isin(ids, deleted)
    assert index.segment_count == 3
    return index, vectors, ids, records, live


@pytest.mark.parametrize("mapped", [False, True])
def test_random_filters_equal_searching_a_sub_index_of_the_passing_rows(rng, tmp_path, mapped):
    index, vectors, ids, records, live = build(rng, tmp_path, mapped)
    queries = unit_rows(rng, 4, DIM)
    queries[0] = vectors[10]
    few = 0
    for trial in range(60):
        spec = random_condition(rng)
        passing = live & np.array([reference_match(spec, r, int(i)) for r, i in zip(records, ids)])
        k = [1, 7, 40][trial % 3]
        few += int(passing.sum()) < k
        expected = expected_results(vectors, ids, passing, queries, k)
        got = index.search(queries, k, filter=json.loads(json.dumps(spec)))
        np.testing.assert_array_equal(got[1], expected[1], err_msg=json.dumps(spec))
        np.testing.assert_array_equal(got[0], expected[0], err_msg=json.dumps(spec))
    assert few > 0  # short, padded results were met


def test_filtered_rescoring_equals_a_sub_index(rng, tmp_path):
    index, vectors, ids, records, live = build(rng, tmp_path, True, store_float16=True)
    queries = unit_rows(rng, 3, DIM)
    for spec in ({"year": {"$gte": 2010}}, {"mesh": {"$in": ["Mice", "Aged"]}}, {"id": {"$lt": 30}}):
        passing = live & np.array([reference_match(spec, r, int(i)) for r, i in zip(records, ids)])
        expected = expected_results(vectors, ids, passing, queries, 10, rescore=True)
        got = index.search(queries, 10, filter=spec, rescore=True)
        np.testing.assert_array_equal(got[1], expected[1])
        np.testing.assert_array_equal(got[0], expected[0])


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_the_torch_backend_filters_alike_and_keeps_its_live_row_copies(rng, tmp_path, device):
    index, vectors, ids, records, live = build(rng, tmp_path, True)
    segments = index.segments
    queries = unit_rows(rng, 3, DIM)
    q_codes, q_scales, _ = query_codes(queries, DIM)
    torch_queries = [torch.from_numpy(a).to(device) for a in (q_codes, q_scales)]
    for spec in ({"year": {"$lt": 2000}}, {"journal": "Lancet", "mesh": {"$exists": True}}, {"id": {"$in": [1]}}):
        allowed = allowed_rows(spec, segments)
        for c in (1, 9, 500):
            expected = segment_candidates(segments, q_codes, q_scales, c, None, allowed)
            got = segment_candidates(segments, *torch_queries, c, None, allowed)
            np.testing.assert_array_equal(got[0], expected[0])
            np.testing.assert_array_equal(got[1], expected[1])
    copies = [device_arrays(s, device) for s in segments]
    assert [len(c[0]) for c in copies] == [s.live_count for s in segments]  # the filters left them whole
    unfiltered = segment_candidates(segments, *torch_queries, 20)
    np.testing.assert_array_equal(unfiltered[1], segment_candidates(segments, q_codes, q_scales, 20)[1])
    assert all(device_arrays(s, device) is c for s, c in zip(segments, copies))


def test_a_bool_mask_over_the_rows_is_a_filter(rng, tmp_path):
    index, vectors, ids, records, live = build(rng, tmp_path, True)
    row_ids = np.concatenate([s.ids for s in index.segments])
    mask = row_ids % 3 == 0
    passing = live & (ids % 3 == 0)
    queries = unit_rows(rng, 2, DIM)
    expected = expected_results(vectors, ids, passing, queries, 12)
    got = index.search(queries, 12, filter=mask)
    np.testing.assert_array_equal(got[1], expected[1])
    with pytest.raises(FilterError, match=r"bool \[360\]"):
        index.search(queries, 3, filter=mask[:-1])


def test_a_filter_that_matches_nothing_gives_empty_results(rng):
    index = fastret.Index(DIM)
    index.add(unit_rows(rng, 20, DIM), fields=[{"year": 2000 + i} for i in range(20)])
    scores, found = index.search(unit_rows(rng, 2, DIM), 5, filter={"year": {"$gt": 3000}})
    assert (found == -1).all() and np.isneginf(scores).all() and found.shape == (2, 5)
    assert index.candidates(unit_rows(rng, 2, DIM), 5, filter={"year": 1999})[1].shape == (2, 0)
    assert index.fields(found)[0] == [None] * 5


def test_list_fields_match_when_any_element_does(rng):
    index = fastret.Index(DIM)
    index.add(unit_rows(rng, 4, DIM), fields=[{"mesh": ["A", "B"]}, {"mesh": ["B"]}, {"mesh": []}, {}])
    queries = unit_rows(rng, 1, DIM)

    def passing(spec):
        return sorted(i for i in index.search(queries, 4, filter=spec)[1][0].tolist() if i >= 0)

    assert passing({"mesh": "A"}) == [0]
    assert passing({"mesh": {"$in": ["B", "C"]}}) == [0, 1]
    assert passing({"mesh": {"$nin": ["A"]}}) == [1, 2, 3]
    assert passing({"mesh": {"$ne": "B"}}) == [2, 3]
    assert passing({"mesh": {"$exists": False}}) == [3]
    assert passing({"$or": [{"mesh": "A"}, {"$not": {"mesh": {"$exists": True}}}]}) == [0, 3]


@pytest.mark.skipif(not MESH_FILE.is_file(), reason="needs the shared MeSH tree (../shared/data/mesh)")
def test_under_matches_an_independent_walk_of_the_mesh_tree(rng):
    tree = fastret.MeshTree.from_file(MESH_FILE)
    positions = {}  # descriptor id -> (name, tree numbers), read here without fastret
    for line in MESH_FILE.read_text().splitlines()[1:]:
        descriptor, name, number = line.split("\t")
        positions.setdefault(descriptor, (name, []))[1].append(number)

    def walk(prefixes):
        return {d for d, (_, numbers) in positions.items()
                if any(n == p or n.startswith(p + ".") for n in numbers for p in prefixes)}

    cancer_ids = walk(["C04"])
    assert len(cancer_ids) > 500
    neoplasm_numbers = positions[next(d for d, (name, _) in positions.items() if name == "Neoplasms")][1]
    assert walk(neoplasm_numbers) == cancer_ids  # "Neoplasms" sits at C04 only
    descriptors = sorted(positions)
    picked = [descriptors[i] for i in rng.choice(len(descriptors), 300, replace=False)]
    picked += sorted(cancer_ids)[:40]
    # labels stored as names in some rows and as ids in others
    labels = [[positions[d][0] if i % 2 else d] + [positions[picked[i - 1]][0]] for i, d in enumerate(picked)]
    index = fastret.Index(DIM)
    index.add(unit_rows(rng, len(picked), DIM), fields=[{"mesh": m} for m in labels])
    for label, prefixes in (("C04", ["C04"]), ("Neoplasms", neoplasm_numbers), ("C14.280", ["C14.280"]),
                            (picked[5], positions[picked[5]][1])):
        under = walk(prefixes)
        names = {positions[d][0] for d in under}
        expected = [i for i, m in enumerate(labels) if any(x in under or x in names for x in m)]
        mask = allowed_rows(Filter({"mesh": {"$under": label}}, mesh=tree), index.segments)[0]
        assert np.flatnonzero(mask).tolist() == expected, label
        assert set(tree.descendants(label)) == under
    with pytest.raises(FilterError, match=r'filter\["mesh"\]\["\$under"\]: \'Z99\' is neither'):
        Filter({"mesh": {"$under": "Z99"}}, mesh=tree)


@pytest.mark.parametrize("spec, message", [
    ({"yeer": 2000}, r'filter\["yeer"\]: unknown field; the index stores journal, mesh, year'),
    ({"year": {"$gtx": 1}}, r'filter\["year"\]\["\$gtx"\]: unknown operator'),
    ({"$xor": []}, r'filter\["\$xor"\]: unknown operator'),
    ({"year": {"$gte": "2018"}}, r'filter\["year"\]\["\$gte"\]: field \'year\' holds numbers, but the filter '
                                 r'gives a string'),
    ({"journal": {"$lt": 3}}, r'filter\["journal"\]\["\$lt"\]: field \'journal\' holds strings'),
    ({"mesh": {"$in": [1, 2]}}, r'filter\["mesh"\]\["\$in"\]: field \'mesh\' holds lists of strings'),
    ({"year": {"$in": [1, "a"]}}, r'numbers only, strings only'),
    ({"year": {"$in": list(range(MAX_IN_VALUES + 1))}}, r"at most 100,000"),
    ({"$or": {}}, r'filter\["\$or"\] must be a non-empty list'),
    ({"year": {}}, r"empty condition"),
    ({"year": {"$exists": 1}}, r"must be true or false"),
    ({"year": None}, r'filter\["year"\] must be a number, a string or a boolean'),
    ({"mesh": {"$under": "C04"}}, r"\$under needs the MeSH tree"),
    ({"id": {"$in": ["a"]}}, r'filter\["id"\]\["\$in"\]: ids are integers'),
    ([1, 2], r"filter must be a dict"),
])
def test_bad_filters_name_the_part(rng, spec, message):
    index = fastret.Index(DIM)
    index.add(unit_rows(rng, 3, DIM), fields=[{"year": 2000, "journal": "Cell", "mesh": ["A"]}] * 3)
    with pytest.raises(FilterError, match=message):
        index.search(unit_rows(rng, 1, DIM), 2, filter=spec)


def test_malformed_json_and_an_index_without_fields(rng):
    with pytest.raises(FilterError, match="filter is not valid JSON: .* line 1 column"):
        Filter.from_json('{"year": ')
    with pytest.raises(FilterError, match="filter must be an object of conditions"):
        Filter.from_json("[1]")
    assert Filter.from_json('{"year": {"$gte": 2018}}').fields == {"year"}
    index = fastret.Index(DIM)
    index.add(unit_rows(rng, 5, DIM))
    with pytest.raises(FilterError, match=r'filter\["year"\]: this index has no stored fields'):
        index.search(unit_rows(rng, 1, DIM), 2, filter={"year": 2000})
    _, found = index.search(unit_rows(rng, 1, DIM), 5, filter={"id": {"$in": [0, 4]}})  # ids need no fields
    assert sorted(found[0, :2].tolist()) == [0, 4] and (found[0, 2:] == -1).all()
    with pytest.raises(FilterError, match="filter must be a dict"):
        index.search(unit_rows(rng, 1, DIM), 2, filter="year > 3")


# ------------------------------------------------------------------ selective filters: the paths taken


def spy_core(monkeypatch):
    """Record, per `core_candidates` call, how each segment it is handed is read: the number of
    picked rows (int), "bitmap" (a mask for the call) or "whole"."""
    calls = []
    real = fastret.search.core.core_candidates

    def spy(segments, q_codes, q_scales, c, q_floats=None, allowed=None):
        selections = [None] * len(segments) if allowed is None else allowed
        calls.append(["whole" if rows is None else "bitmap" if rows.dtype == bool else len(rows)
                      for rows in selections])
        return real(segments, q_codes, q_scales, c, q_floats, allowed)

    monkeypatch.setattr(fastret.search.core, "core_candidates", spy)
    return calls


@pytest.mark.parametrize("mapped", [False, True])
@pytest.mark.parametrize("rescore", [False, True])
def test_selective_filters_read_only_their_rows_and_equal_a_sub_index(simd_path, rng, tmp_path, mapped, rescore,
                                                                   monkeypatch):
    index, vectors, ids, records, live = build(rng, tmp_path, mapped, store_float16=rescore)
    queries = unit_rows(rng, 5, DIM)
    queries[0] = vectors[10]
    calls = spy_core(monkeypatch)
    # a few ids per segment, the tied rows 200..219 and 10 among them, deleted ones too
    chosen = [int(i) for i in ids[[3, 10, 57, 118, 130, 201, 205, 210, 240, 251, 300, 359]]]
    for spec in ({"id": {"$in": chosen}}, {"$and": [{"id": {"$in": chosen}}, {"year": {"$gte": 2000}}]}):
        passing = live & np.array([reference_match(spec, r, int(i)) for r, i in zip(records, ids)])
        sizes = [int(passing[a:b].sum()) for a, b in ((0, 120), (120, 250), (250, 360))]
        assert all(size < PICK_FRACTION * n for size, n in zip(sizes, (120, 130, 110))) and sizes[0] > 0
        picked = [[size for size in sizes if size]]  # segments without a passing row left out
        for k in (1, 5, 30):
            expected = expected_results(vectors, ids, passing, queries, k, rescore=rescore)
            calls.clear()
            got = index.search(queries, k, filter=spec, rescore=rescore)
            np.testing.assert_array_equal(got[1], expected[1], err_msg=json.dumps(spec))
            np.testing.assert_array_equal(got[0], expected[0], err_msg=json.dumps(spec))
            assert calls == picked  # the passing live rows are read, nothing else


def test_segments_without_passing_rows_are_skipped_and_whole_ones_searched_as_they_are(rng, tmp_path, monkeypatch):
    index, vectors, ids, records, live = build(rng, tmp_path, True)
    segments = index.segments
    queries = unit_rows(rng, 3, DIM)
    calls = spy_core(monkeypatch)
    rows = np.concatenate([s.ids for s in segments])
    # segment 0: none; segment 1: every row (deleted ones too); segment 2: most rows (the bitmap)
    mask = np.zeros(len(rows), bool)
    mask[120:250] = True
    mask[250:] = rows[250:] % 5 != 0
    views = []
    real_view = fastret.storage.segment.Segment.core_view
    monkeypatch.setattr(fastret.storage.segment.Segment, "core_view",
                        lambda self, allowed=None: views.append(allowed is None) or real_view(self, allowed))
    for k in (1, 10, 100):
        passing = live & np.isin(ids, rows[mask])
        expected = expected_results(vectors, ids, passing, queries, k)
        calls.clear()
        views.clear()
        got = index.search(queries, k, filter=mask)
        np.testing.assert_array_equal(got[1], expected[1])
        np.testing.assert_array_equal(got[0], expected[0])
        assert calls == [["whole", "bitmap"]]  # segment 0 left out
        assert views == [True, False]  # segment 1 with its plain deletion bitmap, segment 2 with the mask


def year_ordered_store(rng, tmp_path):
    """A store of three shards holding the years 2000-2004, 2005-2009 and 2010-2014 in order."""
    vectors = unit_rows(rng, 150, DIM)
    years = np.repeat(np.arange(2000, 2015), 10)
    index = fastret.Index(DIM)
    (tmp_path / "store").mkdir()
    for start in (0, 50, 100):
        index.add(vectors[start:start + 50], fields=[{"year": int(y)} for y in years[start:start + 50]])
        index.save(tmp_path / "store")  # one shard per save
    loaded = fastret.Index.load(tmp_path / "store")
    assert loaded.segment_count == 3
    return loaded, vectors, years


def test_a_year_range_reads_only_the_shards_that_straddle_it(rng, tmp_path, monkeypatch):
    index, vectors, years = year_ordered_store(rng, tmp_path)
    consulted = []  # the year indexes that a filter looked into (one per segment)
    real_span = NumbersIndex.span
    monkeypatch.setattr(NumbersIndex, "span", lambda self, *a: consulted.append(id(self)) or real_span(self, *a))
    # the indexes answer: no column is scanned
    monkeypatch.setattr(StoredFields, "column", lambda self, name: pytest.fail(f"column {name!r} scanned"))
    # the statistics come from the fields files: computing them again would read the columns
    monkeypatch.setattr(pa.compute, "min_max", lambda *a, **k: pytest.fail("statistics recomputed"))
    queries = unit_rows(rng, 2, DIM)
    for spec, segments_read in (({"year": {"$gte": 2005, "$lt": 2010}}, 0),  # one whole shard, two skipped
                                ({"year": {"$in": [2006, 2008]}}, 1),
                                ({"$and": [{"year": {"$gt": 2007}}, {"year": {"$lte": 2011}}]}, 2),
                                ({"$not": {"year": {"$lt": 2010}}}, 0),
                                ({"year": {"$gte": 2003}}, 1)):
        consulted.clear()
        passing = np.array([reference_match(spec, {"year": int(y)}, 0) for y in years])
        expected = expected_results(vectors, np.arange(150), passing, queries, 7)
        got = index.search(queries, 7, filter=spec)
        np.testing.assert_array_equal(got[1], expected[1], err_msg=json.dumps(spec))
        np.testing.assert_array_equal(got[0], expected[0], err_msg=json.dumps(spec))
        assert len(set(consulted)) == segments_read, json.dumps(spec)
        assert index.contains(np.arange(150), filter=spec).tolist() == passing.tolist()


def test_statistics_keep_wrong_types_and_nan_rows_honest(rng):
    index = fastret.Index(DIM)
    index.add(unit_rows(rng, 6, DIM), fields=[{"year": 2000, "journal": "Cell", "score": s}
                                              for s in (0.5, float("nan"), 0.7, None, 0.9, 0.6)])
    queries = unit_rows(rng, 1, DIM)
    # the year decides "none" from the statistics, yet the string field's wrong type is still refused
    with pytest.raises(FilterError, match=r'filter\["journal"\]\["\$lt"\]: field \'journal\' holds strings'):
        index.search(queries, 2, filter={"year": {"$gt": 3000}, "journal": {"$lt": 3}})
    # min 0.5 >= 0.5, but the NaN and the null row fail: not every row passes
    assert np.flatnonzero(Filter({"score": {"$gte": 0.5}}).mask(index.segments[0])).tolist() == [0, 2, 4, 5]
    assert np.flatnonzero(Filter({"$not": {"score": {"$lt": 0.5}}}).mask(index.segments[0])).tolist() == list(range(6))
    assert row_sets.as_mask(Filter({"year": {"$exists": False}}).masks(index.segments)[0], 6).tolist() == [False] * 6
    assert row_sets.as_mask(Filter({"year": 2000, "score": {"$exists": True}}).masks(index.segments)[0],
                            6).tolist() == [True] * 3 + [False] + [True] * 2


def test_filter_masks_are_evaluated_once_and_searched_as_the_filter(rng, tmp_path):
    index, vectors, ids, records, live = build(rng, tmp_path, True)
    queries = unit_rows(rng, 3, DIM)
    spec = {"$or": [{"year": {"$lt": 1995}}, {"journal": "Cell"}]}
    masks = Filter(spec).masks(index.segments)
    assert isinstance(masks, SegmentMasks) and len(masks) == 3
    expected = index.search(queries, 9, filter=spec)
    got = index.search(queries, 9, filter=masks)
    np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_array_equal(got[0], expected[0])
    index.add(unit_rows(rng, 2, DIM))
    with pytest.raises(FilterError, match=r"filter masks must hold one row set .* Filter.masks\(index.segments\)"):
        index.search(queries, 9, filter=masks)
