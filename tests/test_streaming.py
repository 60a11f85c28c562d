import gzip
import json
import os
import re
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import fastret
from fastret.storage import store as store_module
from fastret.storage.store import Store, StoreError


def write_corpus(path, count, bad_line=None, compress=False):
    lines = []
    for i in range(count):
        record = {"_id": f"doc-{i}", "title": f"Title {i}", "text": "statins lower cholesterol " * (1 + i % 7)}
        lines.append(json.dumps(record))
    if bad_line is not None:
        lines[bad_line - 1] = '{"_id": "broken", "text": '
    data = "\n".join(lines) + "\n"
    if compress:
        with gzip.open(path, "wt") as f:
            f.write(data)
    else:
        path.write_text(data)
    return path


def directory_bytes(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def encoder(tiny_bert):
    return fastret.Encoder(tiny_bert, device="cpu", max_length=32)


def test_store_holds_what_encode_returns(encoder, tmp_path):
    corpus = write_corpus(tmp_path / "corpus.jsonl.gz", 37, compress=True)
    store = encoder.encode_corpus(corpus, tmp_path / "out", shard_size=10, store_float16=True,
                                  show_progress_bar=False)
    assert len(store) == 37 and store.dim == 32 and len(store.manifest["shards"]) == 4
    assert store.doc_ids() == [f"doc-{i}" for i in range(37)]
    texts = [f"Title {i} " + "statins lower cholesterol " * (1 + i % 7) for i in range(37)]
    shards = [texts[start : start + 10] for start in range(0, 37, 10)]  # batched as the store was
    floats = np.concatenate([encoder.encode(shard) for shard in shards])
    codes, scales = fastret.quantize_int8(floats)
    index = fastret.Index.load(tmp_path / "out")
    assert len(index) == 37 and index.store_float16 and index.segment_count == 4
    segments = store.segments()
    assert all(isinstance(s.codes, np.memmap) for s in segments)  # mapped in place, not copied
    joined = lambda field: np.concatenate([getattr(s, field) for s in segments])  # noqa: E731
    np.testing.assert_array_equal(joined("codes"), codes)
    np.testing.assert_array_equal(joined("scales"), scales)
    np.testing.assert_array_equal(joined("ids"), np.arange(37))
    np.testing.assert_array_equal(joined("float16"), floats.astype(np.float16))
    assert index.documents(np.array([[36, 0]])).tolist() == [["doc-36", "doc-0"]]
    _, ids = index.search(floats[5], 1, rescore=True, rescore_factor=37)
    assert ids[0, 0] == np.argmax(floats.astype(np.float16).astype(np.float32) @ floats[5])


def test_iterables_and_beir_directories(encoder, tmp_path):
    docs = [{"_id": "a", "title": "T", "text": "one"}, {"_id": "b", "text": "two"}]
    store = encoder.encode_corpus(docs, tmp_path / "dicts", show_progress_bar=False)
    assert store.doc_ids() == ["a", "b"]
    store = encoder.encode_corpus(["first text", "second"], tmp_path / "strings", show_progress_bar=False)
    assert store.doc_ids() == ["0", "1"]
    beir = tmp_path / "beir"
    beir.mkdir()
    write_corpus(beir / "corpus.jsonl", 3)
    assert len(encoder.encode_corpus(beir, tmp_path / "from-dir", show_progress_bar=False)) == 3
    with pytest.raises(TypeError, match="corpus item 1 is int"):
        encoder.encode_corpus(["ok", 5], tmp_path / "bad-items", show_progress_bar=False)


def test_interrupted_run_resumes_to_identical_bytes(encoder, tmp_path, monkeypatch):
    corpus = write_corpus(tmp_path / "corpus.jsonl", 45)
    encoder.encode_corpus(corpus, tmp_path / "whole", shard_size=8, store_float16=True, show_progress_bar=False)

    real_write = store_module.write_shard
    written = []

    def crash_after_two(directory, number, *args):
        if len(written) == 2:
            raise KeyboardInterrupt("stopped")
        real_write(directory, number, *args)
        written.append(number)

    monkeypatch.setattr("fastret.encode.corpus_to_store.write_shard", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        encoder.encode_corpus(corpus, tmp_path / "resumed", shard_size=8, store_float16=True, show_progress_bar=False)
    with pytest.raises(StoreError, match="the store is incomplete .16 documents in 2 shards so far.; rerun"):
        Store.open(tmp_path / "resumed")
    monkeypatch.setattr("fastret.encode.corpus_to_store.write_shard", real_write)
    encoder.encode_corpus(corpus, tmp_path / "resumed", shard_size=8, store_float16=True, show_progress_bar=False)
    assert directory_bytes(tmp_path / "resumed") == directory_bytes(tmp_path / "whole")


def test_a_shard_is_written_while_the_next_one_is_encoded(encoder, tmp_path, monkeypatch):
    corpus = write_corpus(tmp_path / "corpus.jsonl", 20)
    real_write, real_embed = store_module.write_shard, encoder.embed
    next_shard_encoding, writers, embeds = threading.Event(), [], []

    def embed(*args, **kwargs):
        embeds.append(len(args[0]))
        if len(embeds) == 2:
            next_shard_encoding.set()
        return real_embed(*args, **kwargs)

    def write_shard(directory, number, *args):
        writers.append(threading.current_thread().name)
        if number == 0:  # waits for shard 1's encoding: a write in the encoding thread would never see it
            assert next_shard_encoding.wait(timeout=60), "shard 1 was not encoded while shard 0 was written"
        real_write(directory, number, *args)

    monkeypatch.setattr("fastret.encode.corpus_to_store.write_shard", write_shard)
    monkeypatch.setattr(encoder, "embed", embed)
    store = encoder.encode_corpus(corpus, tmp_path / "store", shard_size=8, show_progress_bar=False)
    assert len(store) == 20 and embeds == [8, 8, 4]
    assert len(writers) == 3 and all(name.startswith("fastret-shard-writer") for name in writers)


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import fastret
    from fastret.storage import segment_files, store
    from fastret.encode import corpus_to_store as streaming
    from fastret.storage.atomic import atomic_write
    real = store.write_shard
    real_bits = segment_files.write_bits
    def bits_then_die(target, *args):
        if Path(target).name.startswith(store.shard_name(int(sys.argv[4])) + ".frt.") and sys.argv[5] == "bits":
            with atomic_write(target) as f:  # killed inside the shard's commit, writing its bits
                f.write(b"half the bits")
                os.kill(os.getpid(), signal.SIGKILL)
        real_bits(target, *args)
    segment_files.write_bits = bits_then_die
    def write_then_die(directory, number, *args):
        if number == int(sys.argv[4]) and sys.argv[5] == "during":  # killed inside the write
            with atomic_write(directory / store.shard_name(number)) as f:
                f.write(b"half a shard")
                os.kill(os.getpid(), signal.SIGKILL)
        real(directory, number, *args)
        if number == int(sys.argv[4]):
            os.kill(os.getpid(), signal.SIGKILL)
    streaming.write_shard = write_then_die
    encoder = fastret.Encoder(sys.argv[1], device="cpu", max_length=32)
    encoder.encode_corpus(sys.argv[2], sys.argv[3], shard_size=8, show_progress_bar=False)
""")


@pytest.mark.parametrize("when", ["after", "during", "bits"])
def test_killed_process_resumes_to_identical_bytes_and_no_debris(encoder, tiny_bert, tmp_path, when):
    corpus = write_corpus(tmp_path / "corpus.jsonl", 40)
    encoder.encode_corpus(corpus, tmp_path / "whole", shard_size=8, show_progress_bar=False)
    killed = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(tiny_bert), str(corpus),
                             str(tmp_path / "killed"), "2", when], capture_output=True, timeout=300)
    assert killed.returncode == -9
    finished = ["shard-00000.frt", "shard-00001.frt"] + (["shard-00002.frt"] if when == "after" else [])
    assert sorted(p.name for p in (tmp_path / "killed").glob("*.frt")) == finished
    # a shard and its bits are committed together: a kill before the shard's rename leaves neither
    assert sorted(p.name.split(".frt.")[0] + ".frt" for p in (tmp_path / "killed").glob("*.frt.*.bits")) == finished
    assert bool(list((tmp_path / "killed").glob(".*.tmp"))) == (when != "after")
    encoder.encode_corpus(corpus, tmp_path / "killed", shard_size=8, show_progress_bar=False)
    assert directory_bytes(tmp_path / "killed") == directory_bytes(tmp_path / "whole")  # dotfiles too


def test_corrupt_line_names_file_and_line_and_leaves_no_partial_shard(encoder, tmp_path):
    corpus = write_corpus(tmp_path / "corpus.jsonl", 30, bad_line=20)
    with pytest.raises(ValueError, match=r"corpus.jsonl:20: not valid JSON"):
        encoder.encode_corpus(corpus, tmp_path / "out", shard_size=8, show_progress_bar=False)
    out = tmp_path / "out"
    assert sorted(p.name.split(".")[0] + (".bits" if p.name.endswith(".bits") else "") for p in out.iterdir()) == [
        "", "manifest", "shard-00000", "shard-00000.bits", "shard-00001", "shard-00001.bits"]  # "": .fastret-lock
    assert (out / ".fastret-lock").read_bytes() == b""  # the run that failed let go of the lock


def test_resuming_with_other_settings_is_refused(encoder, tmp_path):
    corpus = write_corpus(tmp_path / "corpus.jsonl", 5)
    encoder.encode_corpus(corpus, tmp_path / "out", shard_size=4, show_progress_bar=False)
    with pytest.raises(StoreError, match="shard_size: 4 there, 3 now"):
        encoder.encode_corpus(corpus, tmp_path / "out", shard_size=3, show_progress_bar=False)
    with pytest.raises(ValueError, match="shard_size must be an int >= 1"):
        encoder.encode_corpus(corpus, tmp_path / "x", shard_size=0, show_progress_bar=False)
    with pytest.raises(FileNotFoundError, match="corpus .*missing.jsonl not found"):
        encoder.encode_corpus(tmp_path / "missing.jsonl", tmp_path / "y", show_progress_bar=False)


def test_store_errors(tmp_path):
    with pytest.raises(StoreError, match="is not a fastret store"):
        Store.open(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(StoreError, match="not valid JSON"):
        Store.open(tmp_path)


def test_torchrun_with_two_processes_writes_the_same_store(encoder, tiny_bert, tmp_path):
    corpus = write_corpus(tmp_path / "corpus.jsonl", 30)
    encoder.encode_corpus(corpus, tmp_path / "single", shard_size=4, show_progress_bar=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "fastret", "encode", str(corpus), str(tmp_path / "ranks"), "--model", str(tiny_bert),
         "--device", "cpu", "--max-length", "32", "--shard-size", "4", "--no-progress"],
        capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert directory_bytes(tmp_path / "ranks") == directory_bytes(tmp_path / "single")


def test_torchrun_environment(monkeypatch):
    from fastret.encode.corpus_to_store import Torchrun, torchrun_env

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert torchrun_env() == Torchrun(0, 1, 0) and torchrun_env().cuda_device == "cuda"
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert torchrun_env() == Torchrun(3, 4, 1) and torchrun_env().cuda_device == "cuda:1"
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="need 0 <= RANK < WORLD_SIZE"):
        torchrun_env()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE='two' is not a whole number"):
        torchrun_env()


def test_bm25_of_a_store_needs_the_corpus_it_was_encoded_from(encoder, tmp_path):
    from fastret.search.lexical import LexicalIndex
    from fastret.encode.corpus_to_store import build_store_bm25

    corpus = write_corpus(tmp_path / "corpus.jsonl", 9)
    encoder.encode_corpus(corpus, tmp_path / "store", shard_size=4, show_progress_bar=False)
    with pytest.raises(ValueError, match="does not hold the documents of .* in the same order"):
        build_store_bm25(tmp_path / "store", write_corpus(tmp_path / "other.jsonl", 8), show_progress_bar=False)
    folder, count = build_store_bm25(tmp_path / "store", corpus, show_progress_bar=False)
    assert count == 9 and folder.parent == tmp_path / "store"
    assert LexicalIndex.load(tmp_path / "store").ids.tolist() == list(range(9))


def test_fields_are_stored_beside_each_shard_and_written_on_resume(encoder, tmp_path):
    records = [{"_id": f"doc-{i}", "title": f"Title {i}", "text": "statins " * (1 + i % 3), "year": 2000 + i,
                "mesh": ["Humans"] if i % 2 else []} for i in range(12)]
    store = encoder.encode_corpus(records, tmp_path / "out", shard_size=5, show_progress_bar=False, fields=True)
    assert store.manifest["fields"] is True
    index = fastret.Index.load(tmp_path / "out")
    assert index.fields([11, 0]) == [{"title": "Title 11", "text": "statins statins statins ", "year": 2011,
                                      "mesh": ["Humans"]}, {"title": "Title 0", "text": "statins ", "year": 2000,
                                                            "mesh": []}]
    _, ids = index.search(np.ones(32, np.float32), 12, filter={"year": {"$lt": 2003}, "mesh": "Humans"})
    assert sorted(ids[0][ids[0] >= 0].tolist()) == [1]
    # a run killed between a shard's vectors and its fields writes the fields when it resumes
    (fields_file,) = (tmp_path / "out").glob("shard-00001.frt.*.fields.arrow")
    fields_file.unlink()
    encoder.encode_corpus(records, tmp_path / "out", shard_size=5, show_progress_bar=False, fields=True)
    assert fastret.Index.load(tmp_path / "out").fields([7], names=["year"]) == [{"year": 2007}]
    only = encoder.encode_corpus(records, tmp_path / "some", shard_size=5, show_progress_bar=False,
                                 fields=["year", "journal"])
    assert only.manifest["fields"] == ["year", "journal"]
    assert fastret.Index.load(tmp_path / "some").fields([3]) == [{"year": 2003}]
    with pytest.raises(StoreError, match="fields"):  # resuming with other fields is refused
        encoder.encode_corpus(records, tmp_path / "some", shard_size=5, show_progress_bar=False, fields=True)
    with pytest.raises(TypeError, match="fields must be True"):
        encoder.encode_corpus(records, tmp_path / "x", show_progress_bar=False, fields="year")


def test_encode_on_a_full_disk_exits_2_naming_the_file_and_the_rerun_resumes(encoder, tiny_bert, tmp_path):
    import resource
    import signal

    lines = [json.dumps({"_id": f"doc-{i}" + ("-" + "x" * 300 if i >= 16 else ""), "title": "T",
                         "text": f"statins {i}"}) for i in range(40)]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(lines) + "\n")
    encoder.encode_corpus(corpus, tmp_path / "whole", shard_size=8, show_progress_bar=False)
    big = (tmp_path / "whole" / "shard-00002.frt").stat().st_size  # the first shard of long ids
    assert all(p.stat().st_size < big for p in (tmp_path / "whole").iterdir()
               if p.name < "shard-00002" or p.name == "manifest.json")

    def disk_of(size):  # the file size limit stands for a full disk: writes past it fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    command = [sys.executable, "-m", "fastret", "encode", str(corpus), str(tmp_path / "out"), "--model", str(tiny_bert),
               "--device", "cpu", "--max-length", "32", "--shard-size", "8", "--no-progress"]
    full = subprocess.run(command, preexec_fn=lambda: disk_of(big - 1), capture_output=True, text=True, timeout=300)
    assert full.returncode == 2, full.stderr[-2000:]
    assert re.search(r"fastret encode: error: \[Errno 27\] File too large: '\S*out/shard-00002.frt'", full.stderr)
    assert "Traceback" not in full.stderr
    assert sorted(p.name for p in (tmp_path / "out").glob("*.frt")) == ["shard-00000.frt", "shard-00001.frt"]
    assert not list((tmp_path / "out").glob(".*.tmp"))  # nothing half-written is left
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert directory_bytes(tmp_path / "out") == directory_bytes(tmp_path / "whole")
