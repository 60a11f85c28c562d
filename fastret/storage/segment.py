"""`Segment`: one immutable block of an index's vectors, and the tombstones of its deleted rows.

A segment is a memory-mapped index file, a store shard, or arrays in memory. Its vectors never
change; deleting rows makes a new `Segment` that shares the arrays and carries a new bitmap, so a
search that took the old one finishes on a consistent state.

    codes    int8    [n, dim]
    scales   float32 [n]
    ids      int64   [n]       external ids (need not be unique or sorted)
    float16  float16 [n, dim]  optional, for rescoring
    doc_ids  n document-id strings, optional (fastret.storage.doc_ids)
    deleted  uint64  [ceil(n / 64)] bitmap, bit r of word r // 64 set when row r is deleted; or None
    fields   stored fields of the n rows (fastret.storage.fields.StoredFields), optional
    field_index  their postings and sorted values (fastret.storage.field_index.FieldIndex), mapped
             from the file beside an index file, or None (filters then scan the columns)
    bits     uint64  [ceil(n / 8), words(dim), 8] sign bits for the binary first stage, in the
             kernels' blocked layout (fastret.storage.sign_bits):
             mapped from the file beside an index file (fastret.storage.bits_file), kept by the in-memory
             segment as rows are added, or None (then made from the codes when first needed,
             except for a segment file, whose bits `fastret index --binary` writes)

A search may narrow a segment further by a filter's allowed rows: `core_view(allowed)` hands the
core deleted | not allowed as one bitmap for that call only (a bool mask), or, when few rows pass,
just those rows (int64), which the core then reads alone, so a search of them costs what they do
(fastret.search.core.narrowed picks between the two). The segment is unchanged.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from . import index_file, sign_bits
from .doc_ids import ListDocIds
from .field_index import FieldIndex
from .fields import StoredFields, concatenate


@dataclasses.dataclass(frozen=True, eq=False)
class Segment:
    codes: np.ndarray
    scales: np.ndarray
    ids: np.ndarray
    float16: np.ndarray | None = None
    doc_ids: Any = None  # PackedDocIds | LazyDocIds | None
    path: Path | None = None  # the index file this segment maps, if any
    deleted: np.ndarray | None = None
    deleted_count: int = 0
    # Caches shared by every version of this segment (the arrays never change).
    cache: dict = dataclasses.field(default_factory=dict)
    fields: StoredFields | None = None
    bits: np.ndarray | None = None
    mapped_file: tuple[int, int] | None = None  # (st_dev, st_ino) of `path` when its codes were mapped
    deleted_file: Path | None = None  # the deletion file `deleted` was read from, while no row was deleted since
    field_index: FieldIndex | None = None

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def live_count(self) -> int:
        return len(self.codes) - self.deleted_count

    def core_view(self, allowed: np.ndarray | None = None) -> tuple:
        """(codes, scales, ids, skipped-rows bitmap or None[, picked rows]): what
        `fastret._core.topk_int8` takes.

        Args:
            allowed: optional, a filter's rows for one search: a bool [n] mask (the bitmap then
                skips the deleted rows and those not allowed), or int64 rows, strictly ascending
                (the core reads only those; deleted ones among them are still skipped).
        """
        if allowed is None:
            return (self.codes, self.scales, self.ids, self.deleted)
        if allowed.dtype != np.bool_:
            return (self.codes, self.scales, self.ids, self.deleted, allowed)
        skipped = ~allowed if self.deleted is None else self.deleted_mask() | ~allowed
        return (self.codes, self.scales, self.ids, bitmap(skipped))

    def passing_count(self, allowed: np.ndarray | None) -> int:
        """Live rows among `allowed` (bool [n]; None: every row)."""
        if allowed is None:
            return self.live_count
        return int(np.count_nonzero(allowed & ~self.deleted_mask()))

    def sign_bits(self) -> np.ndarray:
        """uint64 [ceil(n / 8), words(dim), 8]: the rows' sign bits for the binary first stage, blocked
        (fastret.storage.sign_bits).

        Raises:
            ValueError: a segment file without its bits file (written before bits were kept, or
                by a write killed in between): reading all its codes to make them would defeat a
                binary search, so the message names `fastret index --binary`, which writes them.
        """
        if self.bits is not None:
            return self.bits
        if self.path is not None:
            raise ValueError(f"{self.path} has no sign bits for first_stage='binary' (no {self.path.name}.bits "
                             "beside it that matches it: written before fastret kept them, or a save stopped "
                             "between the file and its bits); "
                             "run `fastret index --binary` on its store directory or index file once, or "
                             "search with first_stage='int8'")
        if "sign_bits" not in self.cache:  # arrays in memory: made once, shared by every version
            self.cache["sign_bits"] = sign_bits.sign_bits(self.codes)
        return self.cache["sign_bits"]

    def codes_file(self) -> tuple[int, int] | None:
        """(open file descriptor, byte offset of the codes) of a mapped segment file, for reading a
        few rows with pread (the binary first stage's candidates): unlike a read through the
        mapping, which makes the row's whole page cache folio resident in this process (megabytes
        on current kernels), this copies the row alone. None for codes in memory, and when the file
        at `path` is no longer the one mapped (replaced by a later save: the mapping is then read).

        The file is opened once and stays open while this segment (or a version of it) lives; the
        OS is told not to read ahead (posix_fadvise RANDOM, where there is one).
        """
        if self.path is None or not isinstance(self.codes, np.memmap):
            return None
        if "codes_file" not in self.cache:
            self.cache["codes_file"] = self._open_codes_file()
        found = self.cache["codes_file"]
        return None if found is None else (found[0].fileno(), found[1])

    def _open_codes_file(self):
        """(open file, codes offset), or None when `path` is not the file that was mapped."""
        try:
            opened = open(self.path, "rb", buffering=0)  # noqa: SIM115 (kept open in the cache)
        except OSError:
            return None
        status = os.fstat(opened.fileno())
        if self.mapped_file is not None and (status.st_dev, status.st_ino) != self.mapped_file:
            opened.close()
            return None
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(opened.fileno(), 0, 0, os.POSIX_FADV_RANDOM)
        return opened, index_file.section_offset(index_file.read_header(self.path), "codes")

    def max_scale(self) -> float:
        """The largest scale (computed once; a search reads every scale anyway)."""
        if "max_scale" not in self.cache:
            self.cache["max_scale"] = float(np.max(self.scales, initial=0.0))
        return self.cache["max_scale"]

    def deleted_mask(self) -> np.ndarray:
        """bool [n]: True for deleted rows."""
        if self.deleted is None:
            return np.zeros(len(self), bool)
        bits = np.unpackbits(self.deleted.view(np.uint8), bitorder="little")
        return bits[: len(self)].astype(bool)

    def is_deleted(self, rows: np.ndarray) -> np.ndarray:
        """bool, same shape as `rows`: True for deleted rows."""
        if self.deleted is None:
            return np.zeros(np.shape(rows), bool)
        rows = np.asarray(rows, np.int64)
        return ((self.deleted[rows >> 6] >> (rows & 63).astype(np.uint64)) & np.uint64(1)).astype(bool)

    def live_rows(self) -> np.ndarray:
        """int64 rows that are not deleted, ascending."""
        return np.flatnonzero(~self.deleted_mask()).astype(np.int64)

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """int64 rows (ascending) whose id is in `ids`, deleted or not."""
        if len(self) == 0 or len(ids) == 0:
            return np.empty(0, np.int64)
        order = self._id_order()
        sorted_ids = self.ids[order] if order is not None else self.ids
        wanted = np.unique(ids)
        starts = np.searchsorted(sorted_ids, wanted, side="left")
        stops = np.searchsorted(sorted_ids, wanted, side="right")
        counts = stops - starts
        firsts = np.repeat(starts - (np.cumsum(counts) - counts), counts)
        positions = firsts + np.arange(counts.sum())
        rows = positions if order is None else order[positions]
        return np.sort(rows.astype(np.int64))

    def live_rows_of(self, ids: np.ndarray) -> np.ndarray:
        """int64 rows (ascending) whose id is in `ids` and that are not deleted."""
        rows = self.rows_of(ids)
        return rows[~self.is_deleted(rows)]

    def _id_order(self) -> np.ndarray | None:
        """None when ids are already ascending, else the permutation that sorts them (cached)."""
        if "id_order" not in self.cache:
            ascending = bool(np.all(self.ids[1:] >= self.ids[:-1]))
            self.cache["id_order"] = None if ascending else np.argsort(self.ids, kind="stable")
        return self.cache["id_order"]

    def with_deleted(self, rows: np.ndarray) -> "Segment":
        """A segment with `rows` (int64) deleted too; itself if they all were already."""
        fresh = rows[~self.is_deleted(rows)]
        if len(fresh) == 0:
            return self
        mask = self.deleted_mask()
        mask[fresh] = True
        return dataclasses.replace(self, deleted=bitmap(mask), deleted_count=int(mask.sum()), deleted_file=None)

    def documents(self, rows: np.ndarray) -> list[str]:
        """Document ids of `rows`; ValueError if this segment has none."""
        if self.doc_ids is None:
            raise ValueError("these vectors have no document ids (they were added with Index.add); "
                             "only indexes loaded from a store or a file with document ids have them")
        return self.doc_ids.lookup(rows)


def bitmap(mask: np.ndarray) -> np.ndarray:
    """bool [n] -> uint64 [ceil(n / 64)] with bit r of word r // 64 = mask[r]."""
    padded = np.zeros(-(-len(mask) // 64) * 64, np.uint8)
    padded[: len(mask)] = mask
    return np.packbits(padded, bitorder="little").view(np.uint64)


class SegmentBuilder:
    """The growable, in-memory segment that `Index.add` appends to.

    Appends write past the rows a `snapshot` shows, and a larger capacity gets new arrays, so
    snapshots taken earlier stay valid while later appends go on (under the index's lock).
    """

    _GROWTH = 1.5

    def __init__(self, dim: int, store_float16: bool):
        self.dim = dim
        self.count = 0
        self.codes = np.empty((0, dim), np.int8)
        self.scales = np.empty(0, np.float32)
        self.ids = np.empty(0, np.int64)
        self.float16 = np.empty((0, dim), np.float16) if store_float16 else None
        self.bits = np.zeros((0, sign_bits.words(dim), sign_bits.BLOCK_ROWS), np.uint64)  # blocked
        self.deleted: np.ndarray | None = None  # uint64 bitmap of `capacity` bits, from the first delete
        self.deleted_count = 0
        self.max_scale = 0.0
        self.doc_ids: list[str] | None = []  # None once vectors without document ids were added
        self.fields: StoredFields | None = None  # of every row so far, once an append had fields
        # The snapshot of the rows so far, until the next append or delete: searches in between see
        # one Segment, so what is cached on it (device copies, id order) is reused.
        self._snapshot: Segment | None = None

    def append(self, codes: np.ndarray, scales: np.ndarray, ids: np.ndarray, floats: np.ndarray | None,
               doc_ids: list[str] | None = None, fields: StoredFields | None = None) -> None:
        start, n = self.count, len(codes)
        joined = self.fields
        if fields is not None or joined is not None:  # joined first: a type clash changes nothing
            joined = concatenate([self.fields, fields], [start, n])
        self._snapshot = None
        self.fields = joined
        if doc_ids is None:
            self.doc_ids = None
        elif self.doc_ids is not None:
            self.doc_ids.extend(doc_ids)
        self._reserve(start + n)
        self.codes[start : start + n] = codes
        self.scales[start : start + n] = scales
        self.ids[start : start + n] = ids
        rows = np.arange(start, start + n)
        self.bits[rows // sign_bits.BLOCK_ROWS, :, rows % sign_bits.BLOCK_ROWS] = sign_bits.sign_bit_rows(codes)
        if self.float16 is not None:
            self.float16[start : start + n] = floats
        self.max_scale = max(self.max_scale, float(scales.max(initial=0.0)))
        self.count = start + n

    def _reserve(self, needed: int) -> None:
        capacity = len(self.codes)
        if needed <= capacity:
            return
        new_capacity = needed if self.count == 0 else max(needed, int(capacity * self._GROWTH))

        def grown(array):
            fresh = np.empty((new_capacity, *array.shape[1:]), array.dtype)
            fresh[: self.count] = array[: self.count]
            return fresh

        self.codes, self.scales, self.ids = grown(self.codes), grown(self.scales), grown(self.ids)
        bits = np.zeros((-(-new_capacity // sign_bits.BLOCK_ROWS), *self.bits.shape[1:]), np.uint64)
        bits[: len(self.bits)] = self.bits
        self.bits = bits
        if self.float16 is not None:
            self.float16 = grown(self.float16)
        if self.deleted is not None:
            self.deleted = _grown_bitmap(self.deleted, new_capacity)

    def snapshot(self) -> Segment:
        """The rows appended so far as a `Segment` (views, no copy); the same one until they change."""
        if self._snapshot is None:
            n = self.count
            deleted = self.deleted[: -(-n // 64)] if self.deleted_count else None
            self._snapshot = Segment(self.codes[:n], self.scales[:n], self.ids[:n],
                                     None if self.float16 is None else self.float16[:n],
                                     None if self.doc_ids is None else ListDocIds(self.doc_ids, n), None,
                                     deleted, self.deleted_count, {"max_scale": self.max_scale},
                                     self.fields, self.bits[: -(-n // sign_bits.BLOCK_ROWS)])
        return self._snapshot

    def delete_rows(self, rows: np.ndarray) -> None:
        """Mark `rows` deleted (copy on write: snapshots keep the bitmap they were taken with)."""
        fresh = rows[~self.snapshot().is_deleted(rows)]
        if len(fresh) == 0:
            return
        words = _grown_bitmap(self.deleted, len(self.codes))
        np.bitwise_or.at(words, fresh >> 6, np.left_shift(np.uint64(1), (fresh & 63).astype(np.uint64)))
        self.deleted = words
        self.deleted_count += len(fresh)
        self._snapshot = None


def _grown_bitmap(words: np.ndarray | None, capacity: int) -> np.ndarray:
    """A fresh bitmap of `capacity` bits holding `words` (copy on write)."""
    grown = np.zeros(-(-capacity // 64), np.uint64)
    if words is not None:
        grown[: len(words)] = words
    return grown
