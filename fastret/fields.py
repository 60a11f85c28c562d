"""Stored fields: each document's title, text and metadata, beside its segment, in Apache Arrow.

A segment's fields are one Arrow table with a row per vector (row r describes the segment's row
r): strings, numbers, booleans and lists of them (MeSH descriptors, publication types). A row
without a value holds null. On disk they sit beside the segment file as `<file>.fields.arrow`, an
Arrow IPC file written atomically (fastret.atomic) whose schema metadata names the segment's data
checksum and row count, so it cannot be applied to another segment (or another version of it) by
mistake, like the deletion file (fastret.index_file). Opening one maps it (`pyarrow.memory_map`):
only the IPC footer and batch headers are read, so a 36M-row store opens in milliseconds and
pages come in as rows are read.

`StoredFields` is what a `Segment` holds: the table, or no columns at all for rows added without
fields. pyarrow is the `fields` extra (`pip install fastret[fields]`).

Statistics: each numeric (not list) column's min, max, nulls and NaNs (`ColumnStats`), which let a
filter decide "no row passes" or "every row passes" without reading the rows (fastret.filters).
They are computed once when the file is written and kept in its schema metadata: opening a
36M-row store then reads no column at all, where computing them at open time would read every
numeric column once per open. Fields made in memory (`add`, `merge`) compute them on first use.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .atomic import atomic_write, remove_stale_temporaries
from .index_file import IndexFileError, read_header

try:
    import pyarrow as pa
    import pyarrow.compute  # noqa: F401  (pa.compute, used by fastret.filters)
    import pyarrow.ipc  # noqa: F401
except ImportError:  # the `fields` extra is not installed: an index without fields still works
    pa = None

FIELDS_SUFFIX = ".fields.arrow"
ID_FIELD = "id"  # the vectors' own ids: a filter may name it, a stored field may not
_SEGMENT_CRC = b"fastret.segment_crc"
_SEGMENT_COUNT = b"fastret.segment_count"
_STATS = b"fastret.stats"


@dataclasses.dataclass(frozen=True)
class ColumnStats:
    """Statistics of a numeric column: `low` and `high` the smallest and largest value (None when
    no row holds a number), `nulls` the rows without a value, `nans` the rows holding NaN (which
    pass no comparison)."""

    low: float | int | None
    high: float | int | None
    nulls: int
    nans: int


def require_arrow():
    """The pyarrow module; ImportError saying how to install it when it is missing."""
    if pa is None:
        raise ImportError("stored fields and filters need pyarrow: pip install 'fastret[fields]' (or pyarrow>=14)")
    return pa


class StoredFields:
    """The stored fields of a segment's `count` rows: an Arrow table, or none (every value null).

    Args:
        table: a `pyarrow.Table` of `count` rows, or None for rows without fields.
        count: rows described.
    """

    def __init__(self, table: Any, count: int, stats: dict[str, ColumnStats | None] | None = None):
        if table is not None and table.num_rows != count:
            raise ValueError(f"stored fields hold {table.num_rows} rows for a segment of {count}")
        self.table = table if table is not None and table.num_columns else None
        self.count = int(count)
        self._stats: dict[str, ColumnStats | None] = dict(stats or {})

    @classmethod
    def from_records(cls, records: Sequence[dict], what: str = "fields") -> "StoredFields":
        """Fields from one dict per row (`Index.add(..., fields=...)`).

        Raises:
            TypeError: a row that is not a dict with str keys.
            ValueError: a field named "id" (reserved for the vectors' ids), or a field whose values
                do not share one type (a number in one row, a string in another), naming it.
        """
        arrow = require_arrow()
        names: dict[str, None] = {}
        for position, record in enumerate(records):
            if not isinstance(record, dict) or not all(isinstance(name, str) for name in record):
                raise TypeError(f"{what}[{position}] must be a dict with str keys, got {record!r:.80}")
            names.update(dict.fromkeys(record))
        if ID_FIELD in names:
            raise ValueError(f"{what}: the field name {ID_FIELD!r} is reserved for the vectors' ids "
                             "(filter on them with {\"id\": {\"$in\": [...]}}); rename the field")
        columns = {}
        for name in names:
            try:
                columns[name] = arrow.array([record.get(name) for record in records])
            except (arrow.ArrowInvalid, arrow.ArrowTypeError) as error:
                raise ValueError(f"{what}: the values of field {name!r} do not share one type "
                                 f"({error}); give every row the same type (or null)") from None
        return cls(arrow.table(columns) if columns else None, len(records))

    def __len__(self) -> int:
        return self.count

    @property
    def names(self) -> tuple[str, ...]:
        """The field names, in table order."""
        return () if self.table is None else tuple(self.table.column_names)

    def column(self, name: str):
        """The `pyarrow.ChunkedArray` of field `name`, or None when these rows lack it."""
        if self.table is None or name not in self.table.column_names:
            return None
        return self.table.column(name)

    def column_type(self, name: str):
        """The Arrow type of field `name` (from the schema: no row is read), or None when these rows lack it."""
        if self.table is None or name not in self.table.column_names:
            return None
        return self.table.schema.field(name).type

    def stats(self, name: str) -> ColumnStats | None:
        """`ColumnStats` of field `name`, or None when it is missing or not a numeric column (a list,
        a string). Kept from the fields file when it was read from one, else computed once."""
        if name not in self._stats:
            self._stats[name] = _column_stats(self.column(name))
        return self._stats[name]

    def rows(self, rows: np.ndarray, names: Sequence[str] | None = None) -> list[dict]:
        """One dict per row of `rows` (int64): every field, or those in `names`, nulls left out."""
        if self.table is None:
            return [{} for _ in range(len(rows))]
        wanted = [n for n in (self.table.column_names if names is None else names) if n in self.table.column_names]
        table = self.table.select(wanted)
        # one zero-copy slice per row: `take` on a mapped table of many batches would join them first
        found = (table.slice(row, 1).to_pylist()[0] for row in np.asarray(rows, np.int64).tolist())
        return [{k: v for k, v in row.items() if v is not None} for row in found]

    def take(self, rows: np.ndarray) -> "StoredFields":
        """The fields of `rows` (int64), in that order (for compaction)."""
        if self.table is None:
            return StoredFields(None, len(rows))
        return StoredFields(self.table.take(require_arrow().array(np.asarray(rows, np.int64))), len(rows))


def _column_stats(column: Any) -> ColumnStats | None:
    """`ColumnStats` of an Arrow column, None unless it holds integers or floats."""
    if column is None or not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
        return None
    nans = 0
    if pa.types.is_floating(column.type):
        nans = int(pa.compute.sum(pa.compute.is_nan(column)).as_py() or 0)
    extremes = pa.compute.min_max(column)  # skips nulls, and NaNs unless every value is one
    low, high = extremes["min"].as_py(), extremes["max"].as_py()
    if nans + column.null_count == len(column):
        low = high = None
    return ColumnStats(low, high, column.null_count, nans)


def concatenate(parts: Sequence[StoredFields | None], counts: Sequence[int]) -> StoredFields | None:
    """The fields of several segments' rows one after another (`counts` rows each, None: no
    fields); None when no part has any. Columns missing from a part are null there; int and float
    columns of one name become float.

    Raises:
        ValueError: one field name with incompatible types in two parts, naming it.
    """
    if all(part is None or part.table is None for part in parts):
        return None if all(part is None for part in parts) else StoredFields(None, sum(counts))
    arrow = require_arrow()
    tables = [part.table if part is not None and part.table is not None
              else arrow.table({"__null__": arrow.nulls(count)}) for part, count in zip(parts, counts)]
    try:
        joined = arrow.concat_tables(tables, promote_options="permissive")
    except (arrow.ArrowInvalid, arrow.ArrowTypeError) as error:
        raise ValueError(f"stored fields of different types under one name cannot be joined ({error}); "
                         "give each field one type everywhere") from None
    if "__null__" in joined.column_names:
        joined = joined.drop_columns(["__null__"])
    return StoredFields(joined, sum(counts))


def fields_path(segment_path: str | os.PathLike) -> Path:
    """Where the stored fields of the segment file `segment_path` are kept."""
    segment_path = Path(segment_path)
    return segment_path.with_name(segment_path.name + FIELDS_SUFFIX)


def write_fields(segment_path: str | os.PathLike, fields: StoredFields | None) -> None:
    """Write `fields` beside the segment file `segment_path`, atomically, bound to its checksum
    and size; None (or no columns) removes the fields file."""
    segment_path = Path(segment_path)
    target = fields_path(segment_path)
    if fields is None or fields.table is None:
        remove_stale_temporaries(target)
        target.unlink(missing_ok=True)
        return
    header = read_header(segment_path)
    if header.count != fields.count:
        raise ValueError(f"{fields.count} rows of fields for {segment_path}'s {header.count} vectors")
    arrow = require_arrow()
    stats = {name: dataclasses.asdict(found) for name in fields.names if (found := fields.stats(name)) is not None}
    table = fields.table.replace_schema_metadata({_SEGMENT_CRC: str(header.data_crc).encode(),
                                                  _SEGMENT_COUNT: str(header.count).encode(),
                                                  _STATS: json.dumps(stats).encode()})
    with atomic_write(target) as f:
        with arrow.ipc.new_file(arrow.PythonFile(f, mode="w"), table.schema) as writer:
            writer.write_table(table, max_chunksize=1 << 16)


def read_fields(segment_path: str | os.PathLike, mmap: bool = True) -> StoredFields | None:
    """The stored fields of a segment file (mapped with `mmap`), or None when it has none.

    Raises:
        IndexFileError: a fields file that is not Arrow IPC, or belongs to another segment (or
            another version of it), naming the file.
    """
    segment_path = Path(segment_path)
    path = fields_path(segment_path)
    if not path.exists():
        return None
    arrow = require_arrow()
    header = read_header(segment_path)
    try:
        source = arrow.memory_map(str(path)) if mmap else arrow.BufferReader(path.read_bytes())
        table = arrow.ipc.open_file(source).read_all()
    except (arrow.ArrowInvalid, OSError) as error:
        raise IndexFileError(f"{path} is not a fastret fields file (Arrow IPC): {error}") from None
    metadata = table.schema.metadata or {}
    if (metadata.get(_SEGMENT_CRC) != str(header.data_crc).encode()
            or metadata.get(_SEGMENT_COUNT) != str(header.count).encode() or table.num_rows != header.count):
        raise IndexFileError(f"{path} belongs to another version of {segment_path.name} (its checksum or size "
                             "differs); remove the fields file or restore the segment")
    stats = {}
    if _STATS in metadata:  # files written before statistics were kept compute them on first use
        try:
            stats = {name: ColumnStats(**values) for name, values in json.loads(metadata[_STATS]).items()}
        except (ValueError, TypeError, AttributeError):
            raise IndexFileError(f"{path}: its column statistics are unreadable; remove the fields file, or "
                                 "rewrite it with Index.save") from None
    return StoredFields(table.replace_schema_metadata(None), header.count, stats)
