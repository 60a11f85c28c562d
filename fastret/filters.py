"""Filters: which rows a search may return, in the JSON operator language of Chroma, Pinecone and
LangChain, over the stored fields (fastret.fields) and the vectors' ids.

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

`Filter(spec, mesh=tree)` parses and checks a filter once; `allowed_rows` compiles it per segment
to a bool mask over the segment's rows, vectorised over the Arrow columns (pyarrow.compute). A
search hands the core each segment's deleted | not-allowed rows as one bitmap (fastret.search):
results are exact over the allowed rows, never a post-filter.
"""

from __future__ import annotations

import json
import math
from typing import Any, Sequence

import numpy as np

from .fields import ID_FIELD, require_arrow
from .segment import Segment

MAX_IN_VALUES = 100_000  # values in one $in / $nin list; a larger allow-list: pass a bool mask
COMPARISONS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte")
FIELD_OPERATORS = (*COMPARISONS, "$in", "$nin", "$exists", "$under", "$not")
LOGICAL_OPERATORS = ("$and", "$or", "$not")
_NEGATED = {"$ne": "$eq", "$nin": "$in"}
_ORDERED = {"$gt": "greater", "$gte": "greater_equal", "$lt": "less", "$lte": "less_equal", "$eq": "equal"}


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
        return f"fastret.filters.Filter({json.dumps(self.spec)})"

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
        return _evaluate(self.root, segment)


def _under(mesh: Any, value: Any, path: str) -> tuple:
    """The descriptor ids and names at or below `value` in `mesh` (`$under`)."""
    if mesh is None:
        raise FilterError(f"{path}: $under needs the MeSH tree; use fastret.filters.Filter(spec, "
                          "mesh=fastret.MeshTree.from_file(...)) (the CLI and server: --mesh FILE)")
    if not isinstance(value, str):
        raise FilterError(f"{path} must be a MeSH tree number, descriptor id or name (str), got {value!r:.80}")
    try:
        keys = mesh.descendants(value)
    except KeyError:
        raise FilterError(f"{path}: {value!r} is neither a tree number nor a descriptor of {mesh!r}") from None
    return tuple(sorted(set(keys) | {mesh.name(key) for key in keys}))


def _evaluate(node: tuple, segment: Segment) -> np.ndarray:
    kind = node[0]
    if kind == "and":
        out = np.ones(len(segment), bool)
        for part in node[1]:
            out &= _evaluate(part, segment)
        return out
    if kind == "or":
        out = np.zeros(len(segment), bool)
        for part in node[1]:
            out |= _evaluate(part, segment)
        return out
    if kind == "not":
        return ~_evaluate(node[1], segment)
    field = node[1]
    if field == ID_FIELD:
        return _evaluate_ids(node, np.asarray(segment.ids))
    column = None if segment.fields is None else segment.fields.column(field)
    if column is None:  # these rows lack the field: all null
        return np.full(len(segment), kind == "exists" and not node[2])
    return _evaluate_column(node, column, len(segment))


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


def _evaluate_column(node: tuple, column: Any, n: int) -> np.ndarray:
    arrow = require_arrow()
    compute = arrow.compute
    kind, field, path = node[0], node[1], node[-1]
    if kind == "exists":
        return column.is_valid().to_numpy(zero_copy_only=False) == node[2]
    is_list = arrow.types.is_list(column.type) or arrow.types.is_large_list(column.type)
    values = compute.list_flatten(column) if is_list else column
    held = _column_kind(values.type, arrow)
    if held == "null":
        return np.zeros(n, bool)
    value_kind = node[3] if kind == "in" else node[4]
    if value_kind is not None and value_kind != held:
        shown = "a list of" if kind == "in" else "a"
        raise FilterError(f"{path}: field {field!r} holds {'lists of ' if is_list else ''}{held}s, "
                          f"but the filter gives {shown} {value_kind}: {node[2] if kind == 'in' else node[3]!r:.80}")
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


def allowed_rows(filter: Any, segments: Sequence[Segment], *, mesh: Any = None) -> list[np.ndarray] | None:
    """Compile a search's `filter` to one bool mask per segment (None: no filter).

    Args:
        filter: None; a `Filter`; a dict in the JSON operator form (parsed with `mesh`); or a
            bool array over the rows of `segments` one after another (deleted rows included,
            see `Index.segments`).
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
    if isinstance(filter, dict):
        filter = Filter(filter, mesh=mesh)
    if not isinstance(filter, Filter):
        raise FilterError(f"filter must be a dict (the JSON operator form), a fastret.filters.Filter or a "
                          f"bool numpy array, got {type(filter).__name__}")
    stored = {name for s in segments if s.fields is not None for name in s.fields.names}
    unknown = sorted(filter.fields - stored - {ID_FIELD})
    if unknown:
        if not stored:
            raise FilterError(f"filter[{json.dumps(unknown[0])}]: this index has no stored fields (only \"id\" "
                              "can be filtered); add them with Index.add(..., fields=[...]) or "
                              "encode_corpus(..., fields=[...])")
        raise FilterError(f"filter[{json.dumps(unknown[0])}]: unknown field; the index stores "
                          f"{', '.join(sorted(stored))} (and \"id\")")
    return [filter.mask(segment) for segment in segments]
