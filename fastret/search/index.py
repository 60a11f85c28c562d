"""`Index`: an exact inner-product index over int8 vectors with per-vector scales, in segments.

An index is a list of immutable segments (memory-mapped index files or store shards, or arrays in
memory) plus one growable in-memory segment that `add` appends to. The C++ core searches every
segment in one call with one bounded heap per query, so results are those of one concatenated
index, id for id and score for score. `delete` marks rows as tombstones that the core skips;
`merge` rewrites segments without them.

Memory: n x dim bytes of codes + 4 bytes of scale + 8 bytes of id per vector (+ 2 x dim bytes of
float16 per vector with `store_float16=True`). Mapped segments cost resident memory only for the
pages a search touches.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import checks
from ..quant import quantized_vectors
from ..storage import segment_files, sign_bits, store
from ..storage.doc_ids import PackedDocIds
from ..storage.fields import StoredFields, concatenate
from ..storage.index_file import IndexArrays
from ..storage.segment import Segment, SegmentBuilder
from ..storage.writer_lock import DEFAULT_TIMEOUT, ConcurrentWriteError, writer_lock
from . import row_sets, torch_backend
from .core import segment_candidates
from .filters import allowed_rows
from .rules import EMPTY_ID, SearchableBase, check_first_stage, check_rescore, query_codes, search_by_candidates

FLOAT16_MAX = float(np.finfo(np.float16).max)


class Index(SearchableBase):
    """Exact top-k inner-product search over int8-quantized vectors.

    Args:
        dim: vector dimension.
        store_float16: also keep float16 copies of added float vectors, so that `search(...,
            rescore=True)` can re-rank the int8 candidates with exact float dot products.

    Example:
        >>> index = fastret.Index(384)
        >>> index.add(doc_embeddings)                  # float32 [n, 384]
        >>> scores, ids = index.search(query_embeddings, k=10)
    """

    def __init__(self, dim: int, *, store_float16: bool = False):
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
            raise TypeError(f"dim must be an int, got {type(dim).__name__}")
        if not 1 <= dim <= 65536:
            raise ValueError(f"dim must be in [1, 65536], got {dim}")
        super().__init__(dim, store_float16)
        self._segments: tuple[Segment, ...] = ()
        self._builder = SegmentBuilder(self.dim, self.store_float16)
        self._next_id: int | None = 0
        self._lock = threading.Lock()
        # (resolved path, its version) this index was loaded from or last saved to: a save there
        # first checks that no other writer changed it since (see `save`)
        self._origin: tuple[Path, Any] | None = None
        self._device = None  # where numpy queries are searched: None, the C++ core; or a CUDA device (`to`)

    @classmethod
    def from_segments(cls, segments: Sequence[Segment], dim: int, store_float16: bool) -> "Index":
        """An index over existing segments (they are used in place, not copied).

        Raises:
            ValueError: a segment of another dimension, or without float16 copies when
                `store_float16` is set.
        """
        index = cls(dim, store_float16=store_float16)
        for position, segment in enumerate(segments):
            if segment.codes.ndim != 2 or segment.codes.shape[1] != dim:
                where = segment.path or f"segment {position}"
                raise ValueError(f"{where}: vectors of dimension {segment.codes.shape[-1]}, the index has {dim}")
            if store_float16 and segment.float16 is None:
                raise ValueError(f"{segment.path or f'segment {position}'} has no float16 copies for rescoring")
        index._segments = tuple(segments)
        index._next_id = None  # computed from the segments' ids when first needed
        return index

    def __len__(self) -> int:
        """Live (not deleted) vectors."""
        return _live(self._snapshot())

    @property
    def segment_count(self) -> int:
        """Segments searched, the in-memory one included when it holds vectors."""
        return len(self._snapshot())

    @property
    def nbytes(self) -> int:
        """Bytes of the index's arrays, mapped ones included (capacity of the in-memory one too)."""
        arrays = [a for s in self._segments for a in (s.codes, s.scales, s.ids, s.float16)]
        b = self._builder
        arrays += [b.codes, b.scales, b.ids, b.float16, b.deleted]
        arrays += [s.deleted for s in self._segments]
        return sum(a.nbytes for a in arrays if a is not None)

    @property
    def has_documents(self) -> bool:
        """True when every vector has a document id (an index loaded from a store, say)."""
        return all(s.doc_ids is not None for s in self._snapshot())

    @property
    def has_fields(self) -> bool:
        """True when some vector has stored fields (`add(..., fields=...)`, a store encoded with them)."""
        return any(s.fields is not None and s.fields.names for s in self._snapshot())

    @property
    def device(self) -> str:
        """Where searches run: "cpu" (the C++ core) or the CUDA device the index was moved to (`to`)."""
        return "cpu" if self._device is None else str(self._device)

    def to(self, device: Any) -> "Index":
        """Search on `device` from now on; returns this index.

        "cpu" (the default): the C++ core, on the mapped segments. A CUDA GPU ("cuda", "cuda:1", a
        torch.device): every segment's int8 rows are copied there now and stay resident
        (fastret.search.torch_backend), and every search runs on that GPU (the fused scan, the
        binary stage's popcount, filters as bitmaps), numpy queries included: their results come
        back as numpy arrays, the same as the core's. Rows added later are copied at their first
        search; float16 copies (rescoring) and sign bits (the binary stage) at their first use.
        Moving back to "cpu" drops the GPU copies.

        Raises:
            ValueError: a device that is neither "cpu" nor a CUDA GPU torch sees (with triton); an
                index whose rows do not fit in the GPU's free memory (the sizes named).
        """
        segments = self._snapshot()
        if str(device) == "cpu":
            if self._device is not None:
                torch_backend.drop_resident(segments, self._device)
            self._device = None
            return self
        device = torch_backend.search_device(device)
        torch_backend.make_resident(segments, device)
        if self._device is not None and self._device != device:
            torch_backend.drop_resident(segments, self._device)
        self._device = device
        return self

    def __repr__(self) -> str:
        extra = ", store_float16=True" if self.store_float16 else ""
        extra += f", device={self.device!r}" if self._device is not None else ""
        return f"fastret.Index(dim={self.dim}, count={len(self)}, segments={self.segment_count}{extra})"

    def _snapshot(self) -> tuple[Segment, ...]:
        """The segments as they are now; later adds and deletes do not change them."""
        with self._lock:
            return self._segments_locked()

    def _segments_locked(self) -> tuple[Segment, ...]:
        if self._builder.count == 0:
            return self._segments
        return self._segments + (self._builder.snapshot(),)

    @property
    def segments(self) -> tuple[Segment, ...]:
        """The segments searched now (mapped files, arrays in memory, the in-memory one last); later
        adds and deletes make new ones and leave these as they are."""
        return self._snapshot()

    # ------------------------------------------------------------------ adding and deleting

    def add(self, vectors: Any, ids: Any = None, *, documents: Sequence[str] | None = None,
            fields: Sequence[dict] | None = None) -> None:
        """Add vectors.

        Args:
            vectors: float32/float16/float64 [n, dim] (numpy or CPU torch; quantized here), or an
                already-quantized (codes int8 [n, dim] in [-127, 127], scales float32 [n]) tuple.
                One 1-D vector counts as n = 1.
            ids: optional int64 [n] external ids; by default ids continue from the largest id in
                the index + 1 (0 for an empty one). Ids are returned by `search` and break score
                ties (lower first); they need not be unique or sorted.
            documents: optional document id (str) of each vector, for `documents()`; an index
                has them only while every vector has one.
            fields: optional stored fields, one dict per vector ({"title": ..., "text": ...,
                "year": 2019, "mesh": ["Humans", ...]}): strings, numbers, booleans or lists of
                them, kept in Arrow (fastret.storage.fields), returned by `fields()` and filtered on by
                `search(..., filter=...)`. Vectors added without fields have none (null).

        Raises:
            TypeError, ValueError: wrong dtype, shape or dimension, NaN/inf, codes of -128, ids of
                the wrong length, documents that are not n str, fields that are not n dicts or whose
                values of one name differ in type, int8 input to an index that keeps
                float16 copies, or values
                beyond float16's range (+-65,504) for an index that keeps float16 copies.
        """
        codes, scales, floats = quantized_vectors(vectors, "vectors", self.dim)
        n = len(codes)
        if self.store_float16:
            if floats is None:
                raise ValueError(
                    "this index keeps float16 copies for rescoring, so it needs float vectors, "
                    "not (codes, scales); pass the float vectors or use Index(dim, store_float16=False)"
                )
            too_big = np.abs(floats).max(axis=1) > FLOAT16_MAX
            if too_big.any():
                raise ValueError(
                    f"vectors has values beyond float16's range (+-{FLOAT16_MAX:,.0f}) in {int(too_big.sum())} "
                    f"row(s), first at row {int(np.flatnonzero(too_big)[0])}; this index keeps float16 copies "
                    "for rescoring: normalize the vectors, or use Index(dim, store_float16=False)"
                )
        given_ids = None if ids is None else checks.int64_ids(ids, n)
        names = None
        if documents is not None:
            names = list(documents) if not isinstance(documents, str) else None
            if names is None or len(names) != n or not all(isinstance(name, str) for name in names):
                raise TypeError(f"documents must be a sequence of {n} str (one per vector), got {documents!r:.80}")
        stored = None
        if fields is not None:
            records = list(fields) if not isinstance(fields, (str, dict)) else None
            if records is None or len(records) != n:
                raise TypeError(f"fields must be a sequence of {n} dicts (one per vector), got {fields!r:.80}")
            stored = StoredFields.from_records(records)
        with self._lock:
            if given_ids is None:
                start = self._next_id_locked()
                given_ids = np.arange(start, start + n, dtype=np.int64)
            self._builder.append(codes, scales, given_ids,
                                 floats.astype(np.float16) if self.store_float16 else None, names, stored)
            if self._next_id is not None and n:
                self._next_id = max(self._next_id, int(given_ids.max()) + 1)

    def _next_id_locked(self) -> int:
        if self._next_id is None:
            largest = [int(s.ids.max()) for s in self._segments_locked() if len(s)]
            self._next_id = max(largest) + 1 if largest else 0
        return self._next_id

    def delete(self, ids: Any) -> int:
        """Delete every vector whose id is in `ids`; they never come back from `search`.

        Ids not in the index, or already deleted, are ignored: the return value counts the
        vectors deleted by this call. Deletions are kept by `save`, and dropped for good by `merge`.

        Args:
            ids: int64 ids, any 1-D integer array or sequence (a scalar counts as one id).

        Raises:
            TypeError: ids that are not integers.
        """
        wanted = checks.id_list(ids)
        if len(wanted) == 0:
            return 0
        with self._lock:
            before = sum(s.deleted_count for s in self._segments) + self._builder.deleted_count
            self._segments = tuple(s.with_deleted(s.rows_of(wanted)) for s in self._segments)
            if self._builder.count:
                self._builder.delete_rows(self._builder.snapshot().rows_of(wanted))
            after = sum(s.deleted_count for s in self._segments) + self._builder.deleted_count
        return after - before

    # ------------------------------------------------------------------ searching

    def search(self, queries: Any, k: int = 10, *, rescore: bool = False, rescore_factor: int = 4,
               filter: Any = None, first_stage: str = "int8", oversample: int | str = "auto"):
        """Exact top-k by int8 inner product, optionally re-ranked with float dot products.

        Args:
            queries: float [q, dim] (numpy or torch; quantized here to 7-bit codes with
                `fastret.quantize_queries`), or a (codes int8, scales) tuple (codes within
                [-63, 63] take the fastest kernels). One 1-D vector counts as q = 1. CUDA tensors
                search on that GPU (each segment copied there once, see fastret.search.torch_backend),
                and every query does after `to("cuda")`.
            k: results per query, 1 <= k <= len(index).
            rescore: re-rank the top min(len, k * rescore_factor) int8 candidates by the exact dot
                product of the float query with the stored float16 vectors (needs
                store_float16=True and float queries). Scores are then those float dot products.
            rescore_factor: candidates per result kept for rescoring (>= 1).
            filter: only rows that pass it may be returned (fastret.search.filters): a dict in the JSON
                operator form ({"year": {"$gte": 2018}, "mesh": {"$in": ["Humans"]}}), a
                `fastret.search.filters.Filter` (for `$under`, with a MeSH tree), a bool array over
                the rows of `segments` one after another, or `Filter.masks(index.segments)`
                (evaluated once beforehand, e.g. to time it apart). Results are exactly those of an index
                holding only the passing rows; when fewer than k pass, the rest is padded with
                score -inf and id -1.
            first_stage: "int8" (exact: every int8 code is read) or "binary": the rows' sign bits
                (an eighth of the codes) are scanned for the best k x oversample by the binary
                score (fastret.storage.sign_bits), and only those rows' int8 codes are read and ranked
                exactly (in the C++ core, or on the GPU for CUDA queries or an index moved there).
            oversample: binary candidates per result: "auto" (the default; it grows with the live
                rows searched, those a filter passes, by fastret.search.binary.auto_oversample, so
                that recall against exact int8 stays >= 0.99 at any size) or an int >= 1, to trade
                recall for speed (docs/search.md shows the trade). With rescoring, the binary
                stage keeps k x rescore_factor x oversample rows.

        Returns:
            (scores float32 [q, k], ids int64 [q, k]), best first; ties go to the lower id.
            numpy arrays for numpy input, torch tensors (same device) for torch input.

        Raises:
            TypeError, ValueError: bad queries, k, or rescoring arguments (see `add`), or query
                values so large that scores would overflow float32.
            fastret.search.filters.FilterError (a ValueError): a bad filter, naming the part.
        """
        oversample = check_first_stage(first_stage, oversample)
        segments = self._snapshot()
        allowed = allowed_rows(filter, segments)
        return search_by_candidates(lambda q, c, exact: self._candidates(segments, q, c, exact, allowed, oversample),
                                    _live(segments), self.store_float16, queries, k, rescore=rescore,
                                    rescore_factor=rescore_factor)

    def contains(self, ids: Any, *, filter: Any = None) -> np.ndarray:
        """bool, the shape of `ids`: True where the id belongs to a live (not deleted) vector
        (that passes `filter`, as in `search`)."""
        wanted = checks.id_array(ids)
        unique = np.unique(wanted.astype(np.int64))
        segments = self._snapshot()
        allowed = allowed_rows(filter, segments)
        live = []
        for number, segment in enumerate(segments):
            rows = segment.live_rows_of(unique)
            selection = None if allowed is None else allowed[number]
            live.append(segment.ids[rows if selection is None else rows[row_sets.member(selection, rows)]])
        return np.isin(wanted, np.concatenate(live) if live else np.empty(0, np.int64))

    def candidates(self, queries: Any, c: int, *, exact: bool = False, filter: Any = None,
                   first_stage: str = "int8", oversample: int | str = "auto"):
        """The c best vectors of each query by int8 score, optionally with their float dot products.

        What `search(..., rescore=True)` re-ranks, exposed so that a sharded index
        (fastret.search.distributed) can pick the global candidates from every shard's and re-rank
        those exactly as one index would.

        Args:
            queries: float [q, dim] (numpy or torch; CUDA tensors search on that GPU), or a
                (codes int8, scales) tuple without `exact`. One 1-D vector counts as q = 1.
            c: candidates per query, 1 <= c <= len(index).
            exact: also return the dot products of the float queries with the stored float16
                copies (needs store_float16=True and float queries).
            filter: as `search`; then min(c, passing rows) columns come back.
            first_stage, oversample: as `search` (the binary stage keeps c x oversample rows).

        Returns:
            (int8 scores float32 [q, c], ids int64 [q, c], float32 [q, c] dot products or None),
            numpy arrays, best int8 score first; ties go to the lower id.

        Raises:
            TypeError, ValueError: as `search`.
        """
        oversample = check_first_stage(first_stage, oversample)
        segments = self._snapshot()
        return self._candidates(segments, queries, c, exact, allowed_rows(filter, segments), oversample)

    def _candidates(self, segments: tuple[Segment, ...], queries: Any, c: int, exact: bool,
                    allowed: list[np.ndarray] | None, oversample: int | str | None = None):
        c = checks.check_k(c, _live(segments))
        if exact:
            check_rescore(self.store_float16, queries, 1)
        q_codes, q_scales, q_floats = query_codes(queries, self.dim, self._device)
        return segment_candidates(segments, q_codes, q_scales, c, q_floats if exact else None, allowed,
                                  oversample=oversample)

    def documents(self, ids: Any) -> np.ndarray:
        """The document ids (str) of `ids`, e.g. search results: an object array of the same shape.

        Raises:
            ValueError: an id that is not in the index (or deleted), or vectors without document
                ids (see `has_documents`).
        """
        wanted = checks.id_array(ids)
        names = np.empty(wanted.size, object)
        names[:] = self._lookup(wanted, lambda segment, rows: segment.documents(rows), skip_empty=False)
        return names.reshape(wanted.shape)

    def fields(self, ids: Any, names: Sequence[str] | None = None) -> list:
        """The stored fields of `ids` (e.g. search results): one dict per id (nulls left out),
        as nested lists of the shape of `ids`; id -1 (a padded result slot) gives None.

        Args:
            ids: int ids, any shape.
            names: the fields wanted (None: all); names no row stores are left out.

        Raises:
            ValueError: an id that is not in the index (or deleted).
            TypeError: names that are not a sequence of str.
        """
        if names is not None and (isinstance(names, str) or not all(isinstance(n, str) for n in names)):
            raise TypeError(f"names must be a sequence of field names (str), got {names!r:.80}")
        wanted = checks.id_array(ids)

        def records(segment: Segment, rows: np.ndarray) -> list[dict]:
            return [{} for _ in rows] if segment.fields is None else segment.fields.rows(rows, names)

        found = np.empty(wanted.size, object)
        found[:] = self._lookup(wanted, records, skip_empty=True)
        return found.reshape(wanted.shape).tolist()

    def _lookup(self, wanted: np.ndarray, per_rows, skip_empty: bool) -> list:
        """`per_rows(segment, live rows)` (one value per row) for each id of `wanted`, flat; ids
        EMPTY_ID give None with `skip_empty`. ValueError for an id not live in the index."""
        flat = wanted.reshape(-1).astype(np.int64)
        values: list = [None] * len(flat)
        found = flat == EMPTY_ID if skip_empty else np.zeros(len(flat), bool)
        for segment in self._snapshot():
            remaining = np.unique(flat[~found])
            if len(remaining) == 0:
                break
            rows = segment.live_rows_of(remaining)
            if len(rows) == 0:
                continue
            by_id = dict(zip(segment.ids[rows].tolist(), per_rows(segment, rows)))
            for position in np.flatnonzero(~found):
                value = by_id.get(int(flat[position]))
                if value is not None:
                    values[position], found[position] = value, True
        if not found.all():
            raise ValueError(f"id {flat[~found][0]} is not in the index (or was deleted)")
        return values

    # ------------------------------------------------------------------ compaction and persistence

    def merge(self, max_rows: int | None = None) -> None:
        """Rewrite segments into one in-memory segment without their deleted rows.

        Args:
            max_rows: merge only segments of at most this many rows (None: all of them); the
                in-memory segment is always included. `save(directory)` then writes the merged
                segment as one shard and removes the shards it replaced.
        """
        if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1):
            raise ValueError(f"max_rows must be an int >= 1 or None, got {max_rows!r}")
        with self._lock:
            chosen = [s for s in self._segments if max_rows is None or len(s) <= max_rows]
            if self._builder.count:
                chosen.append(self._builder.snapshot())
            if len(chosen) == 0 or (len(chosen) == 1 and chosen[0].deleted_count == 0):
                return
            merged = _concatenate(chosen, self.dim, self.store_float16)
            kept = tuple(s for s in self._segments if not any(s is c for c in chosen))
            self._segments = kept + ((merged,) if len(merged) else ())
            self._builder = SegmentBuilder(self.dim, self.store_float16)

    def save(self, path: str | os.PathLike, *, lock_timeout: float = DEFAULT_TIMEOUT) -> None:
        """Write the index, in one commit: killed at any moment, or failing with any OSError, `path`
        holds what it held before or the index whole, never a mix.

        `path` an existing directory: the index becomes a store there (see fastret.storage.store): its
        segments mapped from that directory stay, with their deletions written beside them, the
        others become new shards, and the manifest is replaced last. Any other `path`: one index
        file holding the live vectors (deleted rows left out), with its sign bits and stored fields
        beside it (fastret.storage.segment_files), committed by the file's rename. Document ids are kept
        when every vector has one.

        One writer at a time: the save holds `path`'s writer lock (fastret.storage.writer_lock), waiting up
        to `lock_timeout` seconds for another writer. An index loaded from `path` (or saved there
        before) is saved back only if no other writer changed `path` since; else nothing is
        written and `ConcurrentWriteError` says to load it again. Hold `writer_lock(path)` around
        a whole load-modify-save to wait for other writers instead.

        Raises:
            ConcurrentWriteError: another writer changed `path` since this index was loaded from it.
            WriterBusyError (a TimeoutError): another writer held `path` for `lock_timeout` seconds.
            OSError: a failed write (a full disk, say), naming the file; `path` is then as it was.
            StoreError: `path` holds a store of another dimension, or a damaged manifest.
        """
        path = Path(path)
        with writer_lock(path, timeout=lock_timeout):
            if self._origin is not None and self._origin[0] == path.resolve():
                now = _version_of(path)
                if now != self._origin[1]:
                    raise ConcurrentWriteError(
                        f"{path} was changed by another writer since this index was loaded from it (version "
                        f"{self._origin[1]} then, {now} now); nothing was written: load it again and repeat the "
                        "change, or hold fastret.storage.writer_lock.writer_lock(path) around load, change and save")
            with self._lock:
                segments = self._segments_locked()
                if path.is_dir():
                    saved = store.save_segments(path, list(segments), self.dim, self.store_float16)
                    self._segments = tuple(saved)
                    self._builder = SegmentBuilder(self.dim, self.store_float16)
                    self._origin = (path.resolve(), _version_of(path))
                    return
            merged = _concatenate(list(segments), self.dim, self.store_float16)
            doc_ids = merged.doc_ids
            if doc_ids is not None and not isinstance(doc_ids, PackedDocIds):
                doc_ids = doc_ids.subset(np.arange(len(merged)))
            segment_files.write_segment(path, IndexArrays(merged.codes, merged.scales, merged.ids, merged.float16,
                                                          None if doc_ids is None else doc_ids.offsets,
                                                          None if doc_ids is None else doc_ids.blob),
                                        merged.bits, merged.fields)
            self._origin = (path.resolve(), _version_of(path))

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = True, verify: bool = True) -> "Index":
        """Open an index file written by `save`, or a store directory (`Encoder.encode_corpus`).

        Args:
            path: the index file, or a store directory: each shard becomes a segment, mapped in
                place (no copy); `index.documents(ids)` names the documents.
            mmap: map the arrays (read-only, paged in on demand) instead of reading them.
            verify: check each file's data checksum and values (reads every byte once). Without
                it only headers and sizes are checked and the data is trusted (see
                fastret.storage.index_file): for files this program wrote, when load time matters.

        Raises:
            FileNotFoundError: no such file or directory.
            ValueError: not a fastret index or store, unsupported version, truncated or
                corrupted file, or a deletion file that does not match its segment (the error
                names the file).
        """
        path = Path(path)
        if path.is_dir():
            opened, segments = store.open_segments(path, mmap=mmap, verify=verify)
            index = cls.from_segments(segments, opened.dim, bool(opened.manifest.get("float16")))
            version = opened.generation
        else:
            version = _version_of(path)
            segment = store.open_segment_file(path, mmap=mmap, verify=verify)
            index = cls.from_segments([segment], segment.codes.shape[1], segment.float16 is not None)
            if _version_of(path) != version:  # replaced while it was read: a later save there must fail
                version = None
        index._origin = (path.resolve(), version)
        return index


