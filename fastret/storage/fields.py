"""Stored fields: each document's title, text and metadata, beside its segment, in Apache Arrow.

A segment's fields are one Arrow table with a row per vector (row r describes the segment's row
r): strings, numbers, booleans and lists of them (MeSH descriptors, publication types). A row
without a value holds null. On disk they sit beside the segment file (fastret.storage.segment_files names
the file) as an Arrow IPC file written atomically (fastret.storage.atomic) whose schema metadata names the
segment's data checksum and row count, so it cannot be applied to another segment (or another
version of it) by mistake, like the deletion file (fastret.storage.index_file), and carries a checksum of
its own contents. Opening one maps it (`pyarrow.memory_map`): only the IPC footer and batch headers
are read, so a 36M-row store opens in milliseconds and pages come in as rows are read.

What `read_fields(..., verify=True)` checks: the checksum (CRC-32 of the schema, the binding and
statistics metadata, and every record batch as Arrow serializes it) and Arrow's full validation of
every batch, so a damaged file is an `IndexFileError` naming it, never a crash or a silently
different answer. `verify=False` checks the binding and Arrow's cheap structural validation only
and trusts the values: a file damaged inside its data buffers may then return other field values,
make a filter pass other rows, or crash pyarrow while a filter is evaluated. Use it only for files
this program wrote and nothing else touched.

`StoredFields` is what a `Segment` holds: the table, or no columns at all for rows added without
fields. pyarrow is the `fields` extra (`pip install fastret[fields]`).

Statistics: each numeric (not list) column's min, max, nulls and NaNs (`ColumnStats`), which let a
filter decide "no row passes" or "every row passes" without reading the rows (fastret.search.filters).
They are computed once when the file is written and kept in its schema metadata: opening a
36M-row store then reads no column at all, where computing them at open time would read every
numeric column once per open. Fields made in memory (`add`, `merge`) compute them on first use.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .atomic import atomic_write
from .index_file import Header, IndexFileError

try:
    import pyarrow as pa
    import pyarrow.compute  # noqa: F401  (pa.compute, used by fastret.search.filters)
    import pyarrow.ipc  # noqa: F401
except ImportError:  # the `fields` extra is not installed: an index without fields still works
    pa = None

ID_FIELD = "id"  # the vectors' own ids: a filter may name it, a stored field may not
_SEGMENT_CRC = b"fastret.segment_crc"
_SEGMENT_COUNT = b"fastret.segment_count"
_STATS = b"fastret.stats"
_CRC = b"fastret.fields_crc"
_BATCH_ROWS = 1 << 16


class StaleFieldsError(IndexFileError):
    """A fields file made for another segment, or for another version of its segment."""


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
            column_type = self.column_type(name)
            numeric = column_type is not None and (pa.types.is_integer(column_type) or pa.types.is_floating(column_type))
            self._stats[name] = _column_stats(self.column(name)) if numeric else None
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


def write_fields(target: str | os.PathLike, header: Header, fields: StoredFields) -> None:
    """Write `fields` to the fields file `target`, atomically, bound to the segment whose header
    is `header` (its checksum and size) and with a checksum of its own.

    Raises:
        ValueError: fields of another row count than the segment's, or without columns.
    """
    if fields.table is None:
        raise ValueError("fields without columns are not written (the segment then has no fields file)")
    if header.count != fields.count:
        raise ValueError(f"{fields.count} rows of fields for a segment of {header.count} vectors ({target})")
    arrow = require_arrow()
    stats = {name: dataclasses.asdict(found) for name in fields.names if (found := fields.stats(name)) is not None}
    binding = _binding(header, json.dumps(stats).encode())
    batches = fields.table.to_batches(max_chunksize=_BATCH_ROWS)
    crc = _contents_crc(fields.table.schema, binding, batches)
    schema = fields.table.schema.with_metadata({**binding, _CRC: str(crc).encode()})
    with atomic_write(target) as f:
        with arrow.ipc.new_file(arrow.PythonFile(f, mode="w"), schema) as writer:
            for batch in batches:
                writer.write_batch(batch)


def _binding(header: Header, stats: bytes) -> dict[bytes, bytes]:
    """The schema metadata that binds a fields file to its segment and keeps its statistics."""
    return {_SEGMENT_CRC: str(header.data_crc).encode(), _SEGMENT_COUNT: str(header.count).encode(), _STATS: stats}


def _contents_crc(schema: Any, binding: dict[bytes, bytes], batches) -> int:
    """CRC-32 of what a fields file holds: the schema, the binding and every batch, serialized."""
    crc = zlib.crc32(schema.remove_metadata().serialize())
    for key in (_SEGMENT_CRC, _SEGMENT_COUNT, _STATS):
        crc = zlib.crc32(binding[key], zlib.crc32(key, crc))
    for batch in batches:
        crc = zlib.crc32(batch.serialize(), crc)
    return crc


def read_fields(target: str | os.PathLike, segment_path: str | os.PathLike, header: Header, mmap: bool = True,
                verify: bool = True) -> StoredFields:
    """The stored fields in the fields file `target` of the segment file `segment_path` (mapped
    with `mmap`).

    Args:
        target: the fields file.
        segment_path: its segment file (named in errors).
        header: the segment file's header (`fastret.storage.index_file.read_header`).
        mmap: map the file instead of reading it.
        verify: check the file's checksum and validate every batch fully (reads it once); see the
            module docstring for what is trusted without it.

    Raises:
        IndexFileError: a fields file that is not Arrow IPC, is damaged, or belongs to another
            segment (or another version of it), naming the file.
    """
    path = Path(target)
    arrow = require_arrow()
    damaged = "remove it (the segment then has no stored fields) or restore it from a backup"
    try:
        source = arrow.memory_map(str(path)) if mmap else arrow.BufferReader(path.read_bytes())
        reader = arrow.ipc.open_file(source)
        batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
        schema = reader.schema
        for batch in batches:
            if verify:
                batch.validate(full=True)
            else:
                batch.validate()
        table = arrow.Table.from_batches(batches, schema=schema)
    except (arrow.ArrowException, OSError, ValueError) as error:
        raise IndexFileError(f"{path} is not a readable fastret fields file (Arrow IPC): {error}; {damaged}") from None
    metadata = schema.metadata or {}
    unknown = sorted(set(metadata) - {_SEGMENT_CRC, _SEGMENT_COUNT, _STATS, _CRC})
    if unknown:  # fastret writes no other keys: a damaged name (one that could hide the checksum)
        raise IndexFileError(f"{path}: unknown schema metadata {unknown[0]!r}: the file is damaged; {damaged}")
    if (metadata.get(_SEGMENT_CRC) != str(header.data_crc).encode()
            or metadata.get(_SEGMENT_COUNT) != str(header.count).encode() or table.num_rows != header.count):
        raise StaleFieldsError(f"{path} belongs to another version of {Path(segment_path).name} (its checksum or size "
                             "differs); remove the fields file or restore the segment")
    if verify and _CRC in metadata:  # files written before the checksum was kept have none
        binding = {key: metadata.get(key, b"") for key in (_SEGMENT_CRC, _SEGMENT_COUNT, _STATS)}
        if str(_contents_crc(schema, binding, batches)).encode() != metadata[_CRC]:
            raise IndexFileError(f"{path}: the stored fields are corrupted (checksum mismatch); {damaged}")
    stats = {}
    if _STATS in metadata:  # files written before statistics were kept compute them on first use
        try:
            stats = {name: ColumnStats(**values) for name, values in json.loads(metadata[_STATS]).items()}
        except (ValueError, TypeError, AttributeError):
            raise IndexFileError(f"{path}: its column statistics are unreadable; {damaged}") from None
    return StoredFields(table.replace_schema_metadata(None), header.count, stats)
