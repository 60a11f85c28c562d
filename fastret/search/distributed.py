"""`ShardedIndex`: one index spread over Ray actors, its shards on any node of a Ray cluster.

A shard is a list of index files (store shards or files written by `Index.save`) that one Ray actor
memory-maps from a path every node can read; a shard may run as several actors (replicas).
`ShardedIndex` is a `fastret.search.rules.Searchable` like `Index`, and searches as `Index` does, through
the same rules (fastret.search.rules): its `candidates` sends the queries to one replica of every shard,
each returns its own top min(c, live) by int8 score (`Index.candidates`), and the caller merges
them with `merge_candidates` (higher score first, then lower id); `search` is
`search_by_candidates` over those, rescoring included. So results are identical, id for id and
score for score, to one `Index` over the same vectors: the merged top c by int8 score is the
global top c, and rescoring re-ranks the global top k x factor as `Index` does.

The binary first stage (`first_stage="binary"`) is where shards differ from one index. One
`Index` keeps the global top c x oversample rows by the binary score; here each shard keeps its
own top c x oversample (oversample="auto" is resolved here, from every shard's live rows: at
least what one `Index` resolves it to, for it counts only the rows a filter passes), which holds
every row of the global ones that lies in that shard (both
stages rank by score, then by lower id, the same order everywhere). So the merged candidates are
the top c by int8 score of a superset of one index's binary candidates:
- identical to one `Index` over the same vectors when there is one shard, and when c x
  oversample is at least the live rows that pass the filter (every such row a candidate in both);
- otherwise, rank by rank, at least as good as one `Index`'s by the tie rule (a higher int8
  score, or the same score and a lower id), and exactly the merge of each shard's own
  `Index.candidates(..., first_stage="binary")`. With rescoring, the float16 re-ranking runs on
  those candidates, so its results may differ from one `Index`'s either way.

State and failures. The caller keeps a log of every `add` and `delete` since the files were
loaded, numbered; each actor counts the entries it has applied. Every call carries the count the
caller expects, and an actor that is behind (Ray restarted it after a crash: it reloaded its files
and nothing else) answers with its count instead, is sent the missing entries and asked again. A
call that fails on a dead actor goes to another replica or waits for the restart, until
`timeout_s`; then `ShardUnavailableError` names the shard. A search never returns a partial answer.

This module imports ray (`pip install "fastret[distributed]"`); nothing else in fastret imports it.
"""

from __future__ import annotations

import functools
import itertools
import os
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import ray
from ray.exceptions import RayActorError, RayTaskError

from .. import checks
from ..cpu import set_num_threads
from ..storage import index_file, segment_files, store
from ..storage.writer_lock import lock_path
from . import binary
from .filters import Filter, FilterError
from .index import Index
from .rules import (EMPTY_ID, SearchableBase, check_first_stage, check_rescore, merge_candidates, query_codes, rank,
                    search_by_candidates)

DEFAULT_TIMEOUT_S = 60.0
STARTUP_TIMEOUT_S = 600.0
# How long a call waits on one replica before asking another one too (replicated shards only).
HEDGE_S = 2.0


class ShardUnavailableError(RuntimeError):
    """No replica of a shard answered within the timeout (the message names the shard and its files)."""