def _version_of(path: Path) -> Any:
    """What changes when a writer commits to `path`: a store's generation, an index file's identity
    (device, inode, size, modification time: a save renames a new file over it); None when absent."""
    if path.is_dir():
        return store.generation(path)
    try:
        status = path.stat()
    except FileNotFoundError:
        return None
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


def _live(segments: Sequence[Segment]) -> int:
    """Live (not deleted) rows of `segments`."""
    return sum(s.live_count for s in segments)


def _concatenate(segments: Sequence[Segment], dim: int, store_float16: bool) -> Segment:
    """The live rows of `segments` as one segment (document ids kept if all have them); a single
    segment without deleted rows is returned as it is (a mapped one is then written straight from
    its file, not copied into memory)."""
    if len(segments) == 1 and segments[0].deleted_count == 0:
        return segments[0]
    lives = [s.live_rows() for s in segments]
    codes = np.concatenate([np.empty((0, dim), np.int8)] + [s.codes[r] for s, r in zip(segments, lives)])
    scales = np.concatenate([np.empty(0, np.float32)] + [s.scales[r] for s, r in zip(segments, lives)])
    ids = np.concatenate([np.empty(0, np.int64)] + [s.ids[r] for s, r in zip(segments, lives)])
    float16 = None
    if store_float16:
        float16 = np.concatenate([np.empty((0, dim), np.float16)] + [s.float16[r] for s, r in zip(segments, lives)])
    doc_ids = None
    if segments and all(s.doc_ids is not None for s in segments):
        doc_ids = PackedDocIds.from_list([d for s, r in zip(segments, lives) for d in s.documents(r)])
    fields = concatenate([None if s.fields is None else s.fields.take(r) for s, r in zip(segments, lives)],
                         [len(r) for r in lives])
    bits = None  # kept when every segment has them at hand; else made from the codes when needed
    if all(s.bits is not None for s in segments):
        bits = sign_bits.blocked(np.concatenate([np.empty((0, sign_bits.words(dim)), np.uint64)]
                                             + [sign_bits.bit_rows(s.bits, r) for s, r in zip(segments, lives)]))
    return Segment(codes, scales, ids, float16, doc_ids, fields=fields, bits=bits)
