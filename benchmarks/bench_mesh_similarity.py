"""pytest-benchmark suite: depth-weighted MeSH similarity (SimL), the Triton kernel against torch.

    .venv/bin/python -m pytest benchmarks/bench_mesh_similarity.py --benchmark-only
    (on a GPU, keep the numbers: --benchmark-json benchmarks/results/<date>-<gpu>-mesh-similarity.json)

Workload: one BioHiCL training batch, 512 real MEDLINE-indexed abstracts against themselves
(labels_b=None, the training case) and a 512 x 512 cross batch, on the real MeSH 2015 tree
(56,341 nodes): 256 PubMedQA abstracts (~90 nodes each) interleaved with 256 BC5CDR abstracts
(~45 nodes each), ~67 tree nodes per document, padded width ~200. One benchmark group per case:

    fastret triton   mesh_similarity on CUDA: the merge kernel on padded node lists. This is the
                     GPU acceptance measurement; skipped on CPU, where Triton's interpreter would
                     time Python, not the kernel
    torch ref        mesh_similarity_ref: dense multi-hot rows over the batch's nodes, one float64
                     matmul (what fastret runs on CPU)
    torch dense      the textbook version: float32 multi-hot rows over all 56,341 tree nodes
                     [512, 56341] (115 MB) and one matmul (TF32 off)

Each benchmark checks its result against the reference (to 1e-5) before it is timed;
extra_info["Mpairs/s"] is document pairs scored per second. Needs the shared data
(../shared/data/mesh and ../shared/data/mesh_abstracts); skips with the reason otherwise.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from fastret.kernels.mesh_similarity import mesh_similarity, mesh_similarity_ref
from fastret.mesh import MeshTree, UnknownMeshLabelWarning
from harness import timed

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TREE = SHARED / "mesh" / "mesh2015_tree_numbers.tsv"
ABSTRACTS = [SHARED / "mesh_abstracts" / name for name in ("pubmedqa_train.jsonl", "bc5cdr_entities.jsonl")]
BATCH = 512
CASES = ["self", "cross"]


def group(case: str) -> str:
    shape = f"{BATCH}x{BATCH}" + (" (labels_b=None)" if case == "self" else "")
    return f"SimL {case} {shape} {DEVICE}"


@pytest.fixture(scope="module")
def data():
    for path in (TREE, *ABSTRACTS):
        if not path.is_file():
            pytest.skip(f"needs the shared MeSH data: {path} is missing (../shared/data relative to the project)")
    tree = MeshTree.from_file(TREE)
    pubmedqa, bc5cdr = ([json.loads(line)["mesh_ids"] for line in path.open()] for path in ABSTRACTS)
    labels = [doc for pair in zip(pubmedqa[:256], bc5cdr[:256]) for doc in pair]
    other = [doc for pair in zip(pubmedqa[244:500], bc5cdr[256:512]) for doc in pair]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnknownMeshLabelWarning)  # ~10% are newer than MeSH 2015
        a = tree.encode(labels, device=DEVICE)
        b = tree.encode(other, device=DEVICE)
    return tree, a, b


def inputs(data, case: str):
    _, a, b = data
    return (a, None) if case == "self" else (a, b)


def dense_fp32(tree: MeshTree, a, b):
    """The textbook SimL: float32 multi-hot rows over every tree node, one matmul."""

    def rows(enc):
        dense = torch.zeros((len(enc), tree.n_nodes), dtype=torch.float32, device=enc.device)
        valid = enc.nodes >= 0
        dense[valid.nonzero(as_tuple=True)[0], enc.nodes[valid].long()] = enc.weights[valid]
        return torch.nn.functional.normalize(dense, dim=1)

    va = rows(a)
    vb = va if b is None else rows(b)
    return va @ vb.T


def check(out, data, case: str) -> None:
    torch.testing.assert_close(out, mesh_similarity_ref(*inputs(data, case)), atol=1e-5, rtol=0)


def report(benchmark) -> None:
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["Mpairs/s"] = round(BATCH * BATCH / benchmark.stats.stats.mean / 1e6, 1)


@pytest.mark.parametrize("case", CASES)
def test_fastret_triton(benchmark, data, case):
    if not CUDA:
        pytest.skip(
            "the Triton kernel needs a CUDA GPU (this is the GPU acceptance measurement); under "
            "TRITON_INTERPRET its timing measures the interpreter"
        )
    benchmark.group = group(case)
    fn = timed(lambda: mesh_similarity(*inputs(data, case)))
    check(fn(), data, case)
    benchmark(fn)
    report(benchmark)


@pytest.mark.parametrize("case", CASES)
def test_torch_ref(benchmark, data, case):
    benchmark.group = group(case)
    fn = timed(lambda: mesh_similarity_ref(*inputs(data, case)))
    check(fn(), data, case)
    benchmark(fn)
    report(benchmark)


@pytest.mark.parametrize("case", CASES)
def test_torch_dense(benchmark, data, case):
    tree, a, b = data
    benchmark.group = group(case)
    fn = timed(lambda: dense_fp32(tree, a, None if case == "self" else b))
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # TF32 would miss 1e-5
    try:
        check(fn(), data, case)
        benchmark(fn)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    report(benchmark)
