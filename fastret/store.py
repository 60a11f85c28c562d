"""The on-disk store: a directory of index segments that `Encoder.encode_corpus` writes, that
`Index.load` maps in place and that `Index.save(directory)` updates.

    out_dir/
      manifest.json             settings, and the finished shards in order (no timestamps, so two
                                runs over the same corpus write identical bytes)
      shard-00000.frt           a fastret index file (index_file.py): int8 codes, scales, global row
                                numbers as ids, document ids, optional float16 copies
      shard-00000.frt.bits      the shard's sign bits, for the binary first stage (fastret.bits_file)
      shard-00000.frt.deleted   optional: the shard's deleted rows (index_file.write_deleted)
      shard-00000.frt.fields.arrow  optional: the shard's stored fields (fastret.fields), mapped

Shard k of an encoded corpus holds documents [k * shard_size, (k + 1) * shard_size). Each file is
written to a temporary name and renamed; a shard is finished exactly when its .frt file exists, so
an interrupted run resumes by skipping finished shards. The manifest is written last and is the
commit point of `save_segments`. Version-1 stores (document ids in shard-*.ids.json) are read too.

This module knows the JSON; the index knows only the `Segment`s handed to it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import atomic, binary, index_file
from .bits_file import bits_path, read_bits, write_bits
from .doc_ids import LazyDocIds, PackedDocIds, pack_doc_ids
from .fields import fields_path, read_fields, write_fields
from .segment import Segment, bitmap

MANIFEST = "manifest.json"
FORMAT = "fastret-store"
VERSION = 2
READABLE_VERSIONS = (1, 2)
_SHARD_FILE = re.compile(r"shard-(\d+)\.frt")


class StoreError(ValueError):
    """A store directory that is missing, incomplete, inconsistent, or made with other settings."""


def shard_name(number: int) -> str:
    return f"shard-{number:05d}"


def write_shard(directory: Path, number: int, doc_ids: list[str], first_row: int, codes: np.ndarray,
                scales: np.ndarray, float16: np.ndarray | None) -> None:
    """Write shard `number` (one index file; its existence marks the shard finished), then its
    sign bits (a run killed in between makes them when it resumes: `write_missing_bits`)."""
    rows = np.arange(first_row, first_row + len(codes), dtype=np.int64)
    offsets, blob = pack_doc_ids(doc_ids)
    write_segment_file(directory / f"{shard_name(number)}.frt",
                       index_file.IndexArrays(codes, scales, rows, float16, offsets, blob))


def write_segment_file(path: Path, arrays: index_file.IndexArrays, bits: np.ndarray | None = None) -> None:
    """Write one index file and then its sign bits beside it (fastret.bits_file), each atomically.

    Args:
        path: the index file.
        arrays: what it holds.
        bits: the rows' sign bits when already made (blocked, fastret.binary); else made from the codes.
    """
    index_file.write(path, arrays)
    write_bits(path, arrays.codes, bits)


def write_missing_bits(path: str | os.PathLike, show_progress_bar: bool = False) -> list[Path]:
    """Make the sign bits of a store's shards, or of one index file, where they are missing or do
    not match (`fastret index --binary`); returns the segment files whose bits were written.

    Args:
        path: a store directory (its finished shards) or an index file.
        show_progress_bar: a tqdm bar over the segment files.

    Raises:
        FileNotFoundError: no such file or directory.
        StoreError, IndexFileError (ValueErrors): not a store or index file, or a corrupted one.
    """
    path = Path(path)
    if path.is_dir():
        read_manifest(path)
        files = [path / f"{shard_name(number)}.frt" for number in finished_shards(path)]
    else:
        files = [path]
    from tqdm.auto import tqdm

    written = []
    for file in tqdm(files, unit="segment", desc="sign bits", disable=not show_progress_bar):
        header = index_file.read_header(file)
        try:
            if read_bits(file, header, verify=True) is not None:
                continue
        except index_file.IndexFileError:
            pass  # a stale or damaged bits file: made again below
        write_bits(file, index_file.read(file, mmap=True, verify=False).codes)
        written.append(file)
    return written


def finished_shards(directory: Path) -> list[int]:
    """Numbers of the shards whose index file exists, ascending."""
    return sorted(int(match.group(1)) for p in Path(directory).iterdir()
                  if (match := _SHARD_FILE.fullmatch(p.name)))


def write_manifest(directory: Path, settings: dict, complete: bool, shards: list[int] | None = None) -> dict:
    """Record `settings` and the shards (default: every finished one, with their sizes)."""
    entries = []
    for number in finished_shards(directory) if shards is None else shards:
        header = index_file.read_header(directory / f"{shard_name(number)}.frt")
        entries.append({"name": shard_name(number), "count": header.count})
    manifest = {**settings, "format": FORMAT, "version": VERSION, "complete": complete,
                "count": sum(s["count"] for s in entries), "shards": entries}
    if (directory / MANIFEST).exists() and "lexical" not in manifest:  # keep the current lexical index
        lexical = read_manifest(directory).get("lexical")
        if lexical and (directory / lexical).is_dir():
            manifest["lexical"] = lexical
    atomic.write_bytes(directory / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return manifest


def read_manifest(directory: str | os.PathLike) -> dict:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise StoreError(f"{directory} is not a fastret store (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise StoreError(f"{path}: not valid JSON ({error.msg})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise StoreError(f"{path} is not a fastret store manifest")
    if manifest.get("version") not in READABLE_VERSIONS:
        raise StoreError(f"{path}: store version {manifest.get('version')}; this fastret reads "
                         f"{', '.join(map(str, READABLE_VERSIONS))}")
    return manifest


def set_lexical(directory: str | os.PathLike, name: str) -> None:
    """Name the store's current lexical index folder in its manifest (atomically)."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    manifest["lexical"] = name
    atomic.write_bytes(directory / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())


