import json
import struct
import zlib

import numpy as np
import pytest

import fastret
from fastret.storage import index_file, store
from fastret.storage.store import Store, StoreError

from conftest import make_store, unit_rows


def test_a_store_loads_as_mapped_segments_with_document_ids(rng, tmp_path):
    vectors = make_store(tmp_path / "s", rng)
    index = fastret.Index.load(tmp_path / "s")
    assert (len(index), index.segment_count, index.has_documents) == (15, 3, True)
    whole = fastret.Index(8, store_float16=True)
    whole.add(vectors)
    for got, want in zip(index.search(vectors[:4], 15, rescore=True), whole.search(vectors[:4], 15, rescore=True)):
        np.testing.assert_array_equal(got, want)
    assert index.documents(np.array([14, 0])).tolist() == ["doc14", "doc0"]
    assert Store.open(tmp_path / "s").doc_ids() == [f"doc{i}" for i in range(15)]
    assert Store.open(tmp_path / "s").shard_count == 3


def test_deletes_persist_beside_the_shards_and_compaction_drops_them(rng, tmp_path):
    directory = tmp_path / "s"
    vectors = make_store(directory, rng)
    shard_bytes = {p.name: p.read_bytes() for p in directory.glob("*.frt")}
    index = fastret.Index.load(directory)
    assert index.delete([1, 6, 14]) == 3
    index.save(directory)
    assert {p.name: p.read_bytes() for p in directory.glob("*.frt")} == shard_bytes  # immutable
    assert sorted(p.name for p in directory.glob("*.deleted")) == [  # of generation 1, named by the manifest
        "shard-00000.frt.g1.deleted", "shard-00001.frt.g1.deleted", "shard-00002.frt.g1.deleted"]
    manifest = json.loads((directory / "manifest.json").read_text())
    assert (manifest["generation"], manifest["shards"][2]["deleted"]) == (1, "shard-00002.frt.g1.deleted")
    reloaded = fastret.Index.load(directory)
    assert len(reloaded) == 12
    assert not {1, 6, 14} & set(reloaded.search(vectors, 12)[1].reshape(-1).tolist())
    reloaded.add(unit_rows(rng, 2, 8), documents=["new0", "new1"])
    reloaded.merge()
    reloaded.save(directory)
    bits = f"shard-00003.frt.{index_file.read_header(directory / 'shard-00003.frt').data_crc:08x}.bits"
    assert sorted(p.name for p in directory.iterdir()) == [".fastret-lock", "manifest.json", "shard-00003.frt", bits]
    final = fastret.Index.load(directory)
    assert (len(final), final.segment_count) == (14, 1)
    assert final.documents([0, 15, 16]).tolist() == ["doc0", "new0", "new1"]
    assert json.loads((directory / "manifest.json").read_text())["model"] == "m"  # settings kept


def test_missing_corrupted_and_mismatched_shards_name_the_file(rng, tmp_path):
    make_store(tmp_path / "s", rng)
    (tmp_path / "s" / "shard-00001.frt").unlink()
    with pytest.raises(StoreError, match=r"shard-00001.frt: listed in \S*manifest.json but missing"):
        fastret.Index.load(tmp_path / "s")

    make_store(tmp_path / "c", rng)
    data = bytearray((tmp_path / "c" / "shard-00002.frt").read_bytes())
    data[70] ^= 1
    (tmp_path / "c" / "shard-00002.frt").write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"shard-00002.frt: the data is corrupted"):
        fastret.Index.load(tmp_path / "c")

    make_store(tmp_path / "d", rng)
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    manifest["dim"] = 16
    (tmp_path / "d" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match=r"shard-00000.frt: 5 x 8 vectors, but manifest.json says 5 x 16"):
        fastret.Index.load(tmp_path / "d")


def test_a_deletion_file_that_does_not_match_its_segment_is_refused(rng, tmp_path):
    make_store(tmp_path / "s", rng)
    index = fastret.Index.load(tmp_path / "s")
    index.delete([1, 3, 6])
    index.save(tmp_path / "s")
    first, second = tmp_path / "s" / "shard-00000.frt.g1.deleted", tmp_path / "s" / "shard-00001.frt.g1.deleted"
    kept = second.read_bytes()
    second.write_bytes(first.read_bytes())
    with pytest.raises(StoreError, match=r"shard-00001.frt.g1.deleted belongs to another version of shard-00001.frt"):
        fastret.Index.load(tmp_path / "s")
    second.write_bytes(kept)
    data = bytearray(first.read_bytes())
    data[-1] ^= 1
    first.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="shard-00000.frt.g1.deleted: the deletion file is corrupted"):
        fastret.Index.load(tmp_path / "s")


def test_segments_of_another_dimension_are_refused(rng, tmp_path):
    for name, dim in (("a.frt", 8), ("b.frt", 6)):
        part = fastret.Index(dim)
        part.add(unit_rows(rng, 3, dim))
        part.save(tmp_path / name)
    segments = [store.open_segment_file(tmp_path / n) for n in ("a.frt", "b.frt")]
    with pytest.raises(ValueError, match=r"b.frt: vectors of dimension 6, the index has 8"):
        fastret.Index.from_segments(segments, 8, store_float16=False)
    directory = tmp_path / "store8"
    directory.mkdir()
    fastret.Index.from_segments(segments[:1], 8, store_float16=False).save(directory)
    other = fastret.Index(6)
    other.add(unit_rows(rng, 2, 6))
    with pytest.raises(StoreError, match="holds a store of dimension 8; this index has 6"):
        other.save(directory)


def to_version_1(path):
    """Rewrite a version-2 index file without document ids in the version-1 header layout."""
    data = bytearray(path.read_bytes())
    magic, _, flags, dim, count, dtype, _doc_bytes = struct.unpack_from("<8sIIQQIQ", data)
    _, data_crc = struct.unpack_from("<II", data, 44)
    head = struct.pack("<8sIIQQI", magic, 1, flags, dim, count, dtype)
    data[:64] = (head + struct.pack("<II", zlib.crc32(head), data_crc)).ljust(64, b"\0")
    path.write_bytes(bytes(data))


def test_version_1_stores_still_load(rng, tmp_path):
    directory = tmp_path / "v1"
    directory.mkdir()
    vectors = unit_rows(rng, 6, 8)
    codes, scales = fastret.quantize_int8(vectors)
    index_file.write(directory / "shard-00000.frt",
                     index_file.IndexArrays(codes, scales, np.arange(6, dtype=np.int64), None))
    to_version_1(directory / "shard-00000.frt")
    (directory / "shard-00000.ids.json").write_text(json.dumps([f"old{i}" for i in range(6)]))
    (directory / "manifest.json").write_text(json.dumps({
        "format": "fastret-store", "version": 1, "dim": 8, "float16": False, "complete": True, "count": 6,
        "shards": [{"name": "shard-00000", "count": 6}]}))
    index = fastret.Index.load(directory)
    _, ids = index.search(vectors[4], 1)
    assert index.documents(ids).tolist() == [["old4"]]


def test_incomplete_and_foreign_directories(tmp_path):
    with pytest.raises(StoreError, match="is not a fastret store"):
        fastret.Index.load(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "fastret-store", "version": 7}))
    with pytest.raises(StoreError, match="store version 7; this fastret reads 1, 2"):
        fastret.Index.load(tmp_path)
