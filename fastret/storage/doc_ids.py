"""Document ids (strings such as PMIDs or BEIR ids) for the rows of a segment, kept compact.

A PubMed-size index has tens of millions of ids: as Python strings they would cost gigabytes and
seconds to load. `PackedDocIds` keeps them as one UTF-8 byte blob plus uint64 offsets (both may be
memory-mapped from an index file) and decodes only the rows asked for.

    offsets  uint64 [n + 1]   offsets[0] == 0, non-decreasing; row r is blob[offsets[r]:offsets[r + 1]]
    blob     uint8  [offsets[n]]
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np


class DocIdsError(ValueError):
    """Stored document ids that do not decode (a corrupted file read without verification)."""


def pack_doc_ids(doc_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(offsets uint64 [n + 1], blob uint8) for a sequence of str.

    Raises:
        TypeError: an id that is not a str.
    """
    encoded = []
    for position, doc_id in enumerate(doc_ids):
        if not isinstance(doc_id, str):
            raise TypeError(f"document ids must be str, got {type(doc_id).__name__} at position {position}")
        encoded.append(doc_id.encode("utf-8"))
    offsets = np.zeros(len(encoded) + 1, np.uint64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    blob = np.frombuffer(b"".join(encoded), np.uint8)
    return offsets, blob


class PackedDocIds:
    """Document ids of rows 0..n-1, decoded on demand from (offsets, blob)."""

    def __init__(self, offsets: np.ndarray, blob: np.ndarray, source: str = "document ids"):
        self.offsets = offsets
        self.blob = blob
        self.source = source

    @classmethod
    def from_list(cls, doc_ids: Sequence[str]) -> "PackedDocIds":
        return cls(*pack_doc_ids(doc_ids))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lookup(self, rows: np.ndarray) -> list[str]:
        """The ids of `rows` (int64, any order).

        Raises:
            DocIdsError: offsets out of order or past the blob, or bytes that are not UTF-8.
        """
        starts = self.offsets[rows].astype(np.int64)
        stops = self.offsets[rows + 1].astype(np.int64)
        if (stops < starts).any() or (stops > len(self.blob)).any():
            raise DocIdsError(f"{self.source}: document id offsets are corrupted; rebuild or restore the index")
        try:
            return [bytes(self.blob[a:b]).decode("utf-8") for a, b in zip(starts.tolist(), stops.tolist())]
        except UnicodeDecodeError:
            raise DocIdsError(f"{self.source}: document ids are not UTF-8; rebuild or restore the index") from None

    def subset(self, rows: np.ndarray) -> "PackedDocIds":
        """The ids of `rows`, in that order, packed anew (for compaction)."""
        return PackedDocIds.from_list(self.lookup(rows))


class ListDocIds:
    """The first `count` ids of a Python list that may grow meanwhile (vectors added in memory)."""

    def __init__(self, names: list[str], count: int):
        self._names = names
        self._count = count

    def __len__(self) -> int:
        return self._count

    def lookup(self, rows: np.ndarray) -> list[str]:
        return [self._names[r] for r in rows.tolist()]

    def subset(self, rows: np.ndarray) -> PackedDocIds:
        return PackedDocIds.from_list(self.lookup(rows))


class LazyDocIds:
    """Document ids read from elsewhere on first use (the per-shard JSON lists of version-1 stores)."""

    def __init__(self, count: int, load: Callable[[], Sequence[str]], source: str):
        self._count = count
        self._load = load
        self._ids: Sequence[str] | None = None
        self.source = source

    def __len__(self) -> int:
        return self._count

    def lookup(self, rows: np.ndarray) -> list[str]:
        if self._ids is None:
            ids = self._load()
            if len(ids) != self._count:
                raise DocIdsError(f"{self.source}: {len(ids)} document ids for {self._count} vectors")
            self._ids = ids
        return [self._ids[r] for r in rows.tolist()]

    def subset(self, rows: np.ndarray) -> PackedDocIds:
        return PackedDocIds.from_list(self.lookup(rows))
