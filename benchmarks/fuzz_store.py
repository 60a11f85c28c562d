"""Mutation fuzzing of a store's sidecars and manifest: no crash, no hang, every error names the
damaged file, and no silently different answer.

    .venv/bin/python benchmarks/fuzz_store.py --cases 20000 --json benchmarks/results/DATE-cpu-fuzz-store.json

The store is one as saves leave it (3 shards, float16 copies, stored fields, sign bits, deletion
files of the last generation). Each case takes one of its sidecars (`.bits`, `.deleted`,
`.fields.arrow`, `.fields.index`) or its manifest and damages it: flipped bits, a truncation, an extension, an
overwritten run of bytes. Then it loads the store with verify=True and reads it as a user would
(`fingerprint`: exact and rescored int8 search, a binary search, the stored fields and document
ids of every live row):

- an error must be a StoreError or IndexFileError whose message names the damaged file;
- a load that succeeds must give exactly the undamaged store's answers (only bytes that change
  nothing, such as padding, may pass unnoticed).

A crash (a signal in pyarrow, say) ends the run; a case that runs past --case-timeout seconds is a
hang. `tests/test_crash_safety.py` runs a few hundred cases of the same function on every `make
test`, and takes its store from `base_store` and `change` here.
"""

from __future__ import annotations

import json
import signal
import sys
from collections import Counter
from pathlib import Path

import numpy as np

import fastret
from fastret.storage.index_file import IndexFileError
from fastret.storage.store import StoreError

from harness import run_fuzz

DIM = 8
QUERIES = np.random.default_rng(7).standard_normal((5, DIM)).astype(np.float32)
DAMAGED_KINDS = (".bits", ".deleted", ".fields.arrow", ".fields.index", "manifest.json")
# filters of the fingerprint: a list field's postings, a number range, their $and and a complement
FILTERS = ({"mesh": "Humans"}, {"year": {"$gte": 2010}}, {"mesh": {"$in": ["Humans"]}, "year": {"$lt": 2005}},
           {"mesh": {"$ne": "Humans"}})


class FuzzFailure(AssertionError):
    """A case that broke the store's contract; the message says which and how to replay it."""


def fields_of(ids) -> list[dict]:
    """Stored fields for the rows `ids`: a title, a year, a MeSH list."""
    return [{"title": f"doc {i}", "year": 2000 + i % 20, "mesh": ["Humans"] if i % 2 else []} for i in ids]


