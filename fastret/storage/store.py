"""The on-disk store: a directory of index segments that `Encoder.encode_corpus` writes, that
`Index.load` maps in place and that `Index.save(directory)` updates.

    out_dir/
      manifest.json             settings, the store's generation, and the finished shards in order
                                with their deletion files (no timestamps, so two runs over the same
                                corpus write identical bytes)
      shard-00000.frt           a fastret index file (index_file.py): int8 codes, scales, global row
                                numbers as ids, document ids, optional float16 copies
      shard-00000.frt.<crc>.bits          the shard's sign bits (fastret.storage.bits_file)
      shard-00000.frt.<crc>.fields.arrow  optional: its stored fields (fastret.storage.fields), mapped
      shard-00000.frt.g<N>.deleted        optional: its deleted rows as of generation N
      lexical-<hex>/            optional: the BM25 index the manifest names (fastret.search.lexical)
      .fastret-lock             the writers' lock (fastret.storage.writer_lock); readers never take it

fastret.storage.segment_files names a shard's sidecars and writes a shard with them. Shard k of an encoded
corpus holds documents [k * shard_size, (k + 1) * shard_size). Each file is written to a temporary
name and renamed; while a store is encoded, a shard is finished exactly when its .frt file exists,
so an interrupted run resumes by skipping finished shards.

The manifest is the commit point of every change to a finished store (`save_segments`, a new
lexical index): a change writes what is new under names that no reader of the current manifest
opens (new shard numbers, deletion files of the next generation, a new lexical folder), replaces the
manifest in one rename, and only then removes what the new manifest no longer names. Killed at any
moment, or stopped by any OSError, the store is the old version or the new one, whole; `fastret
clean` removes what a kill left over (`leftovers`). Each commit raises the manifest's `generation`,
by which `Index.save` sees that another writer changed the store since it was loaded. Version-1
stores (document ids in shard-*.ids.json) and version-2 stores (sidecars named `<shard>.frt.bits`,
`.fields.arrow`, `.deleted`) are read too; a save writes version 3.

This module knows the JSON; the index knows only the `Segment`s handed to it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import atomic, index_file, segment_files, sign_bits
from .doc_ids import LazyDocIds, pack_doc_ids
from .segment import Segment
from .writer_lock import writer_lock

MANIFEST = "manifest.json"
FORMAT = "fastret-store"
VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
LEXICAL_PREFIX = "lexical-"
_SHARD_FILE = re.compile(r"shard-(\d+)\.frt")
_SHARD_NAME = re.compile(r"shard-\d{5,}")
_LEXICAL_NAME = re.compile(re.escape(LEXICAL_PREFIX) + r"[0-9a-f]+")
_BOOKKEEPING = ("format", "version", "generation", "complete", "count", "shards")


class StoreError(ValueError):
    """A store directory that is missing, incomplete, inconsistent, or made with other settings."""


def shard_name(number: int) -> str:
    return f"shard-{number:05d}"


def write_shard(directory: Path, number: int, doc_ids: list[str], first_row: int, codes: np.ndarray,
                scales: np.ndarray, float16: np.ndarray | None) -> None:
    """Write shard `number` with its sign bits (one rename commits both: fastret.storage.segment_files); its
    existence marks the shard finished while the store is encoded."""
    rows = np.arange(first_row, first_row + len(codes), dtype=np.int64)
    offsets, blob = pack_doc_ids(doc_ids)
    segment_files.write_segment(directory / f"{shard_name(number)}.frt",
                                index_file.IndexArrays(codes, scales, rows, float16, offsets, blob))


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
    return _write_missing(path, segment_files.add_bits, "sign bits", show_progress_bar)


def write_missing_field_indexes(path: str | os.PathLike, show_progress_bar: bool = False) -> list[Path]:
    """Make the field indexes of a store's shards, or of one index file, where they have stored
    fields but no sound, current field index: fields written before fastret kept them
    (`fastret index --field-indexes`); returns the segment files whose indexes were written.
    Arguments and errors as `write_missing_bits`."""
    return _write_missing(path, segment_files.add_field_index, "field indexes", show_progress_bar)


def _write_missing(path: str | os.PathLike, add, what: str, show_progress_bar: bool) -> list[Path]:
    """`add(file)` for each segment file of a store or the one index file `path`, under the writer lock."""
    path = Path(path)
    if path.is_dir():
        read_manifest(path)
        files = [path / f"{shard_name(number)}.frt" for number in finished_shards(path)]
    else:
        index_file.read_header(path)
        files = [path]
    from tqdm.auto import tqdm

    with writer_lock(path):
        return [file for file in tqdm(files, unit="segment", desc=what, disable=not show_progress_bar) if add(file)]


def finished_shards(directory: Path) -> list[int]:
    """Numbers of the shards whose index file exists, ascending."""
    return sorted(int(match.group(1)) for p in Path(directory).iterdir()
                  if (match := _SHARD_FILE.fullmatch(p.name)))


def write_manifest(directory: Path, settings: dict, complete: bool, shards: list[int] | None = None) -> dict:
    """Record `settings` and the shards (default: every finished one, with their sizes), keeping
    the current generation, lexical index and deletion files (what `encode_corpus` writes)."""
    previous = read_manifest(directory) if (directory / MANIFEST).exists() else {}
    deleted = {entry["name"]: entry["deleted"] for entry in previous.get("shards", []) if "deleted" in entry}
    entries = []
    for number in finished_shards(directory) if shards is None else shards:
        header = index_file.read_header(directory / f"{shard_name(number)}.frt")
        entry = {"name": shard_name(number), "count": header.count}
        if shard_name(number) in deleted:
            entry["deleted"] = deleted[shard_name(number)]
        entries.append(entry)
    return _commit(directory, {**settings, "complete": complete, "shards": entries},
                   previous.get("generation", 0), previous)


def _commit(directory: Path, manifest: dict, generation: int, previous: dict) -> dict:
    """Replace the manifest (the commit point) with `manifest` at `generation`, keeping the
    previous manifest's lexical index unless `manifest` names one."""
    manifest = {**manifest, "format": FORMAT, "version": VERSION, "generation": generation,
                "count": sum(entry["count"] for entry in manifest["shards"])}
    if "lexical" not in manifest and previous.get("lexical") and (directory / previous["lexical"]).is_dir():
        manifest["lexical"] = previous["lexical"]
    atomic.write_bytes(directory / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return manifest


def read_manifest(directory: str | os.PathLike) -> dict:
    """The manifest of a store directory, checked.

    Raises:
        StoreError: no manifest, or one that is not valid UTF-8 JSON, is of another version, or
            holds a field of the wrong type or value (a shard named twice, or outside the store),
            naming the file and the field.
    """
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise StoreError(f"{directory} is not a fastret store (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as error:
        raise StoreError(f"{path}: not UTF-8 text (byte {error.start}); the manifest is damaged: restore it "
                         "from a backup or re-encode the store") from None
    except (json.JSONDecodeError, RecursionError) as error:
        raise StoreError(f"{path}: not valid JSON ({getattr(error, 'msg', 'nested too deeply')}); the manifest is "
                         "damaged: restore it from a backup or re-encode the store") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise StoreError(f"{path} is not a fastret store manifest")
    if manifest.get("version") not in READABLE_VERSIONS:
        raise StoreError(f"{path}: store version {manifest.get('version')!r:.40}; this fastret reads "
                         f"{', '.join(map(str, READABLE_VERSIONS))}")
    _check_manifest(path, manifest)
    return manifest


def _check_manifest(path: Path, manifest: dict) -> None:
    """StoreError naming the first field of `manifest` of the wrong type or value."""

    def check(ok: bool, field: str, expected: str, value) -> None:
        if not ok:
            raise StoreError(f"{path}: {field} must be {expected}, got {json.dumps(value)[:60]}; the manifest "
                             "is damaged: restore it from a backup or re-encode the store")

    def whole(value, low: int = 0, high: int | None = None) -> bool:
        return (isinstance(value, int) and not isinstance(value, bool) and value >= low
                and (high is None or value <= high))

    check(isinstance(manifest.get("complete"), bool), '"complete"', "true or false", manifest.get("complete"))
    check(whole(manifest.get("dim"), 1, index_file.MAX_DIM), '"dim"', f"an int in [1, {index_file.MAX_DIM}]",
          manifest.get("dim"))
    check(isinstance(manifest.get("float16"), bool), '"float16"', "true or false", manifest.get("float16"))
    if manifest["version"] >= 3 or "generation" in manifest:
        check(whole(manifest.get("generation")), '"generation"', "an int >= 0", manifest.get("generation"))
    check(whole(manifest.get("count")), '"count"', "an int >= 0", manifest.get("count"))
    if "lexical" in manifest:
        lexical = manifest["lexical"]
        check(isinstance(lexical, str) and bool(_LEXICAL_NAME.fullmatch(lexical)), '"lexical"',
              f'a folder name "{LEXICAL_PREFIX}<hex>" inside the store', lexical)
    shards = manifest.get("shards")
    check(isinstance(shards, list), '"shards"', "a list", shards)
    names = set()
    for position, entry in enumerate(shards):
        where = f'"shards"[{position}]'
        check(isinstance(entry, dict) and set(entry) <= {"name", "count", "deleted"}, where,
              'an object {"name", "count"[, "deleted"]}', entry)
        name = entry.get("name")
        check(isinstance(name, str) and bool(_SHARD_NAME.fullmatch(name)), where + '["name"]',
              'a shard name "shard-NNNNN" inside the store', name)
        check(name not in names, where + '["name"]', "a shard not listed before", name)
        names.add(name)
        check(whole(entry.get("count")), where + '["count"]', "an int >= 0", entry.get("count"))
        if "deleted" in entry:
            deleted = entry["deleted"]
            check(isinstance(deleted, str) and bool(re.fullmatch(re.escape(name) + r"\.frt\.g\d+\.deleted", deleted)),
                  where + '["deleted"]', f'a deletion file "{name}.frt.gN.deleted"', deleted)
    total = sum(entry["count"] for entry in shards)
    check(manifest["count"] == total, '"count"', f"the sum of the shards' counts ({total})", manifest["count"])


def generation(directory: str | os.PathLike) -> int | None:
    """The generation of the store in `directory` (None when it has no manifest)."""
    if not (Path(directory) / MANIFEST).exists():
        return None
    return int(read_manifest(directory).get("generation", 0))


def set_lexical(directory: str | os.PathLike, name: str) -> None:
    """Name the store's current lexical index folder in its manifest (a commit: the generation rises)."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    _commit(directory, {**manifest, "lexical": name}, manifest.get("generation", 0) + 1, manifest)


def settings_of(manifest: dict) -> dict:
    """The manifest's settings (what encoded the store), without the bookkeeping keys."""
    return {key: value for key, value in manifest.items() if key not in _BOOKKEEPING}


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

    @property
    def generation(self) -> int:
        """How many commits the store has seen since it was encoded (fastret.storage.store)."""
        return int(self.manifest.get("generation", 0))

    def deletion_file(self, entry: dict) -> Path | None:
        """The current deletion file of the shard of manifest `entry`, or None (no deleted rows)."""
        if self.manifest["version"] >= 3:
            return self.directory / entry["deleted"] if "deleted" in entry else None
        legacy = segment_files.legacy_deleted_path(self.directory / f"{entry['name']}.frt")
        return legacy if legacy.exists() else None

    def segments(self, mmap: bool = True, verify: bool = True) -> list[Segment]:
        """Every shard as a `Segment` (memory-mapped with `mmap`), with its deleted rows.

        Raises:
            StoreError: a shard that is missing, corrupted, of another dimension or size than the
                manifest says, or a sidecar that is damaged or does not match its shard (the error
                names the file). `ShardMissingError` (a StoreError) for a missing file: `open`
                again, since a writer may have committed and removed it meanwhile.
        """
        segments = []
        for entry in self.manifest["shards"]:
            path = self.directory / f"{entry['name']}.frt"
            try:
                segment = segment_files.open_segment(path, mmap=mmap, verify=verify, deleted=self.deletion_file(entry),
                                                     fallback_doc_ids=self._json_doc_ids(entry))
            except FileNotFoundError as error:
                raise ShardMissingError(f"{error.filename or path}: listed in {self.directory / MANIFEST} but missing; "
                                        "restore it or re-encode") from None
            except index_file.IndexFileError as error:
                raise StoreError(str(error)) from None
            if segment.codes.shape[1] != self.dim or len(segment) != entry["count"]:
                raise StoreError(f"{path}: {len(segment)} x {segment.codes.shape[1]} vectors, but {MANIFEST} says "
                                 f"{entry['count']} x {self.dim}")
            segments.append(segment)
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


class ShardMissingError(StoreError):
    """A file the manifest names is not there (removed by a writer's commit, or lost)."""


def open_segments(directory: str | os.PathLike, mmap: bool = True, verify: bool = True,
                  attempts: int = 3) -> tuple[Store, list[Segment]]:
    """Open a finished store and its segments, without a lock: a writer that commits meanwhile
    may remove files the manifest read first named, and then the new manifest is read again."""
    for _ in range(attempts - 1):
        opened = Store.open(directory)
        try:
            return opened, opened.segments(mmap=mmap, verify=verify)
        except ShardMissingError:
            if generation(directory) == opened.generation:
                raise
    opened = Store.open(directory)
    return opened, opened.segments(mmap=mmap, verify=verify)


def open_segment_file(path: str | os.PathLike, mmap: bool = True, verify: bool = True) -> Segment:
    """One index file (and its sidecars) as a `Segment`; a store's shard opened alone gets the
    deletion file its store's manifest names."""
    path = Path(path)
    deleted = segment_files.legacy_deleted_path(path)
    deleted = deleted if deleted.exists() else None
    match = _SHARD_FILE.fullmatch(path.name)
    if match and (path.parent / MANIFEST).is_file():
        opened = Store(path.parent, read_manifest(path.parent))
        entry = next((e for e in opened.manifest["shards"] if e["name"] == path.name[: -len(".frt")]), None)
        if entry is not None:
            deleted = opened.deletion_file(entry)
    return segment_files.open_segment(path, mmap=mmap, verify=verify, deleted=deleted)


def save_segments(directory: str | os.PathLike, segments: list[Segment], dim: int, float16: bool) -> list[Segment]:
    """Make `directory` a store holding `segments`, in one commit; returns them as they now are on disk.

    Segments already mapped from this directory stay where they are (a new deletion file is
    written for those whose deleted rows changed); the others are written as new shards without
    their deleted rows. Then the manifest is replaced (the commit point), and then the files it
    no longer names are removed (see the module docstring).

    Raises:
        StoreError: `directory` holds a store of another dimension, or a damaged manifest.
        OSError: a failed write (a full disk, say), naming the file; the store is then as it was.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    previous = read_manifest(directory) if (directory / MANIFEST).exists() else {}
    if previous and int(previous.get("dim", dim)) != dim:
        raise StoreError(f"{directory} holds a store of dimension {previous['dim']}; this index has {dim}")
    commit = previous.get("generation", 0) + 1
    existing = finished_shards(directory)
    next_number = (max(existing) + 1) if existing else 0
    entries, saved = [], []
    for segment in segments:
        path = segment.path
        if path is not None and path.parent.resolve() == directory.resolve() and _SHARD_FILE.fullmatch(path.name):
            deleted = segment.deleted_file  # the file its deleted rows were read from, while they are unchanged
            if segment.deleted_count == 0:
                deleted = None
            elif (deleted is None or deleted.parent.resolve() != directory.resolve() or not deleted.exists()
                  or not deleted.name.startswith(f"{path.name}.g")):
                deleted = segment_files.deleted_path(path, commit)
                index_file.write_deleted(deleted, index_file.read_header(path), np.flatnonzero(segment.deleted_mask()))
            entries.append({"name": path.name[: -len(".frt")], "count": len(segment),
                            **({"deleted": deleted.name} if deleted is not None else {})})
            saved.append(dataclasses.replace(segment, deleted_file=deleted))
            continue
        if segment.live_count == 0:
            continue
        path = directory / f"{shard_name(next_number)}.frt"
        live = segment.live_rows()
        doc_ids = segment.doc_ids.subset(live) if segment.doc_ids is not None else None
        segment_files.write_segment(path, index_file.IndexArrays(
            segment.codes[live], segment.scales[live], segment.ids[live],
            None if segment.float16 is None or not float16 else segment.float16[live],
            None if doc_ids is None else doc_ids.offsets, None if doc_ids is None else doc_ids.blob),
            None if segment.bits is None else sign_bits.blocked(sign_bits.bit_rows(segment.bits, live)),
            None if segment.fields is None else segment.fields.take(live))
        entries.append({"name": shard_name(next_number), "count": len(live)})
        saved.append(segment_files.open_segment(path, verify=False))
        next_number += 1
    settings = {**settings_of(previous), "dim": dim, "float16": float16}
    manifest = _commit(directory, {**settings, "complete": True, "shards": entries}, commit, previous)
    atomic.remove_paths(leftovers(directory, manifest))
    return saved


def leftovers(directory: str | os.PathLike, manifest: dict | None = None) -> list[Path]:
    """What the store in `directory` does not use: shards and sidecars its manifest does not name
    (of a save that was killed, or of the version a save replaced), and lexical folders other than
    the current one (a killed BM25 build), besides the temporaries of killed writers
    (fastret.storage.atomic). For a store still being encoded, only sidecars of other versions of its
    shards and lexical folders: its finished shards are not listed yet.

    Args:
        directory: the store.
        manifest: its manifest, when already read.
    """
    directory = Path(directory)
    manifest = read_manifest(directory) if manifest is None else manifest
    listed = {entry["name"] + ".frt": entry for entry in manifest["shards"]}
    store = Store(directory, manifest)
    names = os.listdir(directory)  # once: every shard's sidecars are picked from it
    found = []
    for number in finished_shards(directory):
        path = directory / f"{shard_name(number)}.frt"
        if manifest["complete"] and path.name not in listed:
            found += [path, *segment_files.sidecars(path, names), *directory.glob(f"{shard_name(number)}.ids.json")]
            continue
        keep = None
        if path.name in listed and manifest["version"] >= 3:
            deleted = store.deletion_file(listed[path.name])
            keep = set() if deleted is None else {deleted.name}
        found += segment_files.stale_sidecars(path, segment_files.segment_header(path), keep, names=names)
    if manifest["complete"]:  # sidecars whose shard file is gone
        for name in names:
            shard, sidecar, _ = name.partition(".frt.")
            if sidecar and _SHARD_FILE.fullmatch(shard + ".frt") and not (directory / f"{shard}.frt").exists():
                found.append(directory / name)
    found += [p for p in directory.glob(f"{LEXICAL_PREFIX}*") if p.is_dir() and p.name != manifest.get("lexical")]
    return sorted(set(found))
