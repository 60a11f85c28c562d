"""An index that searches on a GPU (`Index.to`, `open_searchable(device=)`, `fastret serve
--search-device`): numpy queries in, numpy results out, the same as the C++ core's.

Without CUDA the GPU is stood in for by the CPU: `search_device` is made to accept "cuda" as the
CPU device and the Triton kernels run in the interpreter (conftest sets TRITON_INTERPRET=1), so the
whole path (rows made resident, queries moved, the fused scan, the binary stage's popcount, filters
as bitmaps, results back as numpy) runs here; with CUDA the real GPU runs it.
"""

import logging

import numpy as np
import pytest
import torch

import fastret
from fastret.search import torch_backend
from fastret.search.searchers import open_searchable
from fastret.search.text import TextSearch
from fastret.serve.config import ServeConfig

from conftest import HAS_CUDA, needs_cuda, unit_rows

DIM = 24


@pytest.fixture
def gpu(monkeypatch):
    """The device "cuda" names: the real GPU, or the CPU standing in for it (module docstring)."""
    if HAS_CUDA:
        return torch_backend.search_device("cuda")
    cpu = torch.device("cpu")
    monkeypatch.setattr(torch_backend, "search_device", lambda device: cpu)
    monkeypatch.setattr(torch_backend, "kernels_on_device", lambda device: True)
    return cpu


@pytest.fixture
def device_searches(monkeypatch):
    """The names of the device searches run (the fused scan, the binary stage), appended as they run."""
    ran = []
    for name in ("scan_candidates", "binary_scan_candidates"):
        monkeypatch.setattr(torch_backend, name,
                            lambda *args, name=name, search=getattr(torch_backend, name), **options:
                            ran.append(name) or search(*args, **options))
    return ran


@pytest.fixture
def saved(tmp_path, rng):
    """An index file of two segments, deleted rows, tied scores, float16 copies and a "year" field;
    its vectors; and 5 queries (the first two are stored vectors: tied and exact matches)."""
    vectors = unit_rows(rng, 300, DIM)
    vectors[150:170] = vectors[:20]
    ids = rng.permutation(900)[:300].astype(np.int64)
    index = fastret.Index(DIM, store_float16=True)
    index.add(vectors[:180], ids[:180], fields=[{"year": 2000 + i % 20} for i in range(180)])
    index.merge()
    index.add(vectors[180:], ids[180:], fields=[{"year": 2000 + i % 20} for i in range(180, 300)])
    index.delete(ids[rng.choice(300, 30, replace=False)])
    path = tmp_path / "index.fidx"
    index.save(path)
    queries = np.concatenate([vectors[:2], unit_rows(rng, 3, DIM)])
    return path, vectors, queries


SEARCHES = [dict(k=1), dict(k=10), dict(k=100), dict(k=10, filter={"year": {"$gte": 2010}}),
            dict(k=10, first_stage="binary", oversample=3), dict(k=10, first_stage="binary")]


@pytest.mark.parametrize("options", SEARCHES, ids=lambda o: " ".join(f"{k}={v}" for k, v in o.items()))
def test_an_index_on_the_gpu_answers_numpy_queries_as_the_core_does(gpu, device_searches, saved, options):
    path, _, queries = saved
    on_cpu = fastret.Index.load(path)
    on_gpu = fastret.Index.load(path).to("cuda")
    assert on_gpu.device == str(gpu) and on_cpu.device == "cpu"
    want = on_cpu.search(queries, **options)
    assert device_searches == []
    got = on_gpu.search(queries, **options)
    assert device_searches == ["binary_scan_candidates" if "first_stage" in options else "scan_candidates"]
    assert all(isinstance(part, np.ndarray) for part in got)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])


def test_rescoring_on_the_gpu_ranks_as_the_core_does(gpu, saved):
    path, _, queries = saved
    got = fastret.Index.load(path).to("cuda").search(queries, 10, rescore=True)
    want = fastret.Index.load(path).search(queries, 10, rescore=True)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[0], want[0], rtol=0, atol=1e-6)  # float sums in another order