def unit_rows(rng, n: int) -> np.ndarray:
    rows = rng.standard_normal((n, DIM)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def base_store(directory: Path, rng) -> None:
    """A store of 3 shards with float16 copies, stored fields and deletions, as saves leave it."""
    index = fastret.Index(DIM, store_float16=True)
    index.add(unit_rows(rng, 40), documents=[f"d{i}" for i in range(40)], fields=fields_of(range(40)))
    directory.mkdir()
    index.save(directory)  # one shard
    for first in (40, 55):
        index = fastret.Index.load(directory)
        index.add(unit_rows(rng, 15), ids=np.arange(first, first + 15),
                  documents=[f"d{i}" for i in range(first, first + 15)], fields=fields_of(range(first, first + 15)))
        index.save(directory)
    index = fastret.Index.load(directory)
    index.delete([3, 44])
    index.save(directory)


def change(index: fastret.Index, rng) -> None:
    """A change whose save does every kind of write: deletions in old shards, new rows with fields,
    and a merge of the small shards (so shards are written and others removed)."""
    index.delete([1, 2, 41, 60])
    index.add(unit_rows(rng, 6), ids=np.arange(100, 106), documents=[f"n{i}" for i in range(6)],
              fields=fields_of(range(100, 106)))
    index.merge(max_rows=20)


def fingerprint(path: Path) -> str:
    """What a reader gets from the store or index file at `path`, loaded with every check: its size,
    exact, rescored and binary results, filtered ones (answered from the field indexes), and the
    fields and document ids of every live row (as JSON)."""
    index = fastret.Index.load(path)
    scores, ids = index.search(QUERIES, 10, rescore=True)
    _, exact = index.search(QUERIES, 10)
    _, binary = index.search(QUERIES, 5, first_stage="binary", oversample=2)
    filtered = [index.search(QUERIES, 10, filter=spec)[1].tolist() for spec in FILTERS]
    _, live = index.search(QUERIES[:1], len(index))
    live = np.sort(live[0])
    return json.dumps([len(index), ids.tolist(), np.round(scores, 6).tolist(), exact.tolist(), binary.tolist(),
                       filtered, live.tolist(), index.fields(live), index.documents(live).tolist()], sort_keys=True)


def mutations(data: bytes, rng, count: int):
    """`count` damaged copies of `data`: flipped bits, truncations, extensions, overwritten runs."""
    for _ in range(count):
        damaged = bytearray(data)
        kind = rng.integers(4)
        if kind == 0:
            for _ in range(rng.integers(1, 4)):
                damaged[rng.integers(len(damaged))] ^= 1 << int(rng.integers(8))
        elif kind == 1:
            damaged = damaged[: rng.integers(len(damaged))]
        elif kind == 2:
            damaged += bytes(rng.integers(0, 256, rng.integers(1, 64), dtype=np.uint8))
        else:
            start, run = rng.integers(len(damaged)), rng.integers(1, 32)
            damaged[start : start + run] = bytes(rng.integers(0, 256, len(damaged[start : start + run]), dtype=np.uint8))
        yield bytes(damaged)


def fuzz(cases: int, seed: int, workdir: Path, case_timeout: float = 30.0) -> Counter:
    """Run `cases` damaged stores; returns counts of "<damaged kind> <outcome>".

    Raises:
        FuzzFailure: an error that does not name the damaged file, an undocumented exception, a
            different answer without an error, or a hang.
    """
    store = workdir / "store"
    base_store(store, np.random.default_rng(seed))
    expected = fingerprint(store)
    files = sorted(p for p in store.iterdir() if p.name.endswith(DAMAGED_KINDS))
    kinds = {next(k for k in DAMAGED_KINDS if p.name.endswith(k)) for p in files}
    assert kinds == set(DAMAGED_KINDS), f"the store lacks some kinds of file: {sorted(kinds)}"
    rng = np.random.default_rng(seed)
    counts: Counter = Counter()

    def hang(signum, frame):
        raise FuzzFailure(f"a case ran past {case_timeout} s (seed {seed})")

    previous = signal.signal(signal.SIGALRM, hang)
    try:
        for number in range(cases):
            path = files[number % len(files)]
            good = path.read_bytes()
            damaged = next(mutations(good, rng, 1))
            path.write_bytes(damaged)
            kind = next(k for k in DAMAGED_KINDS if path.name.endswith(k))
            signal.setitimer(signal.ITIMER_REAL, case_timeout)
            try:
                got = fingerprint(store)
            except (StoreError, IndexFileError) as error:
                if path.name not in str(error):
                    raise FuzzFailure(f"case {number} (seed {seed}): damaged {path.name}, but the error names "
                                      f"another file: {error}") from None
                counts[f"{kind} {type(error).__name__}"] += 1
            except Exception as error:  # noqa: BLE001 (reported as a failure)
                raise FuzzFailure(f"case {number} (seed {seed}): damaged {path.name}: undocumented "
                                  f"{type(error).__name__}: {error}") from error
            else:
                if got != expected:
                    raise FuzzFailure(f"case {number} (seed {seed}): damaged {path.name} loaded and gave a "
                                      "different answer")
                counts[f"{kind} unchanged answer"] += 1
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                path.write_bytes(good)
    finally:
        signal.signal(signal.SIGALRM, previous)
    return counts


if __name__ == "__main__":
    sys.exit(run_fuzz(__doc__, fuzz, cases=20000, case_timeout=30.0))
