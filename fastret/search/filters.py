"""Filters: which rows a search may return, in the JSON operator language of Chroma, Pinecone and
LangChain, over the stored fields (fastret.storage.fields) and the vectors' ids.

    {"year": {"$gte": 2018}, "mesh": {"$in": ["Humans"]}}                 # fields side by side: and
    {"$or": [{"journal": "Nature"}, {"year": {"$lt": 2000}}]}
    {"mesh": {"$under": "C04"}}                                           # MeSH subtree (needs a tree)
    {"id": {"$in": [3, 17, 42]}}                                          # an allow-list of ids
    {"title": {"$exists": true}, "$not": {"pubtype": "Retracted Publication"}}

Operators: `$eq $ne $gt $gte $lt $lte` (a number, string or bool; `{"f": v}` is `{"f": {"$eq": v}}`),
`$in $nin` (a list of at most MAX_IN_VALUES such values), `$exists` (true/false), `$and $or` (a list
of filters), `$not` (a filter, or a field condition), `$under` (a MeSH tree number, descriptor id or
name: that descriptor and every one below it, via `fastret.MeshTree.descendants`; the field matches
a descriptor's id or its name). Several keys in one object must all hold.

Semantics: a list field (MeSH descriptors, publication types) matches when any element does;
`$ne` and `$nin` are the negations of `$eq` and `$in` (so a list field passes `$nin` when no
element is in the list, and a row without the field passes both); a row without the field fails
every other comparison. Numbers compare with numbers and strings with strings; anything else is
an error naming the part of the filter, as are unknown fields and operators.

`Filter(spec, mesh=tree)` parses and checks a filter once (`$under` expanded to its descriptors
then); `Filter.masks` evaluates it once per call, for every segment, and the search shares the
result among all its queries. Per segment, in this order:

1. The numeric columns' statistics (`StoredFields.stats`: min, max, nulls, NaNs, kept in the fields
   file) decide what they can: a comparison or `$in` that no row (or every row) of the segment can
   pass reads nothing, so a year range on year-ordered shards touches only the shards that
   straddle its bounds.
2. A field with an index (fastret.storage.field_index, written with the fields) answers from it in
   time proportional to its matches: `$eq $in` (and `$under`, a union of postings) from a string
   field's postings; comparisons and `$in` on a number field from its sorted values; `$exists`
   from the rows without a value. `$ne $nin $not` are complements, `$and $or` combine row sets
   (fastret.search.row_sets: a sorted row list or a mask, the cheaper for the count; an `$and`
   starts from its rarest part).
3. Anything else scans the Arrow column, vectorised (pyarrow.compute): string ordering
   (`$gt` on strings), booleans, lists of numbers, free text (a string field with a distinct value
   per row is not indexed), and fields written before field indexes were kept
   (`fastret index --field-indexes` writes them).

The result per segment is a row set (ascending int64 rows, or a bool mask) or None (every row
passes); the search skips segments with no passing row and hands the core the rows themselves when
few pass, so its cost follows them too (fastret.search.core.narrowed): results are exact over the
allowed rows, never a post-filter. `Filter.masks` is that evaluation on its own (to time it apart).
"""

from __future__ import annotations

import json
import math
from typing import Any, Sequence

import numpy as np

from ..storage.fields import ID_FIELD, ColumnStats, require_arrow
from ..storage.segment import Segment
from . import field_lookup, row_sets

MAX_IN_VALUES = 100_000  # values in one $in / $nin list; a larger allow-list: pass a bool mask
COMPARISONS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte")
FIELD_OPERATORS = (*COMPARISONS, "$in", "$nin", "$exists", "$under", "$not")
LOGICAL_OPERATORS = ("$and", "$or", "$not")
_NEGATED = {"$ne": "$eq", "$nin": "$in"}
_ORDERED = {"$gt": "greater", "$gte": "greater_equal", "$lt": "less", "$lte": "less_equal", "$eq": "equal"}


class SegmentMasks(list):
    """A filter evaluated over a list of segments (`Filter.masks`): per segment, the rows that pass
    (deleted ones included) as a row set (fastret.search.row_sets: int64 ascending rows, or a bool
    mask over its rows), or None when every row passes. `search(..., filter=masks)` takes it as it
    is, so evaluating a filter can be timed apart from searching."""