def test_rows_are_resident_from_to_and_dropped_by_moving_back(gpu, device_searches, saved):
    path, vectors, queries = saved
    index, on_cpu = fastret.Index.load(path), fastret.Index.load(path)
    index.to("cuda")
    assert all(("resident", str(gpu)) in segment.cache for segment in index.segments)
    for searched in (index, on_cpu):
        searched.add(vectors[:3] * 0.5 + vectors[3:6] * 0.5)  # rows added after the move search there too
    np.testing.assert_array_equal(index.search(queries, 10)[1], on_cpu.search(queries, 10)[1])
    assert device_searches  # the device's kernel searched, not the core
    index.to("cpu")
    assert index.device == "cpu"
    assert not any(key[1:] == (str(gpu),) for segment in index.segments for key in segment.cache
                   if isinstance(key, tuple))
    device_searches.clear()
    np.testing.assert_array_equal(index.search(queries, 10)[1], on_cpu.search(queries, 10)[1])
    assert not device_searches


def test_text_search_and_open_searchable_search_on_the_device_named(gpu, saved):
    path, _, queries = saved
    search = TextSearch.open(path, device="cuda")
    assert search.searchable.device == str(gpu)
    texts = [f"query {n}" for n in range(len(queries))]
    got = search.rank(texts, 10, vectors=queries)
    want = TextSearch.open(path).rank(texts, 10, vectors=queries)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])
    with pytest.raises(ValueError, match="searches on its actors' CPUs, not on cuda"):
        open_searchable(path, shards=2, device="cuda")


@pytest.mark.skipif(HAS_CUDA, reason="checks the refusal where torch sees no CUDA GPU")
@pytest.mark.parametrize("device, message", [
    ("cuda", "needs a CUDA GPU, and torch sees none: search on 'cpu'"),
    ("mps", "searches on 'cpu' .* or on a CUDA GPU, not on mps"),
    ("banana", "device must be 'cpu', 'cuda' or 'cuda:N'.*got 'banana'"),
])
def test_a_device_that_cannot_search_is_refused(saved, device, message):
    index = fastret.Index.load(saved[0])
    with pytest.raises(ValueError, match=message):
        index.to(device)
    assert index.device == "cpu"


def test_an_index_too_big_for_the_gpus_free_memory_is_refused(saved, monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1000, 8000))
    segments = fastret.Index.load(saved[0]).segments
    with pytest.raises(ValueError, match=r"take 0.00 GiB on cuda:0, which has 0.00 GiB free of 0.00 GiB .*search "
                                         "on 'cpu'"):
        torch_backend.make_resident(segments, torch.device("cuda", 0))
    assert torch_backend.resident_bytes(segments) == sum(len(s) for s in segments) * (DIM + 24)


def test_the_server_searches_on_the_models_gpu_when_auto_and_says_why_not(saved, monkeypatch, caplog):
    from fastret.serve.app import open_index

    path = str(saved[0])
    assert open_index(ServeConfig(index=path), "cpu").device == "cpu"
    if not HAS_CUDA:  # auto with a model on a GPU that cannot hold the index: the CPU, and a warning
        with caplog.at_level(logging.WARNING, logger="fastret.serve.app"):
            assert open_index(ServeConfig(index=path), "cuda").device == "cpu"
        assert "/search runs on the CPU, not on the model's cuda: searching on cuda needs a CUDA GPU" in caplog.text
        with pytest.raises(ValueError, match="needs a CUDA GPU"):  # asked for by name: refused
            open_index(ServeConfig(index=path, search_device="cuda"))


def test_auto_in_the_server_moves_the_index_to_the_models_gpu(gpu, saved):
    from fastret.serve.app import open_index

    assert open_index(ServeConfig(index=str(saved[0])), "cuda").device == str(gpu)
    assert open_index(ServeConfig(index=str(saved[0]), search_device="cpu"), "cuda").device == "cpu"


@needs_cuda
def test_the_real_gpu_is_named_by_its_index(saved):
    index = fastret.Index.load(saved[0]).to("cuda")
    assert index.device == f"cuda:{torch.cuda.current_device()}"
