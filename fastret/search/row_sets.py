"""Row sets: the rows of one segment that a filter lets through, in whichever of two forms is
cheaper for how many they are.

    rows   int64 [m], strictly ascending: few rows (a posting list, a narrow range); what an
           operation on them costs follows m
    mask   bool [n], one per row of the segment: many rows; costs follow n

Every operation takes either form and gives the result in the cheaper one (`compact`): rows while
they are at most ROWS_SHARE of the segment's rows, else a mask. An intersection starts from its
shortest row list and tests the others' membership on those rows alone, so `{"mesh": ..., "year":
...}` costs what the rarer condition matches (the rule Lucene's conjunctions follow).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .. import _core

# Rows kept as a list while they are at most this share of the segment: a list costs 8 bytes a row
# where a mask costs 1, and membership in a list a binary search where a mask's is one load.
ROWS_SHARE = 1 / 16


def is_rows(selection: np.ndarray) -> bool:
    """True for the rows form (int64 ascending), False for a bool mask."""
    return selection.dtype != np.bool_


def count(selection: np.ndarray) -> int:
    """How many rows the set holds."""
    return len(selection) if is_rows(selection) else int(np.count_nonzero(selection))


def as_mask(selection: np.ndarray, n: int) -> np.ndarray:
    """bool [n]: the set as a mask over the segment's n rows (rows may come in any order, and
    repeat: a concatenation of postings)."""
    if not is_rows(selection):
        return selection
    mask = np.zeros(n, bool)
    mask[selection] = True
    return mask


def as_rows(selection: np.ndarray) -> np.ndarray:
    """int64 ascending: the set as rows."""
    return selection if is_rows(selection) else _core.picked_rows([np.ascontiguousarray(selection)])[0]


def compact(selection: np.ndarray, n: int) -> np.ndarray:
    """The set in its cheaper form for the segment's n rows (module docstring)."""
    many = count(selection) > ROWS_SHARE * n
    if is_rows(selection):
        return as_mask(selection, n) if many else selection
    return selection if many else as_rows(selection)


def member(selection: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """bool, the shape of `rows` (int64 rows of the segment, any order): which are in the set."""
    if not is_rows(selection):
        return selection[rows]
    if len(selection) == 0:
        return np.zeros(np.shape(rows), bool)
    at = np.minimum(np.searchsorted(selection, rows), len(selection) - 1)
    return selection[at] == rows


def intersection(parts: Sequence[np.ndarray], n: int) -> np.ndarray:
    """The rows in every one of `parts` (at least one): from the shortest row list, testing the
    others' membership on its rows alone; masks alone are joined with one `&` each."""
    lists = sorted((part for part in parts if is_rows(part)), key=len)
    masks = [part for part in parts if not is_rows(part)]
    if lists:
        out = lists[0]
        for part in lists[1:] + masks:
            out = out[member(part, out)]
        return out
    out = masks[0]
    for part in masks[1:]:
        out = out & part
    return compact(out, n)


def union(parts: Sequence[np.ndarray], n: int) -> np.ndarray:
    """The rows in any of `parts` (at least one)."""
    if len(parts) == 1:
        return parts[0]
    out = np.zeros(n, bool)
    for part in parts:
        if is_rows(part):
            out[part] = True
        else:
            out |= part
    return compact(out, n)


def complement(selection: np.ndarray, n: int) -> np.ndarray:
    """The segment's rows not in the set."""
    if is_rows(selection):
        out = np.ones(n, bool)
        out[selection] = False
    else:
        out = ~selection
    return compact(out, n)
