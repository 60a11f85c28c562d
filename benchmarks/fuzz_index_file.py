"""Mutation fuzzing of the index file loader: no crash, no hang, no undocumented exception, and with
verify=True no silently different result.

    .venv/bin/python benchmarks/fuzz_index_file.py --cases 100000

Each case takes one of a few valid files (float16 copies and document ids or not, version 1 or 2)
and mutates it: flipped bits, overwritten byte runs, truncation, extension, or "crafted" edits that
rewrite a header field or a data section and then fix the checksums so the damage gets past them
(huge dim x count that would wrap int64, NaN scales, NaN float16 copies, out-of-order document-id
offsets). Then it loads the file with verify=True, with mmap and without, searches it, rescoring
where it can, and names documents:

- an error must be a ValueError (IndexFileError, DocIdsError, ...) or FileNotFoundError;
- a load that succeeds after a plain mutation (checksums not fixed) must give the original
  results exactly: the checksums guard every byte that matters, so only harmless bytes (section
  padding) can change unnoticed;
- a crafted file that verify=True accepts is a different valid index; it must search without error.
It also loads each file with verify=False (data trusted, see fastret.storage.index_file): any result or a
documented error, never a crash. A case that runs past --case-timeout seconds is a hang.
`tests/test_index_file.py` runs a few thousand cases of the same function on every `make test`.
"""

from __future__ import annotations

import signal
import struct
import sys
import tempfile
import zlib
from collections import Counter
from pathlib import Path

import numpy as np

import fastret
from fastret.storage import index_file
from fastret.storage.index_file import HEADER_SIZE

from harness import run_fuzz

DOCUMENTED = (ValueError, FileNotFoundError)
HEAD_V2 = struct.Struct("<8sIIQQIQ")
HEAD_V1 = struct.Struct("<8sIIQQI")


class FuzzFailure(AssertionError):
    """A case that broke the loader's contract; the message says which and how to replay it."""


def base_files(directory: Path, seed: int = 0) -> list[tuple[Path, np.ndarray]]:
    """Valid index files to mutate, with the queries to check them by."""
    rng = np.random.default_rng(seed)
    made = []
    for name, dim, count, float16, documents in (("plain.frt", 8, 40, False, False),
                                                 ("full.frt", 12, 33, True, True),
                                                 ("tiny.frt", 3, 2, True, False)):
        vectors = rng.standard_normal((count, dim)).astype(np.float32)
        index = fastret.Index(dim, store_float16=float16)
        index.add(vectors, ids=rng.permutation(count) * 5,
                  documents=[f"doc-{i}-é" for i in range(count)] if documents else None)
        path = directory / name
        index.save(path)
        made.append((path, rng.standard_normal((3, dim)).astype(np.float32)))
    version_1 = directory / "v1.frt"  # the older header layout
    version_1.write_bytes(_as_version_1(made[0][0].read_bytes()))
    made.append((version_1, made[0][1]))
    return made


def _as_version_1(data: bytes) -> bytes:
    magic, _, flags, dim, count, dtype, _ = HEAD_V2.unpack_from(data)
    (data_crc,) = struct.unpack_from("<I", data, HEAD_V2.size + 4)
    head = HEAD_V1.pack(magic, 1, flags, dim, count, dtype)
    return (head + struct.pack("<II", zlib.crc32(head), data_crc)).ljust(HEADER_SIZE, b"\0") + data[HEADER_SIZE:]


def outcome(path: Path, queries: np.ndarray, verify: bool, mmap: bool):
    """What loading and using the file gives: ('ok', results) or ('error', type name)."""
    try:
        index = fastret.Index.load(path, mmap=mmap, verify=verify)
        k = min(5, len(index))
        if k == 0:
            return "ok", ("empty", index.dim)
        scores, ids = index.search(queries, k)
        results = [scores.tobytes(), ids.tobytes()]
        if index.store_float16:
            rescored = index.search(queries, k, rescore=True)
            results += [rescored[0].tobytes(), rescored[1].tobytes()]
        if index.has_documents:
            results.append(tuple(index.documents(ids).reshape(-1)))
        return "ok", tuple(results)
    except DOCUMENTED as error:
        return "error", type(error).__name__


