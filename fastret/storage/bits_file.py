"""The sign bits of a segment file, kept beside it for the binary first stage (fastret.storage.segment_files
names the file).

A segment file's rows carry one bit per dimension, the sign of each int8 code (fastret.storage.sign_bits).
A binary search scans only these bits (an eighth of the codes), so they live in their own file,
mapped, and a mapped store searched that way keeps just the bits resident, plus the pages of the
rows it re-ranks.

Layout (little-endian):

    header, 64 bytes
      magic        8s   b"FRTBITS\\0"
      version      u32  1
      rule         u32  1 = the sign of the int8 code (bit set when code > 0)
      segment_crc  u32  the segment file's data checksum (fastret.storage.index_file)
      segment_count u64 its rows
      dim          u64  its dimension
      bits_crc     u32  CRC-32 of the bits
      header_crc   u32  CRC-32 of the bytes above
      (zeros up to 64 bytes)
    bits   uint64 [ceil(segment_count / 8), words(dim), 8]   in the kernels' blocked layout
           (fastret.storage.sign_bits): row r's word w at [r // 8, w, r % 8], bit i of word i // 64

Like the deletion file, it names its segment's checksum and size, so it is never applied to
another segment (or another version of it); unlike it, it can always be made again from the
codes (`write_bits`, `fastret index --binary`), so one that names another version is stale, not
an error: the segment loads without bits. Written to a temporary name and renamed
(fastret.storage.atomic); a segment written before this file existed has no bits file, and one written by
an older fastret may have a stale one: `read_bits` gives None for both, and a binary search says
how to make them.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np

from .atomic import atomic_write
from .index_file import Header, IndexFileError, checksum
from .sign_bits import BLOCK_ROWS, sign_bits, words

MAGIC = b"FRTBITS\0"
VERSION = 1
RULE_SIGN = 1
HEADER_SIZE = 64
_HEAD = struct.Struct("<8sIIIQQI")  # magic, version, rule, segment crc, segment count, dim, bits crc
_ROWS_PER_WRITE = 1 << 16  # a multiple of BLOCK_ROWS: each part is whole blocks


def write_bits(target: str | os.PathLike, header: Header, codes: np.ndarray, bits: np.ndarray | None = None) -> None:
    """Write the sign bits of a segment to the bits file `target`, atomically.

    Args:
        target: the bits file.
        header: the segment file's header (the bits are bound to its checksum and size).
        codes: its int8 codes [count, dim] (mapped is fine: they are read in blocks).
        bits: optional, the bits already made (blocked, `fastret.storage.sign_bits.sign_bits`), written as they are.

    Raises:
        IndexFileError: `codes` (or `bits`) of another shape than the segment file's.
    """
    shape = _shape(header)
    if codes.shape != (header.count, header.dim):
        raise IndexFileError(f"{target}: the segment holds {header.count} x {header.dim} vectors; codes of shape "
                             f"{codes.shape} cannot be its bits")
    if bits is not None and bits.shape != shape:
        raise IndexFileError(f"{target}: the bits of {header.count} x {header.dim} vectors have shape {shape}, "
                             f"not {bits.shape}")
    with atomic_write(target) as f:
        f.write(b"\0" * HEADER_SIZE)
        crc = 0
        for start in range(0, header.count, _ROWS_PER_WRITE):
            stop = min(start + _ROWS_PER_WRITE, header.count)
            if bits is None:
                block = sign_bits(codes[start:stop])
            else:
                block = np.ascontiguousarray(bits[start // BLOCK_ROWS : -(-stop // BLOCK_ROWS)], np.uint64)
            data = memoryview(block.reshape(-1).view(np.uint8))
            crc = zlib.crc32(data, crc)
            f.write(data)
        head = _HEAD.pack(MAGIC, VERSION, RULE_SIGN, header.data_crc, header.count, header.dim, crc)
        f.seek(0)
        f.write(head + struct.pack("<I", zlib.crc32(head)))


def read_bits(target: str | os.PathLike, header: Header, mmap: bool = True,
              verify: bool = True) -> np.ndarray | None:
    """The sign bits (blocked: uint64 [ceil(count / 8), words(dim), 8]) of a segment file, mapped
    with `mmap`, from the bits file `target`; None for a stale one: made for another version of
    the segment (an older fastret could leave that; the segment loads, and a binary search of it
    says to run `fastret index --binary`).

    Args:
        target: the bits file.
        header: its header (`fastret.storage.index_file.read_header`).
        mmap: map the bits (read-only) instead of reading them.
        verify: check the bits' checksum (reads them once); without it only the header and the
            size are checked.

    Raises:
        IndexFileError: a bits file that is truncated, corrupted, or of an unknown version or rule;
            the message names the file and `fastret index --binary`, which makes it again.
    """
    path = Path(target)
    remake = "remove it, or run `fastret index --binary` on the store or index file to make it again"
    with open(path, "rb") as f:
        head = f.read(HEADER_SIZE)
    if len(head) < HEADER_SIZE or not head.startswith(MAGIC):
        raise IndexFileError(f"{path} is not a fastret bits file; {remake}")
    magic, version, rule, segment_crc, segment_count, dim, bits_crc = _HEAD.unpack_from(head)
    (header_crc,) = struct.unpack_from("<I", head, _HEAD.size)
    if zlib.crc32(head[: _HEAD.size]) != header_crc or any(head[_HEAD.size + 4:]):
        raise IndexFileError(f"{path}: the header is corrupted (checksum mismatch); {remake}")
    if version != VERSION or rule != RULE_SIGN:
        raise IndexFileError(f"{path}: bits file version {version}, rule {rule}; this fastret reads version "
                             f"{VERSION}, rule {RULE_SIGN} (sign bits); {remake}")
    if segment_crc != header.data_crc or segment_count != header.count or dim != header.dim:
        return None  # stale: the segment was rewritten and the write of its bits did not follow
    shape = _shape(header)
    expected = HEADER_SIZE + shape[0] * shape[1] * shape[2] * 8
    if path.stat().st_size != expected:
        raise IndexFileError(f"{path} is {path.stat().st_size} bytes but the bits of {header.count} x "
                             f"{header.dim} need {expected}: truncated or corrupted; {remake}")
    if shape[0] == 0:
        return np.zeros(shape, np.uint64)
    if mmap:
        bits = np.memmap(path, dtype=np.uint64, mode="r", offset=HEADER_SIZE, shape=shape)
    else:
        bits = np.fromfile(path, dtype=np.uint64, count=shape[0] * shape[1] * shape[2], offset=HEADER_SIZE).reshape(shape)
    if verify:
        if checksum(bits) != bits_crc:
            raise IndexFileError(f"{path}: the bits are corrupted (checksum mismatch); {remake}")
    return bits


def _shape(header: Header) -> tuple[int, int, int]:
    """The blocked bits' shape for a segment of header.count x header.dim."""
    return (-(-header.count // BLOCK_ROWS), words(header.dim), BLOCK_ROWS)
