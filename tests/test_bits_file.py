import numpy as np
import pytest

import fastret
from fastret.storage import bits_file, index_file, sign_bits, store
from fastret.storage.bits_file import read_bits, write_bits
from fastret.storage.index_file import IndexFileError
from fastret.storage.store import StoreError

from conftest import make_store, sidecar, unit_rows


def saved_index(path, rng, n=300, dim=70):
    """An index of n random vectors saved to `path`; returns the in-memory index."""
    index = fastret.Index(dim)
    index.add(unit_rows(rng, n, dim))
    index.save(path)
    return index


def make_bits_store(directory, rng):
    """A store of 3 shards (50, 70 and 30 rows of 40 dimensions), with their bits."""
    return make_store(directory, rng, sizes=(50, 70, 30), dim=40)


def binary_search(index, queries, k=5):
    return index.search(queries, k, first_stage="binary", oversample=2)


def test_saved_bits_are_the_codes_signs_mapped_and_search_as_in_memory(rng, tmp_path):
    index = saved_index(tmp_path / "i.frt", rng)
    loaded = fastret.Index.load(tmp_path / "i.frt")
    (segment,) = loaded.segments
    assert isinstance(segment.bits, np.memmap)
    np.testing.assert_array_equal(segment.bits, sign_bits.sign_bits(np.asarray(segment.codes)))
    queries = unit_rows(rng, 4, 70)
    for got, want in zip(binary_search(loaded, queries), binary_search(index, queries)):
        np.testing.assert_array_equal(got, want)
    in_ram = fastret.Index.load(tmp_path / "i.frt", mmap=False).segments[0].bits
    assert not isinstance(in_ram, np.memmap)
    np.testing.assert_array_equal(in_ram, segment.bits)


def test_bits_are_kept_by_add_delete_merge_and_save(rng, tmp_path):
    index = fastret.Index(70)
    for n in (3, 100, 1, 250):  # the in-memory segment grows several times
        index.add(unit_rows(rng, n, 70))
    (segment,) = index.segments
    np.testing.assert_array_equal(segment.bits, sign_bits.sign_bits(segment.codes))
    index.delete([0, 5, 200])
    index.merge()
    (merged,) = index.segments
    assert len(merged) == 351
    np.testing.assert_array_equal(merged.bits, sign_bits.sign_bits(merged.codes))

    directory = tmp_path / "s"
    make_bits_store(directory, rng)
    loaded = fastret.Index.load(directory)
    before = {p.name: p.read_bytes() for p in directory.glob("*.bits")}
    assert sorted(before) == [sidecar(directory / f"shard-0000{n}.frt").name for n in range(3)]
    loaded.delete([1, 60])
    loaded.save(directory)  # deletions only: the shards and their bits stay as they are
    assert {p.name: p.read_bytes() for p in directory.glob("*.bits")} == before
    loaded.merge(max_rows=50)  # shards 0 and 2
    loaded.save(directory)
    assert sorted(p.name for p in directory.glob("*.bits")) == [sidecar(directory / f"shard-0000{n}.frt").name
                                                                for n in (1, 3)]
    for segment in fastret.Index.load(directory).segments:
        np.testing.assert_array_equal(segment.bits, sign_bits.sign_bits(np.asarray(segment.codes)))


def test_a_store_without_bits_names_fastret_index_binary_until_they_are_made(rng, tmp_path):
    directory = tmp_path / "s"
    vectors = make_bits_store(directory, rng)
    sidecar(directory / "shard-00001.frt").unlink()  # as a store written before bits were kept
    index = fastret.Index.load(directory)
    exact = index.search(vectors[:3], 5)  # int8 search needs no bits
    with pytest.raises(ValueError, match=r"shard-00001.frt has no sign bits .*run `fastret index --binary`"):
        binary_search(index, vectors[:3])
    assert store.write_missing_bits(directory) == [directory / "shard-00001.frt"]
    assert store.write_missing_bits(directory) == []  # nothing left to do
    found = binary_search(fastret.Index.load(directory), vectors[:3])
    np.testing.assert_array_equal(found[1][:, 0], exact[1][:, 0])  # each query's own vector first