class ShardServer:
    """One replica of one shard: an `Index` over its files, plus the log entries applied since.

    Runs as a Ray actor (see `ShardedIndex`); Ray restarts it after a crash by calling __init__
    again, so it holds nothing that the files and the caller's log cannot rebuild.
    """

    def __init__(self, paths: Sequence[str], dim: int, store_float16: bool, verify: bool, threads: int):
        set_num_threads(threads)
        segments = [store.open_segment_file(path, verify=verify) for path in paths]
        self.index = Index.from_segments(segments, dim, store_float16)
        # The largest id in the files, deleted rows included (as Index numbers new vectors).
        self.max_id = max((int(s.ids.max()) for s in segments if len(s)), default=None)
        self.applied = 0

    def state(self, expected: int) -> tuple[int, dict | None]:
        """(entries applied, {"live", "max_id" (in the files), "has_documents"})."""
        if self.applied != expected:
            return self.applied, None
        return self.applied, {"live": len(self.index), "max_id": self.max_id,
                              "has_documents": self.index.has_documents}

    def apply(self, first: int, entries: list) -> tuple[int, list]:
        """Apply log entries numbered first, first + 1, ... that this replica has not applied yet.

        Returns:
            (entries applied now in all, the results of the entries applied by this call: None for
            an add, the count for a delete). A replica behind `first` applies nothing.
        """
        if self.applied < first:
            return self.applied, []
        results = []
        for kind, payload in ray.get(list(entries[self.applied - first:])):
            if kind == "add":
                vectors, ids, documents, fields = payload
                self.index.add(vectors, ids, documents=documents, fields=fields)
                results.append(None)
            else:
                results.append(self.index.delete(payload))
            self.applied += 1
        return self.applied, results

    def candidates(self, expected: int, queries: Any, c: int, exact: bool, filter: Filter | None = None,
                   first_stage: str = "int8", oversample: int | str = "auto") -> tuple[int, tuple | None]:
        """(entries applied, `Index.candidates(queries, c, exact=exact, filter=filter,
        first_stage=first_stage, oversample=oversample)`), or (entries applied, None) without
        searching when that is not `expected`."""
        if self.applied != expected:
            return self.applied, None
        return self.applied, self.index.candidates(queries, c, exact=exact, filter=filter, first_stage=first_stage,
                                                   oversample=oversample)

    def contains(self, expected: int, ids: np.ndarray, filter: Filter | None = None) -> tuple[int, np.ndarray | None]:
        """(entries applied, `Index.contains(ids, filter=filter)`)."""
        if self.applied != expected:
            return self.applied, None
        return self.applied, self.index.contains(ids, filter=filter)

    def fields(self, expected: int, ids: np.ndarray, names: list | None) -> tuple[int, list | None]:
        """(entries applied, the stored fields (a dict) of each of `ids`, None for ids this shard lacks)."""
        if self.applied != expected:
            return self.applied, None
        held = self.index.contains(ids)
        found = iter(self.index.fields(ids[held], names))
        return self.applied, [next(found) if h else None for h in held.tolist()]

    def documents(self, expected: int, ids: np.ndarray) -> tuple[int, list | None]:
        """(entries applied, the document id of each of `ids`, None for ids this shard lacks)."""
        if self.applied != expected:
            return self.applied, None
        names = []
        for one in ids.tolist():
            try:
                names.append(str(self.index.documents([one])[0]))
            except ValueError:
                names.append(None)
        return self.applied, names

    def save(self, expected: int, path: str) -> tuple[int, None]:
        """Write this shard's live vectors to one index file at `path` (see `Index.save`)."""
        if self.applied != expected:
            return self.applied, None
        self.index.save(path)
        return self.applied, None


def _serialized(method):
    """Run the method under the index's lock (calls carry the log's length, so one at a time),
    after recounting the shards whose last delete went unconfirmed."""

    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._lock:
            self._recount()
            return method(self, *args, **kwargs)

    return locked


