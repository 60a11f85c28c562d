"""A field condition answered from the field's index (fastret.storage.field_index), as a row set
(fastret.search.row_sets), in time that follows its matches rather than the segment's rows.

    one value ($eq, or $in / $under that one row value matches)   its posting, or its rows in the
                                                                  sorted values: already ascending
    several values, or a range over several numbers, few rows     their rows set in a mask, then
                                                                  listed (no sort)
    a range or $in over many rows of a number field               a comparison of the values in row
                                                                  order (`by_row`, narrow ints: a
                                                                  vector pass over a few bytes a row)
    $exists                                                       the rows without a value

Conditions an index cannot answer (string ordering) give None: the caller scans the column.
"""

from __future__ import annotations

import numpy as np

from ..storage.field_index import NUMBERS, NumbersIndex, TermsIndex
from . import row_sets


def lookup(node: tuple, index: TermsIndex | NumbersIndex, n: int) -> np.ndarray | None:
    """The rows of a segment of `n` rows that pass the field condition `node` (a parsed filter
    leaf of fastret.search.filters), from `index`; None when the index cannot answer it."""
    kind = node[0]
    if kind == "exists":
        nulls = np.asarray(index.nulls, np.int64)
        return row_sets.complement(nulls, n) if node[2] else row_sets.compact(nulls, n)
    if index.kind == NUMBERS:
        return _numbers(index, node[2] if kind == "in" else None, None if kind == "in" else node[2:4], n)
    if kind == "compare" and node[2] != "$eq":
        return None
    positions = index.positions(node[2] if kind == "in" else (node[3],))
    if len(positions) == 1:
        return row_sets.compact(np.asarray(index.posting(positions[0]), np.int64), n)
    return row_sets.compact(row_sets.as_mask(index.postings(positions), n), n)


def _numbers(index: NumbersIndex, values: tuple | None, comparison: tuple | None, n: int) -> np.ndarray:
    """Rows whose value is in `values` ($in), or passes `comparison` ((op, value))."""
    spans = [index.span("$eq", v) for v in values] if comparison is None else [index.span(*comparison)]
    spans = [(first, stop) for first, stop in spans if stop > first]
    total = sum(stop - first for first, stop in spans)
    if not spans:
        return np.empty(0, np.int64)
    sorted_values = index.values
    if len(spans) == 1 and sorted_values[spans[0][0]] == sorted_values[spans[0][1] - 1]:
        return row_sets.compact(np.asarray(index.rows(*spans[0]), np.int64), n)
    if total <= row_sets.ROWS_SHARE * n:
        return row_sets.compact(row_sets.as_mask(np.concatenate([index.rows(*span) for span in spans]), n), n)
    # many rows: a comparison of the values in row order (the span's ends bound them; an end at the
    # first or last value needs no test), its count known from the spans (already the mask's form)
    by_row, as_stored = index.by_row, index.by_row.dtype.type
    if len(spans) == 1:
        first, stop = spans[0]
        low = None if first == 0 else by_row >= as_stored(sorted_values[first])
        high = None if stop == len(sorted_values) else by_row <= as_stored(sorted_values[stop - 1])
        mask = high if low is None else low if high is None else low & high
        if mask is None:  # every value passes: the rows with one
            return row_sets.complement(np.asarray(index.nulls, np.int64), n)
    else:
        mask = np.isin(by_row, np.array([sorted_values[first] for first, _ in spans], by_row.dtype))
    mask[np.asarray(index.nulls, np.int64)] = False  # their by_row value is a placeholder
    return mask