def settings_of(manifest: dict) -> dict:
    """The manifest's settings (what encoded the store), without the bookkeeping keys."""
    return {key: value for key, value in manifest.items()
            if key not in ("format", "version", "complete", "count", "shards")}


@dataclass
class Store:
    """A finished store: its directory and manifest."""

    directory: Path
    manifest: dict

    @classmethod
    def open(cls, directory: str | os.PathLike) -> "Store":
        """Open a finished store; StoreError if it is incomplete or not a store."""
        directory = Path(directory)
        manifest = read_manifest(directory)
        if not manifest.get("complete"):
            raise StoreError(f"{directory}: the store is incomplete ({manifest.get('count')} documents in "
                             f"{len(manifest.get('shards', []))} shards so far); rerun the encode command to finish it")
        return cls(directory, manifest)

    def __len__(self) -> int:
        return int(self.manifest["count"])

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def shard_count(self) -> int:
        """How many shards (segments) the store holds."""
        return len(self.manifest["shards"])

    def segments(self, mmap: bool = True, verify: bool = True) -> list[Segment]:
        """Every shard as a `Segment` (memory-mapped with `mmap`), with its deleted rows.

        Raises:
            StoreError: a shard that is missing, corrupted, of another dimension or size than the
                manifest says, or a deletion file that does not match its shard (the error names
                the file).
        """
        segments = []
        for entry in self.manifest["shards"]:
            path = self.directory / f"{entry['name']}.frt"
            try:
                arrays = index_file.read(path, mmap=mmap, verify=verify)
                header = index_file.read_header(path)
                deleted_rows = index_file.read_deleted(path, header)
                fields = read_fields(path, mmap=mmap)
                bits = read_bits(path, header, mmap=mmap, verify=verify)
            except FileNotFoundError:
                raise StoreError(f"{path}: shard listed in {MANIFEST} is missing; restore it or re-encode") from None
            except index_file.IndexFileError as error:
                raise StoreError(str(error)) from None
            if header.dim != self.dim or header.count != entry["count"]:
                raise StoreError(f"{path}: {header.count} x {header.dim} vectors, but {MANIFEST} says "
                                 f"{entry['count']} x {self.dim}")
            segments.append(_segment(path, arrays, deleted_rows, self._json_doc_ids(entry), fields, bits))
        return segments

    def _json_doc_ids(self, entry: dict) -> LazyDocIds | None:
        """A version-1 shard's document ids (shard-*.ids.json), read on first use."""
        path = self.directory / f"{entry['name']}.ids.json"
        if not path.is_file():
            return None
        return LazyDocIds(entry["count"], lambda: json.loads(path.read_text()), str(path))

    def doc_ids(self) -> list[str]:
        """Every document id in row order (row i of the loaded index is document doc_ids()[i])."""
        ids: list[str] = []
        for segment in self.segments(verify=False):
            ids.extend(segment.documents(np.arange(len(segment))))
        return ids