class ShardedIndex(SearchableBase):
    """An index whose shards are Ray actors, searched as one `Index`.

    Needs `ray.init(...)` first (a local Ray, or `ray.init(address=...)` to join a cluster).
    Safe to share between threads; their calls run one at a time.

    Args:
        shards: the index files of each shard, e.g. [[a.frt, b.frt], [c.frt]]; every node must
            read these paths (a shared filesystem). Deletion files beside them are read too.
        replicas: actors per shard: one int for every shard, or one per shard.
        timeout_s: how long a call may take, its searches included, waiting out crashed
            replicas and restarts, before `ShardUnavailableError`. A shard of one replica waits out a restart (a new process
            that imports fastret and maps its files: seconds), so leave room for one.
        startup_timeout_s: how long the actors may take to start and map their files.
        num_cpus: Ray CPUs each actor reserves (fractions allowed); its search uses
            max(1, round(num_cpus)) threads.
        verify: check each file's checksum when an actor loads it (see `Index.load`).
        max_restarts: how often Ray restarts a crashed actor (-1: always).

    Raises:
        ValueError: no shards, a shard without files, files of different dimensions or float16
            settings, or bad replica counts.
        FileNotFoundError: a missing file.
    """

    def __init__(self, shards: Sequence[Sequence[str | os.PathLike]], *, replicas: int | Sequence[int] = 1,
                 timeout_s: float = DEFAULT_TIMEOUT_S, startup_timeout_s: float = STARTUP_TIMEOUT_S,
                 num_cpus: float = 1.0, verify: bool = True, max_restarts: int = -1):
        self._paths = [[str(Path(p).resolve()) for p in _as_list(files, "each shard")] for files in
                       _as_list(shards, "shards")]
        if not self._paths or any(not files for files in self._paths):
            raise ValueError(f"shards must be a non-empty list of non-empty lists of index files, got {shards!r:.200}")
        counts = [replicas] * len(self._paths) if isinstance(replicas, (int, np.integer)) else list(replicas)
        if (len(counts) != len(self._paths)
                or any(isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1 for n in counts)):
            raise ValueError(f"replicas must be an int >= 1 or one such int per shard ({len(self._paths)}), "
                             f"got {replicas!r}")
        if isinstance(num_cpus, bool) or not isinstance(num_cpus, (int, float)) or not num_cpus >= 0:
            raise ValueError(f"num_cpus must be a number >= 0, got {num_cpus!r}")
        if not (timeout_s > 0 and startup_timeout_s > 0):
            raise ValueError(f"timeouts must be > 0, got {timeout_s!r} and {startup_timeout_s!r}")
        headers = [(p, index_file.read_header(p)) for files in self._paths for p in files]
        super().__init__(headers[0][1].dim, headers[0][1].has_float16)
        for path, header in headers:
            if header.dim != self.dim or header.has_float16 != self.store_float16:
                raise ValueError(f"{path}: {header.dim}-d vectors, float16 copies {header.has_float16}; "
                                 f"{headers[0][0]} has {self.dim}-d, float16 copies {self.store_float16}: "
                                 "every file of a sharded index must match")
        self._timeout_s = float(timeout_s)
        self._lock = threading.RLock()
        server = ray.remote(ShardServer).options(num_cpus=num_cpus, max_restarts=max_restarts,
                                                  max_task_retries=-1)
        threads = max(1, round(num_cpus))
        self._actors = [[server.remote(files, self.dim, self.store_float16, verify, threads)
                         for _ in range(int(n))] for files, n in zip(self._paths, counts)]
        self._turns = [itertools.count() for _ in self._paths]
        self._log: list[list[ray.ObjectRef]] = [[] for _ in self._paths]
        states = self._fan_out("state", lambda shard: (), timeout_s=startup_timeout_s)
        self._live = [s["live"] for s in states]
        largest = [s["max_id"] for s in states if s["max_id"] is not None]
        self._next_id = max(largest) + 1 if largest else 0
        self._has_documents = all(s["has_documents"] for s in states)
        self._uncounted: set[int] = set()  # shards whose live count is unknown (a delete timed out)

    @classmethod
    def load(cls, source: str | os.PathLike | Sequence[str | os.PathLike], shards: int | None = None,
             **options) -> "ShardedIndex":
        """Spread a store's shards, or index files, over `shards` shards (see `place`).

        Args:
            source: a store directory, one index file, or a list of index files.
            shards: how many shards; None: one per node of the Ray cluster (at most one per file).
            options: as `ShardedIndex(...)`.

        Raises:
            ValueError: more shards than files, or a store that is incomplete.
        """
        if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
            opened = store.Store.open(source)
            files = [opened.directory / f"{entry['name']}.frt" for entry in opened.manifest["shards"]]
        elif isinstance(source, (str, os.PathLike)):
            files = [Path(source)]
        else:
            files = [Path(p) for p in _as_list(source, "source")]
        if shards is None:
            shards = min(len(files), sum(1 for node in ray.nodes() if node.get("Alive")))
        if isinstance(shards, bool) or not isinstance(shards, (int, np.integer)) or not 1 <= shards <= len(files):
            raise ValueError(f"shards must be an int in [1, {len(files)}] (a shard holds whole files and "
                             f"{source} has {len(files)}), got {shards!r}")
        groups = place([index_file.read_header(p).count for p in files], int(shards))
        return cls([[files[i] for i in group] for group in groups], **options)

    # ------------------------------------------------------------------ what it holds

    @property
    def has_documents(self) -> bool:
        """True when every vector has a document id."""
        return self._has_documents

    @property
    def shard_files(self) -> list[list[str]]:
        """The index files of each shard."""
        return [list(files) for files in self._paths]

    @property
    def replica_counts(self) -> list[int]:
        """Actors per shard."""
        return [len(actors) for actors in self._actors]

    def shard_actors(self, shard: int) -> list:
        """The Ray actor handles of one shard's replicas (to watch or kill them)."""
        return list(self._actors[shard])

    def __len__(self) -> int:
        """Live (not deleted) vectors."""
        with self._lock:
            self._recount()
            return sum(self._live)

    def __repr__(self) -> str:
        return (f"fastret.ShardedIndex(dim={self.dim}, count={len(self)}, shards={len(self._paths)}, "
                f"replicas={self.replica_counts})")

    # ------------------------------------------------------------------ searching

    @_serialized
    def search(self, queries: Any, k: int = 10, *, rescore: bool = False, rescore_factor: int = 4,
               filter: Any = None, first_stage: str = "int8", oversample: int | str = "auto"):
        """Exact top-k over every shard, identical to `Index.search` over the same vectors.

        Args, Returns: as `Index.search` (CPU queries only); a filter is a dict or a
        `fastret.search.filters.Filter` (a row mask has no meaning across shards), evaluated on the shards.
        With first_stage="binary" each shard keeps its own top k x oversample binary candidates:
        identical to `Index.search` for one shard, else at least as good rank by rank (see the
        module's docstring).

        Raises:
            TypeError, ValueError: bad queries, k, rescoring arguments, first stage or filter (as
                `Index.search`), before any shard is asked.
            ShardUnavailableError: a shard had no replica answer within `timeout_s`.
        """
        checked = _shard_filter(filter)
        oversample = check_first_stage(first_stage, oversample)
        return search_by_candidates(lambda q, c, exact: self._candidates(q, c, exact, checked, first_stage, oversample),
                                    sum(self._live), self.store_float16, queries, k, rescore=rescore,
                                    rescore_factor=rescore_factor)

    @_serialized
    def candidates(self, queries: Any, c: int, *, exact: bool = False, filter: Any = None,
                   first_stage: str = "int8", oversample: int | str = "auto"):
        """Every shard's top candidates merged: identical to `Index.candidates` over the same vectors
        (with first_stage="binary", as `search` says).

        Args, Returns: as `Index.candidates` (CPU queries only; a filter as in `search`).

        Raises:
            TypeError, ValueError: as `Index.candidates`.
            ShardUnavailableError: a shard had no replica answer within `timeout_s`.
        """
        checked = _shard_filter(filter)
        return self._candidates(queries, c, exact, checked, first_stage, check_first_stage(first_stage, oversample))

    def _candidates(self, queries: Any, c: int, exact: bool, filter: Filter | None, first_stage: str,
                    oversample: int | str | None):
        c = checks.check_k(c, sum(self._live))
        if oversample == binary.AUTO:  # every shard keeps what one Index over all of them would
            oversample = binary.auto_oversample(sum(self._live), c)
        if exact:
            check_rescore(self.store_float16, queries, 1)
        if checks.is_torch(queries):
            queries = checks.to_numpy(queries, "queries")
        # The same checks and quantization as Index: the shards get clean arrays.
        q_codes, q_scales, q_floats = query_codes(queries, self.dim)
        # The float queries when the shards compute float dot products; else the codes (a quarter of the bytes).
        sent = ray.put(q_floats if exact else (q_codes, q_scales))
        per_shard = [min(c, n) for n in self._live]
        found = self._fan_out("candidates", lambda shard: (sent, per_shard[shard], exact, filter, first_stage,
                                                           oversample), skip=[n == 0 for n in per_shard])
        return merge_candidates([f for f in found if f is not None], c)

    @_serialized
    def contains(self, ids: Any, *, filter: Any = None) -> np.ndarray:
        """bool, the shape of `ids`: True where the id belongs to a live vector of some shard (that
        passes `filter`, as in `search`)."""
        wanted = checks.id_array(ids)
        unique = np.unique(wanted.reshape(-1).astype(np.int64))
        checked = _shard_filter(filter)
        held = np.logical_or.reduce(self._fan_out("contains", lambda shard: (unique, checked)))
        return np.isin(wanted, unique[held])

    @_serialized
    def fields(self, ids: Any, names: Sequence[str] | None = None) -> list:
        """The stored fields of `ids`, as `Index.fields` (id -1 gives None).

        Raises:
            ValueError: an id that is in no shard (or deleted).
        """
        wanted = checks.id_array(ids)
        unique = np.unique(wanted.reshape(-1).astype(np.int64))
        unique = unique[unique != EMPTY_ID]
        by_id: dict = {EMPTY_ID: None}
        for answer in self._fan_out("fields", lambda shard: (unique, None if names is None else list(names))):
            by_id.update({i: f for i, f in zip(unique.tolist(), answer) if f is not None})
        missing = [i for i in unique.tolist() if i not in by_id]
        if missing:
            raise ValueError(f"id {missing[0]} is not in the index (or was deleted)")
        found = np.empty(wanted.size, object)
        found[:] = [by_id[i] for i in wanted.reshape(-1).tolist()]
        return found.reshape(wanted.shape).tolist()

    @_serialized
    def documents(self, ids: Any) -> np.ndarray:
        """The document ids (str) of `ids`, e.g. search results: an object array of the same shape.

        Raises:
            ValueError: an id that is in no shard (or deleted), or vectors without document ids.
        """
        if not self._has_documents:
            raise ValueError("these vectors have no document ids (some were added without documents=...)")
        wanted = checks.id_array(ids)
        unique = np.unique(wanted.reshape(-1).astype(np.int64))
        answers = self._fan_out("documents", lambda shard: (unique,))
        by_id = {}
        for names in answers:
            by_id.update({i: n for i, n in zip(unique.tolist(), names) if n is not None})
        missing = [i for i in unique.tolist() if i not in by_id]
        if missing:
            raise ValueError(f"id {missing[0]} is not in the index (or was deleted)")
        return np.array([by_id[i] for i in wanted.reshape(-1).tolist()], object).reshape(wanted.shape)

    # ------------------------------------------------------------------ adding and deleting

    @_serialized
    def add(self, vectors: Any, ids: Any = None, *, documents: Sequence[str] | None = None,
            fields: Sequence[dict] | None = None) -> None:
        """Add vectors (and their stored fields) to the shard holding the fewest; arguments and
        errors as `Index.add`.

        Default ids continue from the largest id in any shard + 1, so they stay unique.

        Raises:
            TypeError, ValueError: as `Index.add` (checked here, before any shard sees the vectors).
            ShardUnavailableError: the shard did not confirm within `timeout_s`; the vectors are
                logged and reach it when it answers again.
        """
        if checks.is_torch(vectors):
            vectors = checks.to_numpy(vectors, "vectors")
        # The same checks as Index.add, on a scratch index, so that no bad entry enters the log.
        scratch = Index(self.dim, store_float16=self.store_float16)
        scratch.add(vectors, ids, documents=documents, fields=fields)
        n = len(scratch)
        if ids is None:
            ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
        else:
            ids = checks.int64_ids(ids, n)
        shard = self._live.index(min(self._live))
        # Counted before it is sent: a shard that does not confirm in time still gets it from the log.
        self._live[shard] += n
        if n:
            self._next_id = max(self._next_id, int(ids.max()) + 1)
        self._has_documents = self._has_documents and documents is not None
        self._log_and_apply(shard, ("add", (vectors, ids, None if documents is None else list(documents),
                                            None if fields is None else list(fields))))

    @_serialized
    def delete(self, ids: Any) -> int:
        """Delete every vector whose id is in `ids`, in every shard; returns how many were deleted.

        Raises:
            TypeError: ids that are not integers.
            ShardUnavailableError: a shard did not confirm within `timeout_s` (as `add`).
        """
        wanted = checks.id_list(ids)
        if len(wanted) == 0:
            return 0
        deleted = 0
        for shard in range(len(self._paths)):
            try:
                count = self._log_and_apply(shard, ("delete", wanted))
            except ShardUnavailableError:
                self._uncounted.add(shard)
                raise
            self._live[shard] -= count
            deleted += count
        return deleted

    @_serialized
    def save(self, path: str | os.PathLike) -> None:
        """Write every live vector to `path` as `Index.save` would (one file, or a store in an
        existing directory): each shard writes its part beside `path`, which is then merged.

        The index keeps serving from its own files and log.
        """
        path = Path(path)
        parent = path if path.is_dir() else path.parent
        parts = [parent / f".{path.name}.shard-{shard}.{os.getpid()}.part" for shard in range(len(self._paths))]
        try:
            self._fan_out("save", lambda shard: (str(parts[shard]),), skip=[n == 0 for n in self._live])
            written = [p for p in parts if p.exists()]
            segments = [store.open_segment_file(p, verify=False) for p in written]
            whole = Index.from_segments(segments, self.dim, self.store_float16)
            whole.save(path)
        finally:
            for part in parts:  # private to this save: their lock files go too
                segment_files.remove_segment(part)
                lock_path(part).unlink(missing_ok=True)

    # ------------------------------------------------------------------ calls to the shards

    def _recount(self) -> None:
        """Ask the shards whose live count is unknown for it (they catch up with the log first)."""
        for shard in sorted(self._uncounted):
            state = _ShardCall(self, shard, "state", (), time.monotonic() + self._timeout_s, self._timeout_s).result()
            self._live[shard] = state["live"]
            self._uncounted.discard(shard)

    def _log_and_apply(self, shard: int, entry: tuple) -> int:
        """Append `entry` to the shard's log and send it to every replica; return its result (the
        count of a delete, 0 for an add) as soon as one replica has applied it. The others apply
        it in order before their next call (Ray runs one caller's calls to an actor in order), or
        catch up from the log after a restart."""
        log = self._log[shard]
        number = len(log)
        log.append(ray.put(entry))
        deadline = time.monotonic() + self._timeout_s
        pending = {a.apply.remote(number, [log[number]]): a for a in self._actors[shard]}
        while pending and time.monotonic() < deadline:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            for ref in ready:
                actor = pending.pop(ref)
                try:
                    applied, results = ray.get(ref)
                except RayActorError:
                    continue  # a restarted replica catches up from the log at its next call
                if applied <= number:  # restarted, behind the log: catch it up from where it is
                    pending[actor.apply.remote(applied, log[applied:])] = actor
                    continue
                # `results` are those of entries applied - len(results) ... applied - 1.
                return int(results[number - (applied - len(results))] or 0)
        kind = "add" if entry[0] == "add" else "delete"
        raise ShardUnavailableError(self._unavailable(
            shard, f"the {kind} is logged and reaches the shard when a replica answers again", self._timeout_s))

    def _fan_out(self, method: str, arguments, skip: Sequence[bool] | None = None,
                 timeout_s: float | None = None) -> list:
        """Call `method` on one replica of every shard (not the skipped ones) at once; returns the
        results in shard order (None for skipped shards)."""
        deadline = time.monotonic() + (timeout_s or self._timeout_s)
        shards = [s for s in range(len(self._paths)) if not (skip and skip[s])]
        calls = {s: _ShardCall(self, s, method, arguments(s), deadline, timeout_s or self._timeout_s)
                 for s in shards}
        results = [None] * len(self._paths)
        for shard, call in calls.items():
            results[shard] = call.result()
        return results

    def _unavailable(self, shard: int, what: str, timeout_s: float) -> str:
        files = ", ".join(self._paths[shard][:3]) + (", ..." if len(self._paths[shard]) > 3 else "")
        return (f"shard {shard} ({files}; {len(self._actors[shard])} replica(s)) did not answer within "
                f"{timeout_s:g} s: {what}. Check the Ray cluster (ray status) and that every node "
                "reads these files")