def test_corrupted_and_truncated_bits_files_are_refused_by_name_and_stale_ones_ignored(rng, tmp_path):
    directory = tmp_path / "s"
    make_bits_store(directory, rng)
    first, second = sidecar(directory / "shard-00000.frt"), sidecar(directory / "shard-00001.frt")
    good = second.read_bytes()

    def damaged(data: bytes, message: str):
        second.write_bytes(data)
        with pytest.raises(StoreError, match=message):
            fastret.Index.load(directory)

    flipped = bytearray(good)
    flipped[-1] ^= 1
    damaged(bytes(flipped), r"shard-00001.frt.[0-9a-f]{8}.bits: the bits are corrupted .checksum mismatch.; remove it, or run "
                            r"`fastret index --binary`")
    head = bytearray(good)
    head[20] ^= 1
    damaged(bytes(head), r"shard-00001.frt.[0-9a-f]{8}.bits: the header is corrupted")
    damaged(good[:-8], r"shard-00001.frt.[0-9a-f]{8}.bits is \d+ bytes but the bits of 70 x 40 need \d+: truncated")
    damaged(b"not bits" * 10, r"shard-00001.frt.[0-9a-f]{8}.bits is not a fastret bits file")
    second.write_bytes(first.read_bytes())  # stale (another segment's): the store loads without those bits
    index = fastret.Index.load(directory)
    assert index.segments[1].bits is None
    with pytest.raises(ValueError, match=r"shard-00001.frt has no sign bits .* that matches it"):
        binary_search(index, unit_rows(rng, 2, 40))
    # without verify only the header and size are checked: a flipped data bit loads (and never crashes)
    second.write_bytes(bytes(flipped))
    index = fastret.Index.load(directory, verify=False)
    assert binary_search(index, unit_rows(rng, 2, 40))[1].shape == (2, 5)
    # `fastret index --binary` makes a damaged file again
    assert store.write_missing_bits(directory) == [directory / "shard-00001.frt"]
    assert second.read_bytes() == good


def test_a_failed_bits_write_keeps_the_old_file_and_leaves_no_temporary(rng, tmp_path, monkeypatch):
    saved_index(tmp_path / "i.frt", rng)
    target = sidecar(tmp_path / "i.frt")
    before = target.read_bytes()
    header = index_file.read_header(tmp_path / "i.frt")

    def broken_sign_bits(codes):
        raise OSError("disk full")

    monkeypatch.setattr(bits_file, "sign_bits", broken_sign_bits)
    with pytest.raises(OSError, match="disk full"):
        write_bits(target, header, index_file.read(tmp_path / "i.frt").codes)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".i.frt.lock", "i.frt", target.name]


def test_bits_of_another_shape_are_refused(rng, tmp_path):
    saved_index(tmp_path / "i.frt", rng, n=10, dim=70)
    header = index_file.read_header(tmp_path / "i.frt")
    with pytest.raises(IndexFileError, match=r"holds 10 x 70 vectors; codes of shape \(10, 69\)"):
        write_bits(tmp_path / "b.bits", header, np.zeros((10, 69), np.int8))
    with pytest.raises(IndexFileError, match=r"the bits of 10 x 70 vectors have shape \(2, 2, 8\), not \(10, 2\)"):
        write_bits(tmp_path / "b.bits", header, np.zeros((10, 70), np.int8), np.zeros((10, 2), np.uint64))


def test_an_empty_index_file_has_empty_bits(tmp_path):
    fastret.Index(8).save(tmp_path / "e.frt")
    header = index_file.read_header(tmp_path / "e.frt")
    assert read_bits(sidecar(tmp_path / "e.frt"), header).shape == (0, 1, 8)