def _segment(path: Path, arrays: index_file.IndexArrays, deleted_rows: np.ndarray,
             fallback_doc_ids: LazyDocIds | None, fields, bits: np.ndarray | None) -> Segment:
    doc_ids = fallback_doc_ids
    if arrays.doc_offsets is not None:
        doc_ids = PackedDocIds(arrays.doc_offsets, arrays.doc_blob, str(path))
    deleted = None
    if len(deleted_rows):
        mask = np.zeros(len(arrays.codes), bool)
        mask[deleted_rows] = True
        deleted = bitmap(mask)
    status = path.stat()
    return Segment(arrays.codes, arrays.scales, arrays.ids, arrays.float16, doc_ids, path, deleted,
                   len(deleted_rows), fields=fields, bits=bits, mapped_file=(status.st_dev, status.st_ino))


def open_segment_file(path: str | os.PathLike, mmap: bool = True, verify: bool = True) -> Segment:
    """One index file (and its deletion, fields and bits files, if any) as a `Segment`."""
    path = Path(path)
    arrays = index_file.read(path, mmap=mmap, verify=verify)
    header = index_file.read_header(path)
    deleted_rows = index_file.read_deleted(path, header)
    return _segment(path, arrays, deleted_rows, None, read_fields(path, mmap=mmap),
                    read_bits(path, header, mmap=mmap, verify=verify))


def save_segments(directory: str | os.PathLike, segments: list[Segment], dim: int, float16: bool) -> list[Segment]:
    """Make `directory` a store holding `segments`; returns them as they now are on disk.

    Segments already mapped from this directory stay where they are (only their deletion files
    are written); the others are written as new shards without their deleted rows. The manifest
    is replaced last (the commit point); shards it no longer lists are removed after that.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    previous = read_manifest(directory) if (directory / MANIFEST).exists() else {}
    if previous and int(previous.get("dim", dim)) != dim:
        raise StoreError(f"{directory} holds a store of dimension {previous['dim']}; this index has {dim}")
    existing = finished_shards(directory)
    next_number = (max(existing) + 1) if existing else 0
    numbers, saved = [], []
    for segment in segments:
        path = segment.path
        if path is not None and path.parent.resolve() == directory.resolve() and _SHARD_FILE.fullmatch(path.name):
            index_file.write_deleted(path, np.flatnonzero(segment.deleted_mask()))
            numbers.append(int(_SHARD_FILE.fullmatch(path.name).group(1)))
            saved.append(segment)
            continue
        if segment.live_count == 0:
            continue
        path = directory / f"{shard_name(next_number)}.frt"
        live = segment.live_rows()
        doc_ids = segment.doc_ids.subset(live) if segment.doc_ids is not None else None
        write_segment_file(path, index_file.IndexArrays(
            segment.codes[live], segment.scales[live], segment.ids[live],
            None if segment.float16 is None or not float16 else segment.float16[live],
            None if doc_ids is None else doc_ids.offsets, None if doc_ids is None else doc_ids.blob),
            None if segment.bits is None else binary.blocked(binary.bit_rows(segment.bits, live)))
        write_fields(path, None if segment.fields is None else segment.fields.take(live))
        numbers.append(next_number)
        saved.append(open_segment_file(path, verify=False))
        next_number += 1
    settings = {**settings_of(previous), "dim": dim, "float16": float16}
    write_manifest(directory, settings, complete=True, shards=numbers)
    for number in set(existing) - set(numbers):
        shard = directory / f"{shard_name(number)}.frt"
        shard.unlink(missing_ok=True)
        index_file.deleted_path(shard).unlink(missing_ok=True)
        fields_path(shard).unlink(missing_ok=True)
        bits_path(shard).unlink(missing_ok=True)
        (directory / f"{shard_name(number)}.ids.json").unlink(missing_ok=True)
    return saved