def _shard_filter(filter: Any) -> Filter | None:
    """A search's filter as shards take it: parsed here (bad filters fail before any call)."""
    if filter is None or isinstance(filter, Filter):
        return filter
    if isinstance(filter, dict):
        return Filter(filter)
    raise FilterError(f"a sharded index takes a filter as a dict or a fastret.search.filters.Filter, got "
                      f"{type(filter).__name__} (a row mask has no meaning across shards)")


class _ShardCall:
    """One call to one shard: sent to a replica at once; when that replica is behind the log it
    is caught up and asked again, when it died the next replica is asked, and a replica slow to
    answer (restarting) gets a second replica asked too. The first good answer wins."""

    def __init__(self, owner: ShardedIndex, shard: int, method: str, arguments: tuple, deadline: float,
                 timeout_s: float):
        self.owner, self.shard, self.method, self.arguments = owner, shard, method, arguments
        self.deadline, self.timeout_s = deadline, timeout_s
        self.actors = owner._actors[shard]
        self.pending: dict = {}
        self.next_replica = next(owner._turns[shard])
        self._ask(self._next_actor())

    def _next_actor(self):
        actor = self.actors[self.next_replica % len(self.actors)]
        self.next_replica += 1
        return actor

    def _ask(self, actor) -> None:
        expected = len(self.owner._log[self.shard])
        self.pending[getattr(actor, self.method).remote(expected, *self.arguments)] = actor

    def result(self):
        """The first good answer; ShardUnavailableError at the deadline, a shard's own
        ValueError/TypeError (bad input) as it is."""
        log = self.owner._log[self.shard]
        while time.monotonic() < self.deadline:
            remaining = self.deadline - time.monotonic()
            wait = min(remaining, HEDGE_S) if len(self.actors) > 1 else remaining
            ready, _ = ray.wait(list(self.pending), num_returns=1, timeout=max(0.0, wait))
            if not ready:
                if len(self.pending) < len(self.actors):
                    self._ask(self._next_actor())  # slow (restarting?): ask another replica too
                continue
            actor = self.pending.pop(ready[0])
            try:
                applied, value = ray.get(ready[0])
            except RayTaskError as error:
                if isinstance(error.cause, (ValueError, TypeError)):
                    raise error.cause from None
                raise
            except RayActorError:
                if not self.pending:
                    time.sleep(0.05)  # no replica left in flight: give Ray a moment to restart one
                    self._ask(self._next_actor())
                continue
            if applied != len(log):
                # Restarted (behind the log): catch it up, then ask it again, in this order.
                actor.apply.remote(applied, log[applied:])
                self._ask(actor)
                continue
            return value
        raise ShardUnavailableError(self.owner._unavailable(self.shard, f"{self.method} got no answer", self.timeout_s))


def place(sizes: Sequence[int], shards: int) -> list[list[int]]:
    """Which files each shard holds: largest file first, each to the shard holding the fewest
    vectors so far (ties to the lower shard), so shards hold similar counts.

    Args:
        sizes: vectors per file.
        shards: 1 <= shards <= len(sizes).

    Returns:
        Per shard, the positions of its files in `sizes`, ascending.
    """
    groups: list[list[int]] = [[] for _ in range(shards)]
    held = [0] * shards
    for position in rank(np.array([sizes], np.int64), np.arange(len(sizes)), len(sizes))[0].tolist():
        target = held.index(min(held))
        groups[target].append(position)
        held[target] += sizes[position]
    return [sorted(group) for group in groups]


def _as_list(value: Any, name: str) -> list:
    if isinstance(value, (str, bytes, os.PathLike)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a list (of index file paths), got {type(value).__name__}")
    return list(value)
