"""The on-disk format of a fastret index segment, written atomically and read with or without mmap.

Layout (little-endian), version 2:

    header, 64 bytes
      magic      8s   b"FRTINDEX"
      version    u32  2 (version 1 files, without document ids, are read too)
      flags      u32  bit 0: float16 copies present; bit 1: document ids present
      dim        u64  1 ..= 65536
      count      u64
      dtype      u32  1 = int8 codes with float32 scales
      doc_bytes  u64  length of the document-id blob (0 without document ids; absent in version 1)
      header_crc u32  CRC-32 of the bytes above
      data_crc   u32  CRC-32 of every section, in order
      (zeros up to 64 bytes)
    sections, each starting at a multiple of 64 bytes:
      codes        int8    [count, dim]
      scales       float32 [count]
      ids          int64   [count]
      float16      float16 [count, dim]   (flag bit 0)
      doc_offsets  uint64  [count + 1]    (flag bit 1; see fastret.storage.doc_ids)
      doc_blob     uint8   [doc_bytes]    (flag bit 1)

Beside a segment file, a deletion file may list its deleted rows (see `write_deleted`;
fastret.storage.segment_files names it).

A file is written to a temporary name in the same directory, synced, and renamed over the target
(fastret.storage.atomic), so a crash never leaves a half-written index under the real name
(fastret.storage.segment_files commits a segment file and its sidecars with that one rename).

What `verify=True` checks: the data checksum, and then that scales are finite and >= 0, float16
copies finite and document-id offsets in order. `verify=False` checks the header and the file size
only and trusts the data: a corrupted data section then loads and can change results silently
(never crash: the search core ranks NaN scores last and document ids are checked when decoded).
Use it for files this program wrote and nothing else touched, where reading every byte at each
load costs too much.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .atomic import atomic_write

MAGIC = b"FRTINDEX"
VERSION = 2
READABLE_VERSIONS = (1, 2)
DTYPE_INT8 = 1
FLAG_FLOAT16 = 1
FLAG_DOC_IDS = 2
HEADER_SIZE = 64
MAX_DIM = 65536
MAX_COUNT = 1 << 40
_HEADS = {1: struct.Struct("<8sIIQQI"), 2: struct.Struct("<8sIIQQIQ")}
_CRCS = struct.Struct("<II")
_ALIGN = 64
_CRC_CHUNK = 1 << 24

DELETED_MAGIC = b"FRTDELET"
DELETED_VERSION = 1
_DELETED_HEAD = struct.Struct("<8sIIQQ")  # magic, version, segment data_crc, segment count, rows


class IndexFileError(ValueError):
    """The file is not a fastret index, or is truncated or corrupted."""


@dataclass
class IndexArrays:
    codes: np.ndarray
    scales: np.ndarray
    ids: np.ndarray
    float16: np.ndarray | None
    doc_offsets: np.ndarray | None = None  # uint64 [count + 1]
    doc_blob: np.ndarray | None = None  # uint8 [doc_bytes]


def _sections(dim: int, count: int, has_float16: bool, doc_bytes: int | None = None):
    """(name, dtype, shape, offset) of each section, and the total file size (Python ints: no wrap)."""
    layout = [("codes", np.int8, (count, dim)), ("scales", np.float32, (count,)), ("ids", np.int64, (count,))]
    if has_float16:
        layout.append(("float16", np.float16, (count, dim)))
    if doc_bytes is not None:
        layout += [("doc_offsets", np.uint64, (count + 1,)), ("doc_blob", np.uint8, (doc_bytes,))]
    offset, placed = HEADER_SIZE, []
    for name, dtype, shape in layout:
        offset = -(-offset // _ALIGN) * _ALIGN
        placed.append((name, dtype, shape, offset))
        items = 1
        for extent in shape:
            items *= int(extent)
        offset += items * np.dtype(dtype).itemsize
    return placed, offset


def checksum(array: np.ndarray, crc: int = 0) -> int:
    """CRC-32 of an array's bytes (in chunks: mapped arrays are not read whole), continuing `crc`."""
    flat = array.reshape(-1).view(np.uint8)
    for start in range(0, len(flat), _CRC_CHUNK):
        crc = zlib.crc32(flat[start : start + _CRC_CHUNK], crc)
    return crc


