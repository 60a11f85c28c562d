import struct
import zlib

import numpy as np
import pytest

import fastret
from fastret.storage import index_file

from conftest import unit_rows


@pytest.fixture
def saved(rng, tmp_path):
    index = fastret.Index(16, store_float16=True)
    index.add(unit_rows(rng, 40, 16))
    path = tmp_path / "index.frt"
    index.save(path)
    return path


def test_layout_is_aligned_and_sized(saved):
    data = saved.read_bytes()
    assert data[:8] == b"FRTINDEX"
    placed, size = index_file._sections(16, 40, True)
    assert len(data) == size
    assert all(offset % 64 == 0 for *_, offset in placed)


def test_truncated_file(saved):
    saved.write_bytes(saved.read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        fastret.Index.load(saved)


def test_file_with_trailing_bytes(saved):
    saved.write_bytes(saved.read_bytes() + b"\0")
    with pytest.raises(ValueError, match="truncated or corrupted"):
        fastret.Index.load(saved)


@pytest.mark.parametrize("mmap", [True, False])
def test_corrupted_data(saved, mmap):
    data = bytearray(saved.read_bytes())
    data[64 + 5] ^= 0x01
    saved.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="data is corrupted"):
        fastret.Index.load(saved, mmap=mmap)


def test_corrupted_data_loads_unverified_when_asked(saved):
    data = bytearray(saved.read_bytes())
    data[64 + 5] ^= 0x01
    saved.write_bytes(bytes(data))
    assert len(fastret.Index.load(saved, verify=False)) == 40


def test_corrupted_header(saved):
    data = bytearray(saved.read_bytes())
    data[20] ^= 0x01  # inside dim
    saved.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="header is corrupted"):
        fastret.Index.load(saved)


@pytest.mark.parametrize("content", [b"", b"hello world" * 20, bytes(range(256)) * 4])
def test_foreign_file(tmp_path, content):
    path = tmp_path / "foreign.bin"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="not a fastret index file"):
        fastret.Index.load(path)


def test_newer_version(saved):
    data = bytearray(saved.read_bytes())
    head = bytearray(data[:44])
    struct.pack_into("<I", head, 8, 99)
    data[:44] = head
    struct.pack_into("<I", data, 44, zlib.crc32(bytes(head)))
    saved.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="version 99; this fastret reads versions 1, 2"):
        fastret.Index.load(saved)


def test_corrupted_scales_with_a_matching_checksum(rng, tmp_path):
    codes, scales = fastret.quantize_int8(unit_rows(rng, 4, 8))
    scales[2] = np.nan
    arrays = index_file.IndexArrays(codes, scales, np.arange(4, dtype=np.int64), None)
    index_file.write(tmp_path / "bad.frt", arrays)
    with pytest.raises(ValueError, match="scales are negative, NaN or inf"):
        fastret.Index.load(tmp_path / "bad.frt")


def test_missing_file_and_directory_target(tmp_path):
    with pytest.raises(FileNotFoundError):
        fastret.Index.load(tmp_path / "nope.frt")
    with pytest.raises(IsADirectoryError, match="pass a file path"):
        index_file.write(tmp_path, index_file.IndexArrays(np.zeros((1, 4), np.int8), np.ones(1, np.float32),
                                                          np.zeros(1, np.int64), None))


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(saved, rng, monkeypatch):
    before = saved.read_bytes()
    bigger = fastret.Index(16)
    bigger.add(unit_rows(rng, 100, 16))

    def broken_checksum(array, crc):
        raise OSError("disk full")

    monkeypatch.setattr(index_file, "checksum", broken_checksum)
    with pytest.raises(OSError, match="disk full"):
        bigger.save(saved)
    assert saved.read_bytes() == before
    bits = f"{saved.name}.{index_file.read_header(saved).data_crc:08x}.bits"
    assert sorted(p.name for p in saved.parent.iterdir()) == [f".{saved.name}.lock", saved.name, bits]


def test_header_sizes_that_would_wrap_int64_are_refused(rng, tmp_path):
    # Regression: a dim x count that wraps int64 passed the size check and numpy then failed with
    # OverflowError. 63 x 737869762948382080 wraps to exactly the size of this 40 x 16 file.
    index = fastret.Index(16)
    index.add(unit_rows(rng, 40, 16))
    path = tmp_path / "wrap.frt"
    index.save(path)
    data = bytearray(path.read_bytes())
    assert len(data) == 1216
    for dim, count in ((63, 737869762948382080), (2**16, 2**48 + 1), (1, 2**63 + 1)):
        head = bytearray(data[:44])
        struct.pack_into("<QQ", head, 16, dim, count)
        data[:44] = head
        struct.pack_into("<I", data, 44, zlib.crc32(bytes(head)))
        path.write_bytes(bytes(data))
        with pytest.raises(index_file.IndexFileError, match="unsupported index contents"):
            fastret.Index.load(path)


def test_nan_float16_copies_with_a_matching_checksum_are_refused(rng, tmp_path):
    # Regression: the loader accepted NaN/inf float16 sections whose checksum was valid.
    codes, scales = fastret.quantize_int8(unit_rows(rng, 4, 8))
    float16 = unit_rows(rng, 4, 8).astype(np.float16)
    float16[1, 2] = np.inf
    index_file.write(tmp_path / "bad.frt", index_file.IndexArrays(codes, scales, np.arange(4, dtype=np.int64), float16))
    with pytest.raises(ValueError, match="float16 copies hold NaN or inf"):
        fastret.Index.load(tmp_path / "bad.frt")
    unverified = fastret.Index.load(tmp_path / "bad.frt", verify=False)  # trusted: caught when rescoring reads it
    with pytest.raises(ValueError, match="float16 copies of some candidates hold NaN or inf"):
        unverified.search(unit_rows(rng, 1, 8), 2, rescore=True, rescore_factor=2)


def test_reserved_header_bytes_must_be_zero(saved):
    data = bytearray(saved.read_bytes())
    data[60] = 1
    saved.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="reserved bytes are not zero"):
        fastret.Index.load(saved)


def test_loader_survives_mutations(tmp_path):
    """A short run of benchmarks/fuzz_index_file.py (the long one runs 100,000 cases)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from fuzz_index_file import fuzz

    counts = fuzz(2000, seed=11, workdir=tmp_path)
    assert sum(counts.values()) == 4000
    assert counts["plain verify=True IndexFileError"] > 1000  # the checksums catch what matters