def mutate(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """One mutation of `data`, and its kind ('plain' mutations leave the checksums as they are)."""
    data = bytearray(data)
    kind = rng.choice(["bits", "run", "truncate", "extend", "header", "section"], p=[.35, .15, .1, .05, .2, .15])
    if kind == "bits":
        for _ in range(int(rng.integers(1, 9))):
            position = int(rng.integers(len(data)))
            data[position] ^= 1 << int(rng.integers(8))
        return bytes(data), "plain"
    if kind == "run":
        start = int(rng.integers(len(data)))
        length = int(rng.integers(1, 64))
        data[start : start + length] = rng.integers(0, 256, min(length, len(data) - start), dtype=np.uint8).tobytes()
        return bytes(data), "plain"
    if kind == "truncate":
        return bytes(data[: int(rng.integers(len(data)))]), "plain"
    if kind == "extend":
        return bytes(data) + rng.integers(0, 256, int(rng.integers(1, 200)), dtype=np.uint8).tobytes(), "plain"
    if kind == "header":
        return _crafted_header(data, rng), "crafted"
    return _crafted_section(data, rng), "crafted"


def _crafted_header(data: bytearray, rng: np.random.Generator) -> bytes:
    """A header field set to an extreme value, with the header checksum fixed."""
    version = struct.unpack_from("<I", data, 8)[0]
    head_struct = HEAD_V2 if version == 2 else HEAD_V1
    fields = list(head_struct.unpack_from(data))
    field = int(rng.integers(2, len(fields)))
    extremes = [0, 1, 2, 3, 2**31, 2**32 - 1, 2**40, 2**62, 2**63 - 1, 2**63, 2**64 - 1,
                int(rng.integers(0, 2**63))]
    value = extremes[int(rng.integers(len(extremes)))]
    if field in (2, 5):  # u32 fields
        value &= 0xFFFFFFFF
    fields[field] = value
    head = head_struct.pack(*fields)
    data[: head_struct.size] = head
    struct.pack_into("<I", data, head_struct.size, zlib.crc32(head))
    return bytes(data)


def _crafted_section(data: bytearray, rng: np.random.Generator) -> bytes:
    """Bad values in one data section (NaN/negative scales, NaN float16, offsets out of order,
    random codes or ids), with the data checksum fixed so only value checks can catch them."""
    path = Path(tempfile.mkstemp(suffix=".frt")[1])
    try:
        path.write_bytes(bytes(data))
        header = index_file.read_header(path)
    except ValueError:
        return bytes(data)
    finally:
        path.unlink()
    sections = {name: (dtype, shape, offset) for name, dtype, shape, offset in header.sections}
    name = str(rng.choice(sorted(sections)))
    dtype, shape, offset = sections[name]
    array = np.frombuffer(bytes(data), dtype=dtype, count=int(np.prod(shape)), offset=offset).copy()
    if len(array) == 0:
        return bytes(data)
    position = int(rng.integers(len(array)))
    if name in ("scales", "float16"):
        choices = [np.nan, np.inf, -1.0, 0.0, 1e30 if name == "scales" else 6e4]
        array[position] = choices[int(rng.integers(len(choices)))]
    elif name == "doc_offsets":
        choices = [0, 10**12, int(array[-1]) + 1, 2**64 - 1]
        array[position] = np.uint64(choices[int(rng.integers(len(choices)))])
    else:
        array[position] = rng.integers(np.iinfo(dtype).min, np.iinfo(dtype).max, dtype=dtype, endpoint=True)
    data[offset : offset + array.nbytes] = array.tobytes()
    crc = 0
    for _, section_dtype, section_shape, section_offset in header.sections:
        size = int(np.prod(section_shape)) * np.dtype(section_dtype).itemsize
        crc = zlib.crc32(bytes(data[section_offset : section_offset + size]), crc)
    version = struct.unpack_from("<I", data, 8)[0]
    struct.pack_into("<I", data, (HEAD_V2 if version == 2 else HEAD_V1).size + 4, crc)
    return bytes(data)


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def fuzz(cases: int, seed: int, workdir: Path, case_timeout: float = 10.0) -> Counter:
    """Run `cases` mutations; returns counts of outcomes. Raises FuzzFailure on a broken contract."""
    rng = np.random.default_rng(seed)
    files = base_files(workdir, seed)
    expected = {path: outcome(path, queries, True, True) for path, queries in files}
    counts: Counter = Counter()
    target = workdir / "mutated.frt"
    use_alarm = hasattr(signal, "setitimer")
    if use_alarm:
        previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        for case in range(cases):
            path, queries = files[int(rng.integers(len(files)))]
            mutated, kind = mutate(path.read_bytes(), rng)
            target.write_bytes(mutated)
            if use_alarm:
                signal.setitimer(signal.ITIMER_REAL, case_timeout)
            try:
                mmap = bool(case % 2)
                checked = outcome(target, queries, True, mmap)
                unchecked = outcome(target, queries, False, mmap)
            except _Timeout:
                raise FuzzFailure(f"case {case} (seed {seed}, {kind} mutation of {path.name}) ran over "
                                  f"{case_timeout} s: a hang") from None
            except Exception as error:  # noqa: BLE001 - the contract is about exactly this
                raise FuzzFailure(f"case {case} (seed {seed}, {kind} mutation of {path.name}): undocumented "
                                  f"{type(error).__name__}: {error}") from error
            finally:
                if use_alarm:
                    signal.setitimer(signal.ITIMER_REAL, 0)
            if kind == "plain" and checked[0] == "ok" and checked != expected[path]:
                raise FuzzFailure(f"case {case} (seed {seed}, plain mutation of {path.name}): verify=True "
                                  "loaded the file and gave different results")
            counts[f"{kind} verify=True {checked[0] if checked[0] == 'ok' else checked[1]}"] += 1
            counts[f"{kind} verify=False {unchecked[0]}"] += 1
    finally:
        if use_alarm:
            signal.signal(signal.SIGALRM, previous)
    return counts


if __name__ == "__main__":
    sys.exit(run_fuzz(__doc__, fuzz, cases=100_000, case_timeout=10.0))
