"""Field indexes: a segment's stored fields kept as postings and sorted values, so that a filter
costs what it matches (fastret.search.filters answers from them) instead of a pass over the column.

Two kinds, picked per column when the fields are written (`build_field_index`):

    terms    a string column, or a column of lists of strings (MeSH descriptors, publication
             types, journals) whose distinct values are few next to the values it holds (at most
             max(TERMS_MIN, TERMS_SHARE x values)): each distinct value with the ascending rows
             that hold it (Lucene's postings). Free text (titles, abstracts: nearly every value
             distinct) is not indexed; a filter on it scans the column.
    numbers  an integer or float column (not lists): its values in ascending order, each with its
             row, equal values by ascending row (Lucene's points, Qdrant's range index). NaN
             values are left out (they pass no comparison).

Both keep the rows without a value (null), for `$exists`. Boolean columns and lists of numbers are
not indexed: a filter on them scans the column, as it does on fields written before this file
existed (`fastret index --field-indexes` writes the missing ones).

Layout (little-endian), a sidecar of its segment file (fastret.storage.segment_files names it):

    header, 64 bytes
      magic           8s   b"FRTFIDX\\0"
      version         u32  1
      segment_crc     u32  the segment file's data checksum (fastret.storage.index_file)
      segment_count   u64  its rows
      directory_size  u64  bytes of the directory
      contents_crc    u32  CRC-32 of every byte after the header (directory, padding, arrays)
      header_crc      u32  CRC-32 of the bytes above
      (zeros up to 64 bytes)
    directory   JSON: {"fields": {name: {"kind": "terms" | "numbers",
                                          "arrays": {part: [offset, dtype, length]}}}}
    arrays      from the first 64-byte boundary after the directory, each at a 64-byte boundary
                (offsets from the first):
      terms     value_offsets uint64 [V + 1], value_blob uint8: the distinct values, UTF-8,
                ascending by bytes (value v is value_blob[value_offsets[v]:value_offsets[v + 1]]);
                starts uint64 [V + 1] and rows uint32 [P]: value v's rows are
                rows[starts[v]:starts[v + 1]], ascending; nulls uint32: rows without a value
      numbers   values int64 | float64 [M] ascending, order uint32 [M] their rows; by_row: the
                values in row order, float64 (NaN: no value) or the narrowest signed integer type
                holding them (a row without a value holds the smallest); nulls uint32

Like the bits file it names its segment's checksum and size, so it is never applied to another
segment or version; one that names another version is stale (`read_field_index` gives None, and
filters scan the columns). Written to a temporary name and renamed (fastret.storage.atomic), in the
same commit as its segment file and fields (`segment_files.write_segment`).
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .atomic import atomic_write
from .fields import StoredFields, require_arrow
from .index_file import Header, IndexFileError

MAGIC = b"FRTFIDX\0"
VERSION = 1
HEADER_SIZE = 64
TERMS_MIN = 1024  # a string column with at most this many distinct values is always indexed
TERMS_SHARE = 1 / 4  # ... and one with more, while they are at most this share of its values
MAX_ROWS = 1 << 32  # rows are uint32
_HEAD = struct.Struct("<8sIIQQI")  # magic, version, segment crc, segment count, directory size, contents crc
_ALIGN = 64
_CRC_CHUNK = 1 << 24
# the array types a field index holds (a directory naming another is damaged)
_DTYPES = frozenset(("|u1", "|i1", "<i2", "<i4", "<i8", "<u4", "<u8", "<f8"))
TERMS, NUMBERS = "terms", "numbers"


# ---------------------------------------------------------------------------------------- building


def build_field_index(fields: StoredFields) -> dict[str, tuple[str, dict[str, np.ndarray]]]:
    """{field: (kind, arrays)} for the indexable columns of `fields` (module docstring: which ones,
    and what each kind holds)."""
    arrow = require_arrow()
    out = {}
    for name in fields.names:
        column = fields.column(name)
        column_type = column.type
        is_list = arrow.types.is_list(column_type) or arrow.types.is_large_list(column_type)
        value_type = column_type.value_type if is_list else column_type
        nulls = np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False)).astype(np.uint32)
        if arrow.types.is_string(value_type) or arrow.types.is_large_string(value_type):
            arrays = _terms(column, is_list, len(fields))
            if arrays is not None:
                out[name] = (TERMS, {**arrays, "nulls": nulls})
        elif not is_list and (arrow.types.is_integer(column_type) or arrow.types.is_floating(column_type)):
            out[name] = (NUMBERS, {**_numbers(column), "nulls": nulls})
    return out


def _terms(column: Any, is_list: bool, count: int) -> dict[str, np.ndarray] | None:
    """The postings of a string (or list-of-strings) column, or None when it holds too many distinct values."""
    arrow = require_arrow()
    compute = arrow.compute
    values = compute.list_flatten(column) if is_list else column
    parents = (compute.list_parent_indices(column).to_numpy(zero_copy_only=False) if is_list
               else np.arange(count, dtype=np.int64))
    encoded = compute.dictionary_encode(values).combine_chunks()
    if len(encoded.dictionary) > max(TERMS_MIN, TERMS_SHARE * (len(values) - values.null_count)):
        return None
    dictionary = encoded.dictionary.to_pylist()
    codes = encoded.indices.to_numpy(zero_copy_only=False)  # float with NaN where a value is null
    present = ~np.isnan(codes) if codes.dtype.kind == "f" else np.ones(len(codes), bool)
    codes, parents = codes[present].astype(np.int64), np.asarray(parents, np.int64)[present]
    by_bytes = sorted(range(len(dictionary)), key=lambda v: dictionary[v].encode("utf-8"))
    rank = np.empty(len(dictionary), np.int64)
    rank[by_bytes] = np.arange(len(dictionary))
    # (value, row) pairs, each once (a list may repeat a value), ascending: postings in value order
    pairs = np.unique(rank[codes] * count + parents)
    value_of, rows = np.divmod(pairs, count) if count else (pairs, pairs)
    starts = np.zeros(len(dictionary) + 1, np.uint64)
    np.cumsum(np.bincount(value_of, minlength=len(dictionary)), out=starts[1:])
    encoded_values = [dictionary[v].encode("utf-8") for v in by_bytes]
    value_offsets = np.zeros(len(encoded_values) + 1, np.uint64)
    np.cumsum([len(v) for v in encoded_values], out=value_offsets[1:])
    return {"value_offsets": value_offsets, "value_blob": np.frombuffer(b"".join(encoded_values), np.uint8),
            "starts": starts, "rows": rows.astype(np.uint32)}


def _numbers(column: Any) -> dict[str, np.ndarray]:
    """The sorted values of a numeric column and their rows (nulls and NaNs left out), and its
    values in row order (`by_row`)."""
    arrow = require_arrow()
    is_float = arrow.types.is_floating(column.type)
    values = column.cast(arrow.float64() if is_float else arrow.int64()).to_numpy(zero_copy_only=False)
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    if values.dtype.kind == "f":  # nulls came back as NaN (an integer column with nulls too)
        valid &= ~np.isnan(values)
    rows = np.flatnonzero(valid)
    present = values[rows].astype(np.float64 if is_float else np.int64)
    order = np.argsort(present, kind="stable")
    return {"values": present[order], "order": rows[order].astype(np.uint32),
            "by_row": _by_row(present, rows, len(values), is_float)}


def _by_row(present: np.ndarray, rows: np.ndarray, count: int, is_float: bool) -> np.ndarray:
    """The values in row order, in the narrowest dtype that holds them exactly: float64 with NaN
    where a row has none, or the smallest signed integer type with the rows without a value
    holding the smallest value (a reader clears them: they are `nulls`)."""
    if is_float:
        out = np.full(count, np.nan)
    else:
        low, high = (int(present.min()), int(present.max())) if len(present) else (0, 0)
        dtype = next(t for t in (np.int8, np.int16, np.int32, np.int64)
                     if np.iinfo(t).min <= low and high <= np.iinfo(t).max)
        out = np.full(count, low, dtype)
    out[rows] = present
    return out


def write_field_index(target: str | os.PathLike, header: Header, fields: StoredFields) -> bool:
    """Write the field index of `fields` (the stored fields of the segment whose header is
    `header`) to `target`, atomically; False (and nothing written) when no column is indexable.

    Raises:
        ValueError: fields of another row count than the segment's, or a segment of 2^32 rows or more.
    """
    if header.count != fields.count:
        raise ValueError(f"{fields.count} rows of fields for a segment of {header.count} vectors ({target})")
    if header.count >= MAX_ROWS:
        raise ValueError(f"a field index holds rows as uint32; this segment has {header.count:,} rows ({target})")
    built = build_field_index(fields)
    if not built:
        return False
    directory: dict[str, Any] = {"fields": {}}
    parts = []
    offset = 0  # from the start of the arrays
    for name, (kind, arrays) in built.items():
        placed = {}
        for part, array in arrays.items():
            offset = -(-offset // _ALIGN) * _ALIGN
            placed[part] = [offset, array.dtype.str, len(array)]
            parts.append((offset, np.ascontiguousarray(array)))
            offset += array.nbytes
        directory["fields"][name] = {"kind": kind, "arrays": placed}
    text = json.dumps(directory, separators=(",", ":")).encode()
    base = _arrays_start(len(text))
    body = [text]
    position = HEADER_SIZE + len(text)
    for where, array in parts:
        body += [b"\0" * (base + where - position), memoryview(array.reshape(-1).view(np.uint8))]
        position = base + where + array.nbytes
    crc = 0
    for piece in body:
        crc = zlib.crc32(piece, crc)
    with atomic_write(target) as f:
        head = _HEAD.pack(MAGIC, VERSION, header.data_crc, header.count, len(text), crc)
        f.write(head + struct.pack("<I", zlib.crc32(head)))
        f.write(b"\0" * (HEADER_SIZE - _HEAD.size - 4))
        for piece in body:
            f.write(piece)
    return True


# ----------------------------------------------------------------------------------------- reading


def _array_type(name: str) -> np.dtype:
    """The numpy type a directory names; ValueError for one a field index never holds."""
    if name not in _DTYPES:
        raise ValueError(f"array type {name!r}")
    return np.dtype(name)


def _arrays_start(directory_size: int) -> int:
    """Where the arrays start in a file whose directory has `directory_size` bytes."""
    return -(-(HEADER_SIZE + directory_size) // _ALIGN) * _ALIGN


class TermsIndex:
    """The postings of one string (or list-of-strings) field of a segment (module docstring)."""

    kind = TERMS

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.value_offsets, self.value_blob = arrays["value_offsets"], arrays["value_blob"]
        self.starts, self._rows, self.nulls = arrays["starts"], arrays["rows"], arrays["nulls"]
        self._positions: dict[str, int] | None = None

    def _lookup(self) -> dict[str, int]:
        """value -> position, made on first use (a filter's values are then found in O(1) each)."""
        if self._positions is None:
            blob = self.value_blob.tobytes()
            bounds = self.value_offsets.tolist()
            self._positions = {blob[a:b].decode("utf-8"): v for v, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))}
        return self._positions

    def positions(self, values: Sequence[str]) -> np.ndarray:
        """int64: the positions of those of `values` that some row holds."""
        lookup = self._lookup()
        return np.array([p for value in values if (p := lookup.get(value)) is not None], np.int64)

    def posting(self, position: int) -> np.ndarray:
        """uint32 ascending: the rows holding the value at `position`."""
        return self._rows[int(self.starts[position]):int(self.starts[position + 1])]

    def postings(self, positions: np.ndarray) -> np.ndarray:
        """uint32: the rows holding the values at `positions`, one posting after another (a row
        holding several of them appears once for each)."""
        starts = np.asarray(self.starts, np.int64)
        return gather_ranges(self._rows, starts[positions], starts[positions + 1])