class FilterError(ValueError):
    """A filter that cannot be applied: malformed, an unknown field or operator, a value of the
    wrong type; the message names the part of the filter (e.g. `filter["year"]["$gte"]`)."""


def _kind(value: Any) -> str | None:
    """"number", "string" or "bool" for a comparable value, else None."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)) and not (isinstance(value, float) and not math.isfinite(value)):
        return "number"
    if isinstance(value, str):
        return "string"
    return None


class Filter:
    """A parsed, checked filter (see the module docstring for the language).

    Args:
        spec: the filter as a dict (the JSON operator form).
        mesh: a `fastret.MeshTree` for `$under` (None: `$under` is refused).

    Raises:
        FilterError: a malformed filter, an unknown operator, a value of the wrong type, an
            `$in` list longer than MAX_IN_VALUES, or `$under` without a tree or with an unknown
            descriptor; the message names the part.
    """

    def __init__(self, spec: dict, *, mesh: Any = None):
        self.spec = spec
        self.fields: set[str] = set()
        # `$under` is resolved to descriptor names here: the tree is not kept (a filter is small
        # enough to send to every shard)
        self.root = self._parse(spec, "filter", mesh)

    @classmethod
    def from_json(cls, text: str, *, mesh: Any = None) -> "Filter":
        """A filter from its JSON text (the CLI's --filter, a request's "filter").

        Raises:
            FilterError: text that is not JSON (with the position), or a bad filter.
        """
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as error:
            raise FilterError(f"filter is not valid JSON: {error.msg} at line {error.lineno} "
                              f"column {error.colno}") from None
        return cls(spec, mesh=mesh)

    def __repr__(self) -> str:
        return f"fastret.search.filters.Filter({json.dumps(self.spec)})"

    # ------------------------------------------------------------------------------ parsing

    def _parse(self, spec: Any, path: str, mesh: Any) -> tuple:
        if not isinstance(spec, dict):
            raise FilterError(f"{path} must be an object of conditions such as {{\"year\": {{\"$gte\": 2018}}}}, "
                              f"got {spec!r:.80}")
        parts = []
        for key, value in spec.items():
            where = f"{path}[{json.dumps(key)}]"
            if not isinstance(key, str):
                raise FilterError(f"{path}: keys must be field names or operators (str), got {key!r}")
            if key in ("$and", "$or"):
                if not isinstance(value, list) or not value:
                    raise FilterError(f"{where} must be a non-empty list of filters, got {value!r:.80}")
                parts.append((key[1:], [self._parse(item, f"{where}[{i}]", mesh) for i, item in enumerate(value)]))
            elif key == "$not":
                parts.append(("not", self._parse(value, where, mesh)))
            elif key.startswith("$"):
                raise FilterError(f"{where}: unknown operator {key!r} here; a filter's keys are field names or "
                                  f"{', '.join(LOGICAL_OPERATORS)} (field operators: {', '.join(FIELD_OPERATORS)})")
            else:
                self.fields.add(key)
                parts.append(self._parse_field(key, value, where, mesh))
        return parts[0] if len(parts) == 1 else ("and", parts)

    def _parse_field(self, field: str, condition: Any, path: str, mesh: Any) -> tuple:
        if not isinstance(condition, dict):
            return self._parse_operator(field, "$eq", condition, path, mesh)
        if not condition:
            raise FilterError(f"{path}: an empty condition; give an operator such as {{\"$eq\": value}}")
        parts = []
        for op, value in condition.items():
            where = f"{path}[{json.dumps(op)}]"
            if op == "$not":
                parts.append(("not", self._parse_field(field, value, where, mesh)))
            elif op in FIELD_OPERATORS:
                parts.append(self._parse_operator(field, op, value, where, mesh))
            else:
                raise FilterError(f"{where}: unknown operator {op!r}; field operators are {', '.join(FIELD_OPERATORS)}")
        return parts[0] if len(parts) == 1 else ("and", parts)

    def _parse_operator(self, field: str, op: str, value: Any, path: str, mesh: Any) -> tuple:
        if op == "$exists":
            if not isinstance(value, bool):
                raise FilterError(f"{path} must be true or false, got {value!r:.80}")
            return ("exists", field, value, path)
        if op == "$under":
            return ("in", field, _under(mesh, value, path), "string", path)
        if op in ("$in", "$nin"):
            if not isinstance(value, list):
                raise FilterError(f"{path} must be a list of values, got {value!r:.80}")
            if len(value) > MAX_IN_VALUES:
                raise FilterError(f"{path} holds {len(value):,} values; at most {MAX_IN_VALUES:,} are accepted "
                                  "(for a larger allow-list pass a boolean mask over the index's rows)")
            kinds = {_kind(v) for v in value}
            if None in kinds or len(kinds) > 1:
                raise FilterError(f"{path} must hold numbers only, strings only or booleans only, got {value!r:.80}")
            node = ("in", field, tuple(value), kinds.pop() if kinds else None, path)
            return ("not", node) if op == "$nin" else node
        kind = _kind(value)
        if kind is None:
            raise FilterError(f"{path} must be a number, a string or a boolean, got {value!r:.80}")
        if kind == "bool" and op not in ("$eq", "$ne"):
            raise FilterError(f"{path}: {op} does not order booleans; use $eq or $ne")
        node = ("compare", field, _NEGATED.get(op, op), value, kind, path)
        return ("not", node) if op in _NEGATED else node

    # ----------------------------------------------------------------------------- evaluating

    def mask(self, segment: Segment) -> np.ndarray:
        """bool [len(segment)]: the rows of `segment` that pass (deleted ones included).

        Raises:
            FilterError: a value whose type differs from the field's (a number for a string
                field, say), naming the part.
        """
        found = _evaluate(self.root, segment)
        return np.full(len(segment), found) if isinstance(found, bool) else row_sets.as_mask(found, len(segment))

    def masks(self, segments: Sequence[Segment]) -> SegmentMasks:
        """The filter evaluated over `segments` (e.g. `index.segments`), what `search(...,
        filter=masks)` then takes without evaluating it again: per segment, None when every row
        passes, else the passing rows (deleted ones included) as int64 ascending rows or a bool
        [len(segment)] mask, whichever is cheaper (fastret.search.row_sets). Segments that the
        columns' statistics decide are not read; indexed fields are answered from their indexes.

        Raises:
            FilterError: as `mask`, and for a field that no segment stores.
        """
        stored = {name for s in segments if s.fields is not None for name in s.fields.names}
        unknown = sorted(self.fields - stored - {ID_FIELD})
        if unknown:
            if not stored:
                raise FilterError(f"filter[{json.dumps(unknown[0])}]: this index has no stored fields (only \"id\" "
                                  "can be filtered); add them with Index.add(..., fields=[...]) or "
                                  "encode_corpus(..., fields=[...])")
            raise FilterError(f"filter[{json.dumps(unknown[0])}]: unknown field; the index stores "
                              f"{', '.join(sorted(stored))} (and \"id\")")
        out = SegmentMasks()
        for segment in segments:
            found = _evaluate(self.root, segment)
            out.append((None if found else np.empty(0, np.int64)) if isinstance(found, bool) else found)
        return out


def _under(mesh: Any, value: Any, path: str) -> tuple:
    """The descriptor ids and names at or below `value` in `mesh` (`$under`)."""
    if mesh is None:
        raise FilterError(f"{path}: $under needs the MeSH tree; use fastret.search.filters.Filter(spec, "
                          "mesh=fastret.MeshTree.from_file(...)) (the CLI and server: --mesh FILE)")
    if not isinstance(value, str):
        raise FilterError(f"{path} must be a MeSH tree number, descriptor id or name (str), got {value!r:.80}")
    try:
        keys = mesh.descendants(value)
    except KeyError:
        raise FilterError(f"{path}: {value!r} is neither a tree number nor a descriptor of {mesh!r}") from None
    return tuple(sorted(set(keys) | {mesh.name(key) for key in keys}))


def _evaluate(node: tuple, segment: Segment) -> np.ndarray | bool:
    """The passing rows of `segment` as a row set (fastret.search.row_sets), or one bool for every
    row when the statistics decide (`_decide`)."""
    decided = _decide(node, segment)
    if decided is not None:
        return decided
    kind, n = node[0], len(segment)
    if kind in ("and", "or"):
        # a part decided alone is undecided as a whole here, so it neither ends the rest nor is all of it
        parts = [found for part in node[1] if not isinstance(found := _evaluate(part, segment), bool)]
        return row_sets.intersection(parts, n) if kind == "and" else row_sets.union(parts, n)
    if kind == "not":
        return row_sets.complement(_evaluate(node[1], segment), n)
    field = node[1]
    if field == ID_FIELD:
        return _evaluate_ids(node, np.asarray(segment.ids))
    index = None if segment.field_index is None else segment.field_index.get(field)
    found = None if index is None else field_lookup.lookup(node, index, n)
    return _evaluate_column(node, segment.fields.column(field), n) if found is None else found


def _decide(node: tuple, segment: Segment) -> bool | None:
    """True when every row of `segment` passes `node`, False when none does, None when only its
    rows can tell; from the columns' statistics and types, reading no row. Every part is looked at
    (no short cut), so a value of the wrong type is refused whatever the other parts decide."""
    kind = node[0]
    if kind in ("and", "or"):
        parts = [_decide(part, segment) for part in node[1]]
        ends, whole = (False, True) if kind == "and" else (True, False)
        if ends in parts:
            return ends
        return whole if all(part is whole for part in parts) else None
    if kind == "not":
        inner = _decide(node[1], segment)
        return None if inner is None else not inner
    field = node[1]
    if field == ID_FIELD or len(segment) == 0:
        return True if len(segment) == 0 else None
    column_type = None if segment.fields is None else segment.fields.column_type(field)
    if column_type is None:  # these rows lack the field: all null
        return kind == "exists" and not node[2]
    _check_kind(node, column_type)
    stats = segment.fields.stats(field)
    if stats is None:
        return None
    if kind == "exists":
        present, absent = stats.nulls == 0, stats.nulls == len(segment)
        return _all_or_none(present, absent) if node[2] else _all_or_none(absent, present)
    values = node[2] if kind == "in" else (node[3],)
    if (node[3] if kind == "in" else node[4]) != "number":
        return None
    return _decide_numbers(node[2] if kind == "compare" else "$in", values, stats)


def _decide_numbers(op: str, values: tuple, stats: ColumnStats) -> bool | None:
    """`_decide` for a comparison or `$in` of numbers on a numeric column with `stats`."""
    if stats.low is None:  # no row holds a number
        return False
    low, high = stats.low, stats.high
    whole = stats.nulls == 0 and stats.nans == 0  # rows without a number pass no comparison
    if op == "$in":
        return _all_or_none(whole and low == high and low in values, all(v < low or v > high for v in values))
    value = values[0]
    every, none = {"$gt": (low > value, high <= value), "$gte": (low >= value, high < value),
                   "$lt": (high < value, low >= value), "$lte": (high <= value, low > value),
                   "$eq": (low == high == value, value < low or value > high)}[op]
    return _all_or_none(whole and every, none)


def _all_or_none(every: bool, none: bool) -> bool | None:
    return True if every else False if none else None


def _evaluate_ids(node: tuple, ids: np.ndarray) -> np.ndarray:
    kind, path = node[0], node[-1]
    if kind == "exists":
        return np.full(len(ids), node[2])
    value_kind, value = (node[3], node[2]) if kind == "in" else (node[4], node[3])
    if value_kind not in ("number", None) or (kind == "in" and any(isinstance(v, float) for v in value)):
        raise FilterError(f"{path}: ids are integers, got {value!r:.80}")
    if kind == "in":
        return np.isin(ids, np.array(node[2], np.int64))
    return getattr(np, _ORDERED[node[2]])(ids, node[3])


def _column_kind(column_type: Any, arrow: Any) -> str:
    types = arrow.types
    if types.is_integer(column_type) or types.is_floating(column_type):
        return "number"
    if types.is_string(column_type) or types.is_large_string(column_type):
        return "string"
    if types.is_boolean(column_type):
        return "bool"
    if types.is_null(column_type):
        return "null"
    return str(column_type)


def _is_list(column_type: Any, arrow: Any) -> bool:
    return arrow.types.is_list(column_type) or arrow.types.is_large_list(column_type)


def _check_kind(node: tuple, column_type: Any) -> str:
    """The kind of values a column of `column_type` holds ("number", "string", ...); FilterError
    when the value of `node` (a field condition other than `$exists`) is of another kind."""
    kind, field, path = node[0], node[1], node[-1]
    if kind == "exists":
        return ""
    arrow = require_arrow()
    is_list = _is_list(column_type, arrow)
    held = _column_kind(column_type.value_type if is_list else column_type, arrow)
    value_kind = node[3] if kind == "in" else node[4]
    if held != "null" and value_kind is not None and value_kind != held:
        shown = "a list of" if kind == "in" else "a"
        raise FilterError(f"{path}: field {field!r} holds {'lists of ' if is_list else ''}{held}s, "
                          f"but the filter gives {shown} {value_kind}: {node[2] if kind == 'in' else node[3]!r:.80}")
    return held


def _evaluate_column(node: tuple, column: Any, n: int) -> np.ndarray:
    arrow = require_arrow()
    compute = arrow.compute
    kind = node[0]
    if kind == "exists":
        return column.is_valid().to_numpy(zero_copy_only=False) == node[2]
    is_list = _is_list(column.type, arrow)
    values = compute.list_flatten(column) if is_list else column
    held = _check_kind(node, column.type)
    if held == "null":
        return np.zeros(n, bool)
    if kind == "in":
        if not node[2]:
            return np.zeros(n, bool)
        value_set = arrow.array(list(node[2]))
        if held == "number" and value_set.type != values.type:
            values, value_set = values.cast(arrow.float64()), value_set.cast(arrow.float64())
        elif value_set.type != values.type:
            value_set = value_set.cast(values.type)
        hits = compute.is_in(values, value_set=value_set)
    else:
        hits = getattr(compute, _ORDERED[node[2]])(values, arrow.scalar(node[3]))
    hits = compute.fill_null(hits, False).to_numpy(zero_copy_only=False).astype(bool, copy=False)
    if not is_list:
        return hits
    out = np.zeros(n, bool)
    parents = compute.list_parent_indices(column).to_numpy(zero_copy_only=False)
    out[parents[hits]] = True  # a list matches when any element does
    return out


def _is_row_set(selection: Any, n: int) -> bool:
    """True for None, a bool [n] mask or int64 rows strictly ascending in [0, n)."""
    if selection is None:
        return True
    if not isinstance(selection, np.ndarray) or selection.ndim != 1:
        return False
    if selection.dtype == bool:
        return len(selection) == n
    return (selection.dtype == np.int64 and (len(selection) == 0 or (
        selection[0] >= 0 and selection[-1] < n and bool(np.all(selection[1:] > selection[:-1])))))


def allowed_rows(filter: Any, segments: Sequence[Segment], *,
                 mesh: Any = None) -> list[np.ndarray | None] | None:
    """Compile a search's `filter` to one entry per segment: its passing rows as a row set
    (fastret.search.row_sets: int64 ascending rows or a bool mask over its rows), or None when
    every row passes (None for the whole list: no filter).

    Args:
        filter: None; a `Filter`; a dict in the JSON operator form (parsed with `mesh`); a
            bool array over the rows of `segments` one after another (deleted rows included,
            see `Index.segments`); or the `SegmentMasks` of `Filter.masks(segments)`.
        segments: the segments searched.
        mesh: a `fastret.MeshTree` for `$under` in a dict filter.

    Raises:
        FilterError: a bad filter, a field that no segment stores (or segments without stored
            fields at all), a value of the wrong type, or a mask of the wrong length or dtype.
    """
    if filter is None:
        return None
    if isinstance(filter, np.ndarray):
        total = sum(len(s) for s in segments)
        if filter.dtype != bool or filter.shape != (total,):
            raise FilterError(f"a filter mask must be bool [{total}] (one per row of the index's segments, "
                              f"deleted ones included), got {filter.dtype} {filter.shape}")
        starts = np.cumsum([0] + [len(s) for s in segments])
        return [filter[a:b] for a, b in zip(starts[:-1], starts[1:])]
    if isinstance(filter, SegmentMasks):
        lengths = [len(s) for s in segments]
        if len(filter) != len(segments) or not all(_is_row_set(m, n) for m, n in zip(filter, lengths)):
            raise FilterError(f"filter masks must hold one row set (a bool mask, or int64 ascending rows) or None "
                              f"(every row) per segment, of {lengths} rows; got {len(filter)} for other segments: "
                              "evaluate the filter with Filter.masks(index.segments) on the segments searched")
        return filter
    if isinstance(filter, dict):
        filter = Filter(filter, mesh=mesh)
    if not isinstance(filter, Filter):
        raise FilterError(f"filter must be a dict (the JSON operator form), a fastret.search.filters.Filter, a "
                          f"bool numpy array or Filter.masks(segments), got {type(filter).__name__}")
    return filter.masks(segments)