def write(path: str | os.PathLike, arrays: IndexArrays) -> "Header":
    """Write `arrays` to `path` atomically (temporary file in the same directory, then rename);
    returns the header written."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; pass a file path such as {path / 'index.frt'}")
    with atomic_write(path) as f:
        return write_to(f, arrays)


def write_to(f: BinaryIO, arrays: IndexArrays) -> "Header":
    """Write `arrays` as an index file into the open, empty, seekable file `f`; returns its header."""
    count, dim = arrays.codes.shape
    has_doc_ids = arrays.doc_offsets is not None
    doc_bytes = len(arrays.doc_blob) if has_doc_ids else None
    placed, _ = _sections(dim, count, arrays.float16 is not None, doc_bytes)
    f.write(b"\0" * HEADER_SIZE)
    data_crc = 0
    for name, dtype, shape, offset in placed:
        array = np.ascontiguousarray(getattr(arrays, name), dtype=dtype).reshape(shape)
        f.write(b"\0" * (offset - f.tell()))
        data_crc = checksum(array, data_crc)
        f.write(memoryview(array.reshape(-1).view(np.uint8)))
    flags = (FLAG_FLOAT16 if arrays.float16 is not None else 0) | (FLAG_DOC_IDS if has_doc_ids else 0)
    head = _HEADS[VERSION].pack(MAGIC, VERSION, flags, dim, count, DTYPE_INT8, doc_bytes or 0)
    f.seek(0)
    f.write(head + _CRCS.pack(zlib.crc32(head), data_crc))
    f.seek(0, os.SEEK_END)
    return Header(dim, count, arrays.float16 is not None, has_doc_ids, data_crc, placed)


@dataclass
class Header:
    dim: int
    count: int
    has_float16: bool
    has_doc_ids: bool
    data_crc: int
    sections: list  # (name, dtype, shape, offset) per section


def read_header(path: str | os.PathLike) -> Header:
    """Read and check the header and the file size (cheap: no data is read).

    Raises:
        FileNotFoundError: no such file.
        IndexFileError (a ValueError): not a fastret index, an unsupported version, a corrupted
            header, or a size that does not match the header (truncated or extended file).
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        header = f.read(HEADER_SIZE)
    if len(header) < HEADER_SIZE or not header.startswith(MAGIC):
        raise IndexFileError(f"{path} is not a fastret index file (no {MAGIC.decode()} header)")
    (version,) = struct.unpack_from("<I", header, len(MAGIC))
    if version not in READABLE_VERSIONS:
        raise IndexFileError(f"{path}: index format version {version}; this fastret reads versions "
                             f"{', '.join(map(str, READABLE_VERSIONS))}")
    head_struct = _HEADS[version]
    head = header[: head_struct.size]
    _, _, flags, dim, count, dtype, *rest = head_struct.unpack(head)
    header_crc, data_crc = _CRCS.unpack_from(header, head_struct.size)
    if zlib.crc32(head) != header_crc:
        raise IndexFileError(f"{path}: the header is corrupted (checksum mismatch)")
    if any(header[head_struct.size + _CRCS.size :]):
        raise IndexFileError(f"{path}: the header is corrupted (reserved bytes are not zero)")
    known_flags = FLAG_FLOAT16 | (FLAG_DOC_IDS if version >= 2 else 0)
    doc_bytes = rest[0] if rest else 0
    has_doc_ids = bool(flags & FLAG_DOC_IDS)
    if (dtype != DTYPE_INT8 or flags & ~known_flags or not 1 <= dim <= MAX_DIM or count > MAX_COUNT
            or (doc_bytes and not has_doc_ids)):
        raise IndexFileError(f"{path}: unsupported index contents (dtype {dtype}, flags {flags}, dim {dim}, "
                             f"count {count}, document-id bytes {doc_bytes})")
    placed, expected = _sections(dim, count, bool(flags & FLAG_FLOAT16), doc_bytes if has_doc_ids else None)
    if size != expected:
        raise IndexFileError(
            f"{path} is {size} bytes but an index of {count} x {dim} needs {expected}: truncated or corrupted"
        )
    return Header(dim, count, bool(flags & FLAG_FLOAT16), has_doc_ids, data_crc, placed)


def read(path: str | os.PathLike, mmap: bool = True, verify: bool = True) -> IndexArrays:
    """Read an index file; with `mmap` the arrays map the file (read-only) instead of loading it.

    Raises:
        FileNotFoundError: no such file.
        IndexFileError (a ValueError): not a fastret index, an unsupported version, truncated, or
            (with `verify`) a checksum mismatch or invalid values (see the module docstring).
    """
    path = Path(path)
    header = read_header(path)
    arrays = {}
    for name, dtype, shape, offset in header.sections:
        if mmap and all(shape):
            arrays[name] = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
        else:
            n_items = int(np.prod(shape, dtype=np.int64))
            arrays[name] = np.fromfile(path, dtype=dtype, count=n_items, offset=offset).reshape(shape)
    if verify:
        _verify(path, header, arrays)
    return IndexArrays(arrays["codes"], arrays["scales"], arrays["ids"], arrays.get("float16"),
                       arrays.get("doc_offsets"), arrays.get("doc_blob"))


