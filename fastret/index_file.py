"""The on-disk format of a fastret index, written atomically and read with or without mmap.

Layout (little-endian):

    header, 64 bytes
      magic      8s   b"FRTINDEX"
      version    u32  1
      flags      u32  bit 0: float16 copies present
      dim        u64
      count      u64
      dtype      u32  1 = int8 codes with float32 scales
      header_crc u32  CRC-32 of the 36 bytes above
      data_crc   u32  CRC-32 of every section, in order
      (zeros up to 64 bytes)
    sections, each starting at a multiple of 64 bytes:
      codes    int8    [count, dim]
      scales   float32 [count]
      ids      int64   [count]
      float16  float16 [count, dim]   (only with flag bit 0)

A file is written to a temporary name in the same directory, synced, and renamed over the target
(fastret.atomic), so a crash never leaves a half-written index under the real name.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import atomic_write

MAGIC = b"FRTINDEX"
VERSION = 1
DTYPE_INT8 = 1
FLAG_FLOAT16 = 1
HEADER_SIZE = 64
_HEAD = struct.Struct("<8sIIQQI")  # magic, version, flags, dim, count, dtype: 36 bytes
_CRCS = struct.Struct("<II")
_ALIGN = 64
_CRC_CHUNK = 1 << 24


class IndexFileError(ValueError):
    """The file is not a fastret index, or is truncated or corrupted."""


@dataclass
class IndexArrays:
    codes: np.ndarray
    scales: np.ndarray
    ids: np.ndarray
    float16: np.ndarray | None


def _sections(dim: int, count: int, has_float16: bool):
    """(name, dtype, shape, offset) of each section, and the total file size."""
    layout = [("codes", np.int8, (count, dim)), ("scales", np.float32, (count,)), ("ids", np.int64, (count,))]
    if has_float16:
        layout.append(("float16", np.float16, (count, dim)))
    offset, placed = HEADER_SIZE, []
    for name, dtype, shape in layout:
        offset = -(-offset // _ALIGN) * _ALIGN
        placed.append((name, dtype, shape, offset))
        offset += int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    return placed, offset


def _crc(array: np.ndarray, crc: int) -> int:
    flat = array.reshape(-1).view(np.uint8)
    for start in range(0, len(flat), _CRC_CHUNK):
        crc = zlib.crc32(flat[start : start + _CRC_CHUNK], crc)
    return crc


def write(path: str | os.PathLike, arrays: IndexArrays) -> None:
    """Write `arrays` to `path` atomically (temporary file in the same directory, then rename)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; pass a file path such as {path / 'index.frt'}")
    count, dim = arrays.codes.shape
    placed, _ = _sections(dim, count, arrays.float16 is not None)
    with atomic_write(path) as f:
        f.write(b"\0" * HEADER_SIZE)
        data_crc = 0
        for name, dtype, shape, offset in placed:
            array = np.ascontiguousarray(getattr(arrays, name), dtype=dtype).reshape(shape)
            f.write(b"\0" * (offset - f.tell()))
            data_crc = _crc(array, data_crc)
            f.write(memoryview(array.reshape(-1).view(np.uint8)))
        flags = FLAG_FLOAT16 if arrays.float16 is not None else 0
        head = _HEAD.pack(MAGIC, VERSION, flags, dim, count, DTYPE_INT8)
        f.seek(0)
        f.write(head + _CRCS.pack(zlib.crc32(head), data_crc))


@dataclass
class Header:
    dim: int
    count: int
    has_float16: bool
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
    head = header[: _HEAD.size]
    _, version, flags, dim, count, dtype = _HEAD.unpack(head)
    header_crc, data_crc = _CRCS.unpack(header[_HEAD.size : _HEAD.size + _CRCS.size])
    if zlib.crc32(head) != header_crc:
        raise IndexFileError(f"{path}: the header is corrupted (checksum mismatch)")
    if version != VERSION:
        raise IndexFileError(f"{path}: index format version {version}; this fastret reads version {VERSION}")
    if dtype != DTYPE_INT8 or flags & ~FLAG_FLOAT16 or dim == 0:
        raise IndexFileError(f"{path}: unsupported index contents (dtype {dtype}, flags {flags}, dim {dim})")
    has_float16 = bool(flags & FLAG_FLOAT16)
    placed, expected = _sections(dim, count, has_float16)
    if size != expected:
        raise IndexFileError(
            f"{path} is {size} bytes but an index of {count} x {dim} needs {expected}: truncated or corrupted"
        )
    return Header(dim, count, has_float16, data_crc, placed)


def read(path: str | os.PathLike, mmap: bool = True, verify: bool = True) -> IndexArrays:
    """Read an index file; with `mmap` the arrays map the file (read-only) instead of loading it.

    Raises:
        FileNotFoundError: no such file.
        IndexFileError (a ValueError): not a fastret index, an unsupported version, truncated, or
            (with `verify`) a checksum mismatch.
    """
    path = Path(path)
    header = read_header(path)
    placed, count, data_crc = header.sections, header.count, header.data_crc
    arrays = {}
    for name, dtype_, shape, offset in placed:
        if mmap and count > 0:
            arrays[name] = np.memmap(path, dtype=dtype_, mode="r", offset=offset, shape=shape)
        else:
            n_items = int(np.prod(shape, dtype=np.int64))
            arrays[name] = np.fromfile(path, dtype=dtype_, count=n_items, offset=offset).reshape(shape)
    if verify:
        crc = 0
        for name, *_ in placed:
            crc = _crc(np.asarray(arrays[name]), crc)
        if crc != data_crc:
            raise IndexFileError(f"{path}: the data is corrupted (checksum mismatch); rebuild or restore the index")
    scales = np.asarray(arrays["scales"])
    if not (np.isfinite(scales) & (scales >= 0)).all():
        raise IndexFileError(f"{path}: scales are negative, NaN or inf: the file is corrupted")
    return IndexArrays(arrays["codes"], arrays["scales"], arrays["ids"], arrays.get("float16"))
