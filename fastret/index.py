"""`Index`: an exact inner-product index over int8 vectors with per-vector scales.

Memory: n x dim bytes of codes + 4 bytes of scale + 8 bytes of id per vector (+ 2 x dim bytes of
float16 per vector when built with `store_float16=True`, for exact rescoring). Incremental adds
grow the buffers geometrically, like a list; one add, or `load`, holds exactly what is needed.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from . import _arrays, _core, index_file
from .search import topk_int8_torch

_GROWTH = 1.5


class Index:
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
        self._dim = int(dim)
        self._store_float16 = bool(store_float16)
        self._count = 0
        self._codes = np.empty((0, self._dim), np.int8)
        self._scales = np.empty(0, np.float32)
        self._ids = np.empty(0, np.int64)
        self._float16 = np.empty((0, self._dim), np.float16) if store_float16 else None
        self._lock = threading.Lock()
        self._device_copies: dict[str, tuple] = {}

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return self._dim

    @property
    def store_float16(self) -> bool:
        """Whether float16 copies are kept for rescoring."""
        return self._store_float16

    def __len__(self) -> int:
        return self._count

    @property
    def nbytes(self) -> int:
        """Bytes held by the index's arrays (capacity included)."""
        arrays = (self._codes, self._scales, self._ids, self._float16)
        return sum(a.nbytes for a in arrays if a is not None)

    def __repr__(self) -> str:
        extra = ", store_float16=True" if self._store_float16 else ""
        return f"fastret.Index(dim={self._dim}, count={self._count}{extra})"

    # ------------------------------------------------------------------ adding

    def add(self, vectors: Any, ids: Any = None) -> None:
        """Add vectors.

        Args:
            vectors: float32/float16/float64 [n, dim] (numpy or CPU torch; quantized here), or an
                already-quantized (codes int8 [n, dim] in [-127, 127], scales float32 [n]) tuple.
                One 1-D vector counts as n = 1.
            ids: optional int64 [n] external ids; by default ids continue from len(index).
                Ids are returned by `search` and break score ties (lower first); they need not be
                unique or sorted.

        Raises:
            TypeError, ValueError: wrong dtype, shape or dimension, NaN/inf, codes of -128, ids of
                the wrong length, or int8 input to an index that keeps float16 copies.
        """
        codes, scales, floats = _arrays.vectors(vectors, "vectors", self._dim)
        n = len(codes)
        if floats is None and self._store_float16:
            raise ValueError(
                "this index keeps float16 copies for rescoring, so it needs float vectors, "
                "not (codes, scales); pass the float vectors or use Index(dim, store_float16=False)"
            )
        new_ids = self._new_ids(ids, n)
        with self._lock:
            start = self._count
            self._reserve(start + n)
            self._codes[start : start + n] = codes
            self._scales[start : start + n] = scales
            self._ids[start : start + n] = new_ids
            if self._float16 is not None:
                self._float16[start : start + n] = floats
            self._count = start + n
            self._device_copies = {}

    def _new_ids(self, ids: Any, n: int) -> np.ndarray:
        if ids is None:
            return np.arange(self._count, self._count + n, dtype=np.int64)
        return _arrays.int64_ids(ids, n)

    def _reserve(self, needed: int) -> None:
        """Make room for `needed` vectors (copying out of a read-only mmap if loaded that way)."""
        capacity = len(self._codes)
        writable = self._codes.flags.writeable
        if needed <= capacity and writable:
            return
        new_capacity = needed if self._count == 0 else max(needed, int(capacity * _GROWTH))

        def grown(array, shape_tail, dtype):
            fresh = np.empty((new_capacity, *shape_tail), dtype)
            fresh[: self._count] = array[: self._count]
            return fresh

        self._codes = grown(self._codes, (self._dim,), np.int8)
        self._scales = grown(self._scales, (), np.float32)
        self._ids = grown(self._ids, (), np.int64)
        if self._float16 is not None:
            self._float16 = grown(self._float16, (self._dim,), np.float16)

    # ------------------------------------------------------------------ searching

    def search(self, queries: Any, k: int = 10, *, rescore: bool = False, rescore_factor: int = 4):
        """Exact top-k by int8 inner product, optionally re-ranked with float dot products.

        Args:
            queries: float [q, dim] (numpy or torch; quantized here), or a (codes int8, scales)
                tuple. One 1-D vector counts as q = 1. CUDA tensors search on that GPU.
            k: results per query, 1 <= k <= len(index).
            rescore: re-rank the top min(len, k * rescore_factor) int8 candidates by the exact dot
                product of the float query with the stored float16 vectors (needs
                store_float16=True and float queries). Scores are then those float dot products.
            rescore_factor: candidates per result kept for rescoring (>= 1).

        Returns:
            (scores float32 [q, k], ids int64 [q, k]), best first; ties go to the lower id.
            numpy arrays for numpy input, torch tensors (same device) for torch input.

        Raises:
            TypeError, ValueError: bad queries, k, or rescoring arguments; see `add`.
        """
        with self._lock:
            count, codes, scales, ids, float16 = (
                self._count, self._codes, self._scales, self._ids, self._float16,
            )
        k = _arrays.check_k(k, count)
        if rescore:
            self._check_rescore(queries, rescore_factor)
            candidates = min(count, k * int(rescore_factor))
        else:
            candidates = k
        if _arrays.is_cuda(queries):
            return self._search_torch(queries, k, candidates, rescore, count)

        q_codes, q_scales, q_floats = _arrays.vectors(queries, "queries", self._dim, queries=True)
        found_scores, rows = _core.topk_int8(
            q_codes, q_scales, codes[:count], scales[:count], ids[:count], candidates
        )
        if rescore:
            found_scores, rows = _rescore(q_floats, float16, rows, ids[:count], k)
        found_ids = ids[rows]
        if _arrays.is_torch(queries):
            import torch

            return torch.from_numpy(found_scores), torch.from_numpy(found_ids)
        return found_scores, found_ids

    def _check_rescore(self, queries: Any, rescore_factor: Any) -> None:
        if not self._store_float16:
            raise ValueError(
                "rescore=True needs float16 copies; build the index with Index(dim, store_float16=True)"
            )
        if isinstance(queries, tuple):
            raise ValueError("rescore=True needs float queries, not (codes, scales)")
        if isinstance(rescore_factor, bool) or not isinstance(rescore_factor, (int, np.integer)) or rescore_factor < 1:
            raise ValueError(f"rescore_factor must be an int >= 1, got {rescore_factor!r}")

    def _search_torch(self, queries, k, candidates, rescore, count):
        import torch

        from .quant import quantize_int8

        device = queries.device
        codes, scales, ids, float16 = self._on_device(device, count)
        if not queries.dtype.is_floating_point:
            raise TypeError(f"queries must be floating point, got {queries.dtype}")
        q = queries[None] if queries.ndim == 1 else queries
        if q.ndim != 2 or q.shape[1] != self._dim or q.shape[0] == 0:
            raise ValueError(f"queries must be [q, {self._dim}] with q >= 1, got {tuple(queries.shape)}")
        q_codes, q_scales = quantize_int8(q)
        rows_scores, rows = topk_int8_torch(q_codes, q_scales, codes, scales, candidates, ids)
        if not rescore:
            return rows_scores, ids[rows]
        exact = torch.einsum("qcd,qd->qc", float16[rows].float(), q.float())
        by_id = torch.sort(ids[rows], dim=1, stable=True)
        by_score = torch.sort(exact.gather(1, by_id.indices), dim=1, descending=True, stable=True)
        order = by_id.indices.gather(1, by_score.indices)[:, :k]
        return exact.gather(1, order), ids[rows.gather(1, order)]

    def _on_device(self, device, count):
        """The index's arrays on `device`, uploaded once per device until the next add."""
        import torch

        key = str(device)
        with self._lock:
            cached = self._device_copies.get(key)
            if cached is None:
                cached = tuple(
                    None if a is None else torch.from_numpy(np.ascontiguousarray(a[:count])).to(device)
                    for a in (self._codes, self._scales, self._ids, self._float16)
                )
                self._device_copies[key] = cached
        return cached

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | os.PathLike) -> None:
        """Write the index to `path` (atomically: a temporary file renamed into place)."""
        with self._lock:
            n = self._count
            arrays = index_file.IndexArrays(
                self._codes[:n], self._scales[:n], self._ids[:n],
                None if self._float16 is None else self._float16[:n],
            )
            index_file.write(path, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = True, verify: bool = True) -> "Index":
        """Open an index written by `save`, or an embedding store written by `Encoder.encode_corpus`.

        Args:
            path: the index file, or a store directory (its shards are concatenated in memory;
                row i is document `fastret.store.Store.open(path).doc_ids()[i]`).
            mmap: map the arrays from the file (read-only, paged in on demand) instead of reading
                them; a later `add` copies them into memory first.
            verify: check the data checksum (reads the whole file once).

        Raises:
            FileNotFoundError: no such file.
            ValueError: not a fastret index, unsupported version, truncated or corrupted file.
        """
        if Path(path).is_dir():
            from .store import Store

            return Store.open(path).to_index(verify=verify)
        arrays = index_file.read(path, mmap=mmap, verify=verify)
        index = cls(arrays.codes.shape[1], store_float16=arrays.float16 is not None)
        index._set_arrays(arrays.codes, arrays.scales, arrays.ids, arrays.float16)
        return index

    def _set_arrays(self, codes: np.ndarray, scales: np.ndarray, ids: np.ndarray,
                    float16: np.ndarray | None) -> None:
        """Adopt arrays as the index's contents (may be read-only memory maps: `add` copies them)."""
        with self._lock:
            self._codes, self._scales, self._ids = codes, scales, ids
            if self._store_float16:
                self._float16 = float16
            self._count = len(codes)
            self._device_copies = {}


def _rescore(queries: np.ndarray, float16: np.ndarray, rows: np.ndarray, ids: np.ndarray, k: int):
    """Re-rank candidate rows [q, c] by float32 dot products with the float16 copies.

    Returns the k best (scores float32 [q, k], rows int64 [q, k]), ties to the lower id.
    """
    candidates = float16[rows.reshape(-1)].astype(np.float32).reshape(*rows.shape, -1)
    exact = np.matmul(candidates, queries[:, :, None])[..., 0]
    order = np.lexsort((ids[rows], -exact), axis=-1)[:, :k]
    return np.take_along_axis(exact, order, axis=1), np.take_along_axis(rows, order, axis=1)