def section_offset(header: Header, name: str) -> int:
    """Where section `name` ("codes", "scales", ...) of an index file starts, in bytes."""
    return next(offset for section, _, _, offset in header.sections if section == name)


def _verify(path: Path, header: Header, arrays: dict) -> None:
    crc = 0
    for name, *_ in header.sections:
        crc = checksum(np.asarray(arrays[name]), crc)
    if crc != header.data_crc:
        raise IndexFileError(f"{path}: the data is corrupted (checksum mismatch); rebuild or restore the index")
    scales = np.asarray(arrays["scales"])
    if not (np.isfinite(scales) & (scales >= 0)).all():
        raise IndexFileError(f"{path}: scales are negative, NaN or inf: the file is corrupted")
    if header.has_float16:
        float16 = arrays["float16"].reshape(-1)
        for start in range(0, len(float16), _CRC_CHUNK):
            if not np.isfinite(float16[start : start + _CRC_CHUNK]).all():
                raise IndexFileError(f"{path}: float16 copies hold NaN or inf: the file is corrupted")
    if header.has_doc_ids:
        offsets = np.asarray(arrays["doc_offsets"])
        if offsets[0] != 0 or offsets[-1] != len(arrays["doc_blob"]) or (np.diff(offsets.astype(np.int64)) < 0).any():
            raise IndexFileError(f"{path}: document id offsets are out of order: the file is corrupted")


def write_deleted(target: str | os.PathLike, header: Header, rows: np.ndarray) -> None:
    """Record the deleted `rows` (ascending; may be none) of the segment whose header is `header`
    in the deletion file `target`, atomically.

    The deletion file names its segment's data checksum and size, so it cannot be applied to
    another segment by mistake.
    """
    rows = np.ascontiguousarray(rows, dtype=np.uint64)
    head = _DELETED_HEAD.pack(DELETED_MAGIC, DELETED_VERSION, header.data_crc, header.count, len(rows))
    with atomic_write(target) as f:
        f.write(head + struct.pack("<I", zlib.crc32(rows.view(np.uint8), zlib.crc32(head))))
        f.write(b"\0" * (HEADER_SIZE - f.tell()))
        f.write(memoryview(rows.view(np.uint8)))


def read_deleted(target: str | os.PathLike, segment_path: str | os.PathLike, header: Header) -> np.ndarray:
    """The deleted rows (int64, ascending) in the deletion file `target` of the segment file
    `segment_path` (whose header is `header`).

    Raises:
        FileNotFoundError: no such deletion file.
        IndexFileError: a deletion file that is corrupted or belongs to another segment.
    """
    path = Path(target)
    data = path.read_bytes()
    if len(data) < HEADER_SIZE or not data.startswith(DELETED_MAGIC):
        raise IndexFileError(f"{path} is not a fastret deletion file")
    magic, version, segment_crc, segment_count, n_rows = _DELETED_HEAD.unpack_from(data)
    (crc,) = struct.unpack_from("<I", data, _DELETED_HEAD.size)
    if version != DELETED_VERSION:
        raise IndexFileError(f"{path}: deletion file version {version}; this fastret reads {DELETED_VERSION}")
    if len(data) != HEADER_SIZE + 8 * n_rows:
        raise IndexFileError(f"{path}: truncated or corrupted ({len(data)} bytes for {n_rows} rows)")
    rows = np.frombuffer(data, np.uint64, offset=HEADER_SIZE)
    if zlib.crc32(rows.view(np.uint8), zlib.crc32(data[: _DELETED_HEAD.size])) != crc:
        raise IndexFileError(f"{path}: the deletion file is corrupted (checksum mismatch)")
    if segment_crc != header.data_crc or segment_count != header.count:
        raise IndexFileError(f"{path} belongs to another version of {Path(segment_path).name} "
                             "(its checksum or size differs); remove the deletion file or restore the segment")
    if n_rows and (rows[-1] >= segment_count or (np.diff(rows.astype(np.int64)) <= 0).any()):
        raise IndexFileError(f"{path}: rows out of order or past the segment's {segment_count}: corrupted")
    return rows.astype(np.int64)
