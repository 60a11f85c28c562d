"""A segment file and its sidecars, named, written, opened and removed in one place.

    index.frt                       the segment (fastret.storage.index_file): codes, scales, ids, float16
                                    copies, document ids
    index.frt.<crc>.bits            its sign bits, for the binary first stage (fastret.storage.bits_file)
    index.frt.<crc>.fields.arrow    its stored fields (fastret.storage.fields)
    index.frt.<crc>.fields.index    their field indexes: postings and sorted values, which filters
                                    read instead of the columns (fastret.storage.field_index)
    shard-00000.frt.g<N>.deleted    a store shard's deleted rows as of store generation N; the
                                    store's manifest names the current one (fastret.storage.store)

<crc> is the segment's data checksum (8 hex digits, from its header): a sidecar is named after the
version of the segment it belongs to. A save (`write_segment`) writes the new version's sidecars
under names that no reader of the old version opens, then renames the new segment file over the old
one, which is the one commit point, and only then removes the old version's sidecars. Killed at any
moment, or stopped by any OSError, it leaves the old version or the new one, each whole; what a
kill leaves over is removed by the next save and by `fastret clean` (`stale_sidecars`).

Deletion files change while their segment does not, so they carry the generation of the store that
wrote them, and the store's manifest, replaced in one rename, says which one is current.

Older fastret versions named sidecars `<file>.bits`, `<file>.fields.arrow` and `<file>.deleted`;
those are read too, when no sidecar named by checksum is there. An old-named bits or fields file
made for another version of its segment is a leftover and is ignored.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from . import index_file
from .atomic import atomic_write, remove_paths, remove_stale_temporaries
from .bits_file import read_bits, write_bits
from .doc_ids import PackedDocIds
from .field_index import read_field_index, write_field_index
from .fields import StaleFieldsError, StoredFields, read_fields, write_fields
from .segment import Segment, bitmap

BITS = "bits"
FIELDS = "fields.arrow"
FIELD_INDEX = "fields.index"
DELETED = "deleted"
_SIDECAR = re.compile(r"\.(?:(?P<crc>[0-9a-f]{8})\.(?P<keyed>bits|fields\.arrow|fields\.index)"
                      r"|(?P<legacy>bits|fields\.arrow|deleted)|g(?P<generation>\d+)\.deleted)")


def sidecar_path(path: str | os.PathLike, header: index_file.Header, kind: str) -> Path:
    """Where the `kind` (BITS, FIELDS or FIELD_INDEX) sidecar of this version (`header`) of the segment file `path` goes."""
    path = Path(path)
    return path.with_name(f"{path.name}.{header.data_crc:08x}.{kind}")


def deleted_path(path: str | os.PathLike, generation: int) -> Path:
    """The deletion file of the store shard `path` written at store generation `generation`."""
    path = Path(path)
    return path.with_name(f"{path.name}.g{generation}.{DELETED}")


def legacy_deleted_path(path: str | os.PathLike) -> Path:
    """`<file>.deleted`: the deletion file as earlier fastret versions named it."""
    path = Path(path)
    return path.with_name(f"{path.name}.{DELETED}")


def find_sidecar(path: str | os.PathLike, header: index_file.Header, kind: str) -> tuple[Path, bool] | None:
    """(the `kind` sidecar of this version of `path`, whether it has the old name), or None."""
    named = sidecar_path(path, header, kind)
    if named.is_file():
        return named, False
    legacy = Path(path).with_name(f"{Path(path).name}.{kind}")
    return (legacy, True) if legacy.is_file() else None


def sidecars(path: str | os.PathLike, names: Sequence[str] | None = None) -> dict[Path, re.Match]:
    """Every sidecar file beside the segment file `path` (of any version), with how its name parsed.

    Args:
        path: the segment file.
        names: the entries of its folder when already listed (a store's many shards list it once).
    """
    path = Path(path)
    if names is None:
        if not path.parent.is_dir():
            return {}
        names = os.listdir(path.parent)
    prefix = path.name + "."
    return {path.parent / name: match for name in names
            if name.startswith(prefix) and (match := _SIDECAR.fullmatch(name[len(path.name):]))}


def write_segment(path: str | os.PathLike, arrays: index_file.IndexArrays, bits: np.ndarray | None = None,
                  fields: StoredFields | None = None) -> index_file.Header:
    """Write a segment file and its sidecars (sign bits; stored fields and their indexes if any), committed together
    by the segment file's rename; then remove the sidecars of the version it replaced.

    Args:
        path: the segment file.
        arrays: what it holds.
        bits: its rows' sign bits when already made (blocked, fastret.storage.sign_bits); else made from the codes.
        fields: its stored fields, one row per vector, or None.

    Returns:
        The header written.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; pass a file path such as {path / 'index.frt'}")
    remove_stale_temporaries(path, with_sidecars=True)  # what killed saves of it left
    with atomic_write(path) as f:
        header = index_file.write_to(f, arrays)
        write_bits(sidecar_path(path, header, BITS), header, arrays.codes, bits)
        if fields is not None and fields.table is not None:
            write_fields(sidecar_path(path, header, FIELDS), header, fields)
        else:  # same checksum as the version replaced (the same vectors): its fields must not stay
            sidecar_path(path, header, FIELDS).unlink(missing_ok=True)
        _write_field_index(path, header, fields)
    remove_paths(stale_sidecars(path, header, after_save=True))
    return header


def add_bits(path: str | os.PathLike) -> bool:
    """Write the sign bits of the segment file `path` (made from its mapped codes) where they are
    missing, damaged or stale; True when they were written."""
    path = Path(path)
    header = index_file.read_header(path)
    if _has_sound_sidecar(path, header, BITS, read_bits):
        return False
    write_bits(sidecar_path(path, header, BITS), header, index_file.read(path, mmap=True, verify=False).codes)
    return True


def add_fields(path: str | os.PathLike, fields: StoredFields) -> None:
    """Write the stored fields of the segment file `path` (already written) beside it, and their indexes."""
    path = Path(path)
    header = index_file.read_header(path)
    write_fields(sidecar_path(path, header, FIELDS), header, fields)
    _write_field_index(path, header, fields)


def _write_field_index(path: Path, header: index_file.Header, fields: StoredFields | None) -> None:
    """Write the field index of `fields` beside this version of `path`; where there is none to write
    (no fields, or no indexable column), remove one of the same name (the version replaced had the
    same checksum: its index must not stay)."""
    target = sidecar_path(path, header, FIELD_INDEX)
    if fields is None or fields.table is None or not write_field_index(target, header, fields):
        target.unlink(missing_ok=True)


def add_field_index(path: str | os.PathLike) -> bool:
    """Write the field indexes of the segment file `path` from its stored fields where they are
    missing, damaged or stale (fields written before fastret kept them); True when written."""
    path = Path(path)
    header = index_file.read_header(path)
    found_fields = find_sidecar(path, header, FIELDS)
    if found_fields is None or _has_sound_sidecar(path, header, FIELD_INDEX, read_field_index):
        return False
    fields = read_fields(found_fields[0], path, header, mmap=True, verify=True)
    return write_field_index(sidecar_path(path, header, FIELD_INDEX), header, fields)


def _has_sound_sidecar(path: Path, header: index_file.Header, kind: str, read) -> bool:
    """True when this version of `path` has a `kind` sidecar that `read` (verifying) accepts: not
    missing, stale (None) or damaged (IndexFileError), which a writer then makes again."""
    found = find_sidecar(path, header, kind)
    if found is None:
        return False
    try:
        return read(found[0], header, verify=True) is not None
    except index_file.IndexFileError:
        return False


def has_sidecar(path: str | os.PathLike, kind: str) -> bool:
    """True when this version of the segment file `path` has a `kind` sidecar (any name)."""
    return find_sidecar(path, index_file.read_header(path), kind) is not None


def open_segment(path: str | os.PathLike, mmap: bool = True, verify: bool = True, deleted: Path | None = None,
                 fallback_doc_ids=None) -> Segment:
    """A segment file (and its sidecars) as a `Segment`.

    Args:
        path: the segment file.
        mmap: map the arrays instead of reading them.
        verify: check every checksum (see fastret.storage.index_file, fastret.storage.fields).
        deleted: its deletion file, or None for no deleted rows.
        fallback_doc_ids: document ids from elsewhere (a version-1 store) when the file has none.

    Raises:
        FileNotFoundError: no such segment or deletion file.
        IndexFileError: a damaged or foreign file, naming it.
    """
    path = Path(path)
    arrays = index_file.read(path, mmap=mmap, verify=verify)
    header = index_file.read_header(path)
    deleted_rows = np.empty(0, np.int64) if deleted is None else index_file.read_deleted(deleted, path, header)
    fields = None
    if (found := find_sidecar(path, header, FIELDS)) is not None:
        try:
            fields = read_fields(found[0], path, header, mmap=mmap, verify=verify)
        except StaleFieldsError:
            if not found[1]:
                raise
            # an old-named fields file of the version this save replaced: a leftover, not this version's
    field_index = None
    if fields is not None and (found := find_sidecar(path, header, FIELD_INDEX)) is not None:
        field_index = read_field_index(found[0], header, mmap=mmap, verify=verify)
    bits = None
    if (found := find_sidecar(path, header, BITS)) is not None:
        bits = read_bits(found[0], header, mmap=mmap, verify=verify)
    doc_ids = fallback_doc_ids
    if arrays.doc_offsets is not None:
        doc_ids = PackedDocIds(arrays.doc_offsets, arrays.doc_blob, str(path))
    mask = None
    if len(deleted_rows):
        rows = np.zeros(len(arrays.codes), bool)
        rows[deleted_rows] = True
        mask = bitmap(rows)
    status = path.stat()
    return Segment(arrays.codes, arrays.scales, arrays.ids, arrays.float16, doc_ids, path, mask,
                   len(deleted_rows), fields=fields, field_index=field_index, bits=bits, mapped_file=(status.st_dev, status.st_ino),
                   deleted_file=deleted)


def stale_sidecars(path: str | os.PathLike, header: index_file.Header | None, keep_deleted: set[str] | None = None,
                   after_save: bool = False, names: Sequence[str] | None = None) -> list[Path]:
    """Sidecars beside the segment file `path` that its current version (`header`) does not use.

    Args:
        path: the segment file.
        header: its header; None when the segment file is gone (then every sidecar is stale).
        keep_deleted: names of deletion files still in use (a store's manifest names them); None
            leaves deletion files alone (outside a store nothing decides which is current).
        after_save: also the old-named bits and fields files (`write_segment` just wrote new ones).
        names: the entries of its folder when already listed (`sidecars`).
    """
    stale = []
    named = None if header is None else f"{header.data_crc:08x}"
    found = sidecars(path, names)
    current = {kind for match in found.values() if (kind := match.group("keyed")) and match.group("crc") == named}
    for sidecar, match in found.items():
        if header is None:
            stale.append(sidecar)
        elif match.group("keyed"):
            if match.group("crc") != named:
                stale.append(sidecar)
        elif match.group("legacy") in (BITS, FIELDS):
            if after_save or match.group("legacy") in current:
                stale.append(sidecar)
        elif keep_deleted is not None and sidecar.name not in keep_deleted:
            stale.append(sidecar)
    return sorted(stale)


def stale_in(directory: str | os.PathLike) -> list[Path]:
    """Sidecars in `directory` (outside a store) that no segment file there uses: those of other
    versions of their segment, and every sidecar whose segment file is gone."""
    directory = Path(directory)
    segments = set()
    for entry in os.scandir(directory):
        match = re.fullmatch(r"(?P<segment>.+?)" + _SIDECAR.pattern, entry.name)
        if match and entry.is_file():
            segments.add(directory / match.group("segment"))
    stale = []
    for path in sorted(segments):
        header = segment_header(path)
        if header is not None or not path.exists():  # a damaged segment file keeps its sidecars
            stale += stale_sidecars(path, header)
    return stale


def remove_segment(path: str | os.PathLike) -> None:
    """Remove a segment file and every sidecar of it."""
    path = Path(path)
    remove_paths(sidecars(path))
    path.unlink(missing_ok=True)


def segment_header(path: str | os.PathLike) -> index_file.Header | None:
    """The header of the segment file `path`, or None when it is missing or unreadable."""
    try:
        return index_file.read_header(path)
    except (OSError, index_file.IndexFileError):
        return None