class NumbersIndex:
    """The sorted values of one numeric field of a segment, with their rows (module docstring)."""

    kind = NUMBERS

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.values, self.order, self.nulls = arrays["values"], arrays["order"], arrays["nulls"]
        self.by_row = arrays["by_row"]

    def span(self, op: str, value: float) -> tuple[int, int]:
        """(first, stop): the positions in `values` of the rows passing `op` ("$eq", "$gt", "$gte",
        "$lt", "$lte") against `value`."""
        values = self.values
        if op == "$eq":
            return int(np.searchsorted(values, value, "left")), int(np.searchsorted(values, value, "right"))
        if op in ("$gt", "$gte"):
            return int(np.searchsorted(values, value, "right" if op == "$gt" else "left")), len(values)
        return 0, int(np.searchsorted(values, value, "left" if op == "$lt" else "right"))

    def rows(self, first: int, stop: int) -> np.ndarray:
        """uint32: the rows at positions [first, stop) of `values` (ascending when they hold one value)."""
        return self.order[first:stop]


def gather_ranges(array: np.ndarray, firsts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """array[firsts[0]:stops[0]], array[firsts[1]:stops[1]], ... joined (one gather, no Python loop)."""
    lengths = stops - firsts
    # each output position's source: its range's first, plus its place within the range
    steps = np.repeat(firsts - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
    return np.asarray(array)[steps + np.arange(int(lengths.sum()))]


class FieldIndex:
    """The field indexes of one segment: `get(name)` is a `TermsIndex`, a `NumbersIndex` or None
    (that field is not indexed: filters scan its column)."""

    def __init__(self, fields: dict[str, TermsIndex | NumbersIndex]):
        self.fields = fields

    def get(self, name: str) -> TermsIndex | NumbersIndex | None:
        return self.fields.get(name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.fields)


def read_field_index(target: str | os.PathLike, header: Header, mmap: bool = True,
                     verify: bool = True) -> FieldIndex | None:
    """The field index in the file `target` of the segment whose header is `header`, its arrays
    mapped with `mmap`; None for a stale one (made for another version of the segment).

    Args:
        target: the field index file.
        header: its segment file's header (`fastret.storage.index_file.read_header`).
        mmap: map the arrays instead of reading them.
        verify: check the contents' checksum first (reads the file once); without it, the header,
            the directory and the arrays' bounds and types are checked and the values trusted.

    Raises:
        IndexFileError: a file that is not a field index, is truncated or corrupted, or of another
            version; the message names the file and how to make it again.
    """
    path = Path(target)
    remake = "remove it (filters then scan the fields), or run `fastret index --field-indexes` to make it again"
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(HEADER_SIZE)
        if len(head) < HEADER_SIZE or not head.startswith(MAGIC):
            raise IndexFileError(f"{path} is not a fastret field index file; {remake}")
        magic, version, segment_crc, segment_count, directory_size, contents_crc = _HEAD.unpack_from(head)
        (header_crc,) = struct.unpack_from("<I", head, _HEAD.size)
        if zlib.crc32(head[: _HEAD.size]) != header_crc or any(head[_HEAD.size + 4:]):
            raise IndexFileError(f"{path}: the header is corrupted (checksum mismatch); {remake}")
        if version != VERSION:
            raise IndexFileError(f"{path}: field index version {version}; this fastret reads version {VERSION}; {remake}")
        if segment_crc != header.data_crc or segment_count != header.count:
            return None
        if verify:  # every byte after the header, before any of it is believed
            crc = 0
            while chunk := f.read(_CRC_CHUNK):
                crc = zlib.crc32(chunk, crc)
            if crc != contents_crc:
                raise IndexFileError(f"{path}: the field index is corrupted (checksum mismatch); {remake}")
            f.seek(HEADER_SIZE)
        text = f.read(directory_size)
    try:
        directory = json.loads(text)
        layout = {name: (entry["kind"], {part: (int(where), _array_type(dtype), int(length))
                                         for part, (where, dtype, length) in entry["arrays"].items()})
                  for name, entry in directory["fields"].items()}
    except (ValueError, TypeError, KeyError, AttributeError):
        raise IndexFileError(f"{path}: the directory is unreadable (corrupted); {remake}") from None
    source = np.memmap(path, np.uint8, mode="r") if mmap and size else np.fromfile(path, np.uint8)
    base = _arrays_start(directory_size)
    fields: dict[str, TermsIndex | NumbersIndex] = {}
    for name, (kind, parts) in layout.items():
        arrays = {}
        for part, (where, dtype, length) in parts.items():
            where += base
            stop = where + length * dtype.itemsize
            if where % _ALIGN or stop > size or length < 0:
                raise IndexFileError(f"{path}: array {name}/{part} lies outside the file (truncated or corrupted); "
                                     f"{remake}")
            arrays[part] = source[where:stop].view(dtype)
        try:
            fields[name] = {TERMS: TermsIndex, NUMBERS: NumbersIndex}[kind](arrays)
        except KeyError:
            raise IndexFileError(f"{path}: field {name!r} has an unknown kind or misses an array; {remake}") from None
    return FieldIndex(fields)
