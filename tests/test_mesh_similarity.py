"""fastret/kernels/mesh_similarity.py: the Triton kernel (in Triton's interpreter here, on the GPU
in CI with one) against `mesh_similarity_ref` and against hand-computed values, on synthetic trees
and on real MeSH-labelled abstracts; properties (symmetric, in [0, 1], diagonal 1); dispatch; input
errors."""

import importlib
import json
import math
import os
import random
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastret.kernels
from fastret.kernels.mesh_similarity import mesh_similarity, mesh_similarity_ref
from fastret.mesh import MeshTree, UnknownMeshLabelWarning

# the module (fastret.kernels.mesh_similarity as an attribute is the function it exports)
ms = importlib.import_module("fastret.kernels.mesh_similarity")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"  # ../shared/data relative to the project root
REAL_TREE = SHARED / "mesh" / "mesh2015_tree_numbers.tsv"
REAL_ABSTRACTS = SHARED / "mesh_abstracts" / "pubmedqa_train.jsonl"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ATOL = 1e-5


@pytest.fixture(autouse=True)
def _triton_interpreter_on_cpu(monkeypatch):
    """Every test here runs the kernel: on CPU through Triton's interpreter."""
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")


def random_tree(seed=0, n_nodes=600, max_depth=12):
    """A random MeSH-like forest (6 roots, fan-out and depth uneven); every non-root node is a
    descriptor's position, every 7th descriptor has a second position, roots are prefixes only."""
    rng = random.Random(seed)
    nodes = [f"{letter}{i:02d}" for letter in "AC" for i in (1, 4, 17)]
    seen = set(nodes)
    while len(nodes) < n_nodes:
        parent = rng.choice(nodes[-40:] if rng.random() < 0.5 else nodes)  # some long chains
        if parent.count(".") + 1 < max_depth:
            child = f"{parent}.{rng.randrange(1000):03d}"
            if child not in seen:
                seen.add(child)
                nodes.append(child)
    positions = [n for n in nodes if "." in n]
    rng.shuffle(positions)
    records, k = [], 0
    while k < len(positions):
        take = 2 if k % 7 == 0 and k + 1 < len(positions) else 1
        for tree_number in positions[k : k + take]:
            records.append((f"D{k:05d}", f"Descriptor {k}", tree_number))
        k += take
    return MeshTree(records)


TREE = random_tree()
KEYS = list(TREE)


def random_labels(n_docs, max_labels, seed, unknown=0.1, empty=0.1):
    """Label lists with some unknown labels and some documents without labels."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        if rng.random() < empty:
            docs.append([])
            continue
        labels = rng.sample(KEYS, rng.randint(1, max_labels))
        docs.append([label if rng.random() >= unknown else "D99999" for label in labels])
    return docs


def encode(tree, label_lists):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnknownMeshLabelWarning)
        return tree.encode(label_lists, device=DEVICE)


def check(labels_a, labels_b=None):
    """Kernel result, after checking it against the reference (dtype, shape, values)."""
    out = mesh_similarity(labels_a, labels_b)
    expected = mesh_similarity_ref(labels_a, labels_b)
    rows = lambda labels: labels[0].shape[0] if isinstance(labels, (tuple, list)) else len(labels)  # noqa: E731
    A = rows(labels_a)
    B = A if labels_b is None else rows(labels_b)
    assert out.dtype == torch.float32 and out.shape == (A, B) and out.device == expected.device
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)
    return out


def cosine(tree, labels_p, labels_q):
    """SimL from the definition, in float64 over python sets."""
    nodes_p = {n for label in labels_p if label in tree for n in tree.ancestors(label)}
    nodes_q = {n for label in labels_q if label in tree for n in tree.ancestors(label)}
    if not nodes_p or not nodes_q:
        return 0.0
    w2 = lambda n: math.log(n.count(".") + 2) ** 2  # noqa: E731  (w_c^2, depth = dots + 1)
    dot = sum(w2(n) for n in nodes_p & nodes_q)
    return dot / math.sqrt(sum(w2(n) for n in nodes_p) * sum(w2(n) for n in nodes_q))


# ------------------------------------------------------------------------------- kernel vs ref

SMALL = MeshTree([
    ("D1", "Neoplasms", "C04"),
    ("D2", "Neoplasms by Site", "C04.588"),
    ("D3", "Breast Neoplasms", "C04.588.180"),
    ("D4", "Lung Neoplasms", "C04.588.894"),
    ("D5", "Breast Neoplasms, Male", "C04.588.180.260"),
    ("D6", "Skin Diseases", "C17.800"),
    ("D7", "Humans", "B01.050.150"),
])  # fmt: skip


def test_siblings_share_only_their_parent_chain():
    enc = encode(SMALL, [["D3"], ["D4"], ["D6"], ["D5"], ["D3", "D6"]])
    out = check(enc)
    w2 = [math.log(d + 1) ** 2 for d in range(5)]  # w2[d] = w^2 of a node at depth d
    siblings = (w2[1] + w2[2]) / (w2[1] + w2[2] + w2[3])  # C04, C04.588 shared; C04.588.180/.894 not
    assert out[0, 1].item() == pytest.approx(siblings, abs=1e-6)
    assert out[0, 2].item() == 0.0 and out[1, 2].item() == 0.0  # different trees share no node
    child = (w2[1] + w2[2] + w2[3]) / math.sqrt((w2[1] + w2[2] + w2[3]) * (w2[1] + w2[2] + w2[3] + w2[4]))
    assert out[0, 3].item() == pytest.approx(child, abs=1e-6)  # a node and its child
    for p in range(5):
        for q in range(5):
            labels = [["D3"], ["D4"], ["D6"], ["D5"], ["D3", "D6"]]
            assert out[p, q].item() == pytest.approx(cosine(SMALL, labels[p], labels[q]), abs=1e-6)


def test_one_label_per_document_and_empty_label_sets():
    docs = [["D1"], [], ["D7"], ["D99"], ["D7"], ["D1"], []]  # D99: unknown, so no label either
    enc = encode(SMALL, docs)
    out = check(enc)
    for p in (1, 3, 6):
        assert not out[p].any() and not out[:, p].any()  # 0 against everything, itself included
    assert out[0, 5].item() == 1.0 and out[2, 4].item() == 1.0 and out[0, 2].item() == 0.0
    assert not check(enc, encode(SMALL, [[], ["D99"]])).any()
    assert check(enc[[1, 6]]).tolist() == [[0.0, 0.0], [0.0, 0.0]]  # width 0: all padding


@pytest.mark.parametrize("A, B", [(0, 3), (3, 0), (0, 0)])
def test_empty_batches(A, B):
    out = mesh_similarity(encode(TREE, random_labels(A, 3, seed=1)), encode(TREE, random_labels(B, 3, seed=2)))
    assert out.shape == (A, B) and out.dtype == torch.float32
    assert mesh_similarity(encode(TREE, [])).shape == (0, 0)


@pytest.mark.parametrize(
    "A, B, max_labels",
    [(1, 1, 1), (3, 5, 2), (37, 21, 4), (5, 70, 3), (40, 35, 25)],
    ids=lambda v: str(v),
)
def test_random_batches_match_reference(A, B, max_labels):
    # A != B, several tiles on either side (the interpreter's tile is 32), and (last case) lists of
    # 100+ nodes; rows padded to the batch's longest list
    a = encode(TREE, random_labels(A, max_labels, seed=A))
    b = encode(TREE, random_labels(B, max_labels, seed=B + 1000))
    out = check(a, b)
    if max_labels == 25:
        assert int(a.lengths.max()) > 100 and int(b.lengths.max()) > 100
    assert torch.equal(check(b, a), out.T) or torch.allclose(check(b, a), out.T, atol=1e-6, rtol=0)


def test_against_itself_is_symmetric_with_unit_diagonal():
    labels = random_labels(45, 8, seed=7)
    enc = encode(TREE, labels)
    out = check(enc)  # labels_b=None: the half-grid path
    assert torch.equal(out, out.T)  # exactly
    labelled = enc.lengths > 0
    assert not labelled.all() and labelled.any()
    assert torch.equal(out.diagonal(), labelled.float())
    torch.testing.assert_close(out, mesh_similarity(enc, enc), atol=1e-6, rtol=0)  # the full-grid path
    for p, q in [(0, 1), (3, 40), (44, 2), (10, 10)]:
        assert out[p, q].item() == pytest.approx(cosine(TREE, labels[p], labels[q]) if labelled[p] else 0.0, abs=1e-6)


def test_cuda_tile_configuration_in_the_interpreter(monkeypatch):
    # CUDA runs 16 x 16 tiles; check that constexpr too (here: in the interpreter)
    monkeypatch.setattr(ms, "_TILE_INTERPRETER", ms._TILE_CUDA)
    a = encode(TREE, random_labels(19, 5, seed=3))
    check(a)
    check(a, encode(TREE, random_labels(17, 5, seed=4)))


def test_raw_node_weight_pairs():
    enc = encode(TREE, random_labels(9, 6, seed=11))
    expected = mesh_similarity(enc)
    pair = (enc.nodes.long(), enc.weights.double())
    torch.testing.assert_close(check(pair), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(check(enc, [enc.nodes, enc.weights]), expected, atol=1e-6, rtol=0)
    # wider padding and a non-contiguous view change nothing
    wide = torch.cat([enc.nodes, torch.full((9, 5), -1, dtype=torch.int32, device=DEVICE)], dim=1)
    wide_w = torch.cat([enc.weights, torch.zeros(9, 5, device=DEVICE)], dim=1)
    torch.testing.assert_close(check((wide.T.contiguous().T, wide_w)), expected, atol=1e-6, rtol=0)
    # other weights: the kernel uses the given weights (w = 1: unweighted set cosine)
    ones = torch.where(enc.nodes >= 0, 1.0, 0.0)
    check((enc.nodes, ones))


@settings(max_examples=15, deadline=None)
@given(
    labels=st.lists(st.lists(st.sampled_from(KEYS[:40] + ["D99999"]), max_size=4), min_size=1, max_size=12),
    split=st.integers(min_value=0, max_value=12),
)
def test_properties(labels, split):
    enc = encode(TREE, labels)
    out = check(enc)
    for sim in (out, mesh_similarity_ref(enc)):  # the kernel's and the reference's own properties
        assert torch.equal(sim, sim.T)
        assert bool(((sim >= 0) & (sim <= 1)).all())
        assert torch.equal(sim.diagonal(), (enc.lengths > 0).float())
    split = min(split, len(labels))
    torch.testing.assert_close(check(enc[:split], enc[split:]), out[:split, split:], atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- real abstracts


@pytest.fixture(scope="module")
def real_labels():
    for path in (REAL_TREE, REAL_ABSTRACTS):
        if not path.is_file():
            pytest.skip(f"the shared MeSH data is not at {path} (../shared/data relative to the project)")
    tree = MeshTree.from_file(REAL_TREE)
    docs = [json.loads(line)["mesh_ids"] for line in REAL_ABSTRACTS.open()]
    return tree, docs


def test_real_abstracts_match_reference(real_labels):
    tree, docs = real_labels
    enc = encode(tree, docs[:64])  # ~90 nodes per abstract (25 to 184 here)
    assert int(enc.lengths.min()) > 20 and enc.nodes.shape[1] > 150
    out = check(enc)
    assert torch.equal(out, out.T) and torch.equal(out.diagonal(), torch.ones(64, device=out.device))
    # every abstract shares the "Humans" chain with most others, so little is exactly 0
    assert 0.1 < float(out.mean()) < 0.6
    for p, q in [(0, 1), (5, 63), (17, 42)]:
        assert out[p, q].item() == pytest.approx(cosine(tree, docs[p], docs[q]), abs=1e-6)
    other = encode(tree, docs[100:124])
    check(enc[:40], other)


# ------------------------------------------------------------------------------------ dispatch


def test_cpu_without_interpreter_uses_the_reference(monkeypatch):
    enc = encode(TREE, random_labels(6, 4, seed=5)).to("cpu")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)

    def no_kernel(*args):
        raise AssertionError("the Triton path ran for a CPU tensor without TRITON_INTERPRET=1")

    monkeypatch.setattr(ms, "_mesh_similarity_triton", no_kernel)
    assert torch.equal(mesh_similarity(enc), mesh_similarity_ref(enc))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the interpreter dispatch of CPU tensors")
def test_cpu_with_interpreter_runs_the_kernel(monkeypatch):
    def no_reference(*args):
        raise AssertionError("the torch reference ran although TRITON_INTERPRET=1")

    monkeypatch.setattr(ms, "_similarity_ref", no_reference)
    assert mesh_similarity(encode(SMALL, [["D1"], ["D2"]])).shape == (2, 2)


def test_exported():
    assert fastret.kernels.mesh_similarity is mesh_similarity
    assert fastret.kernels.mesh_similarity_ref is mesh_similarity_ref


def test_works_without_triton_on_cpu_and_says_so_when_triton_is_needed():
    code = """
import sys
sys.modules["triton"] = None  # import triton -> ImportError
import os, torch
from fastret.mesh import MeshTree
from fastret.kernels.mesh_similarity import mesh_similarity, mesh_similarity_ref
enc = MeshTree([("D1", "a", "C04"), ("D2", "b", "C04.588")]).encode([["D1"], ["D2"]])
assert torch.equal(mesh_similarity(enc), mesh_similarity_ref(enc))
os.environ["TRITON_INTERPRET"] = "1"
try:
    mesh_similarity(enc)
except RuntimeError as error:
    print(error)
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "needs triton" in result.stdout and "install it" in result.stdout


def test_kernel_compiles_for_a_gpu():
    # the interpreter runs any Python; this checks that the CUDA path also gets through Triton's
    # compiler (to a cubin for sm_90) without a GPU. In a fresh process without TRITON_INTERPRET:
    # triton decides compiled vs interpreted when it is imported.
    pytest.importorskip("triton")
    code = """
import importlib, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
ms = importlib.import_module("fastret.kernels.mesh_similarity")
pointers = {name: "*i32" if name in ("NA", "NB", "LEN_A", "LEN_B") else "*fp32"
            for name in ("NA", "WA", "NB", "WB", "LEN_A", "LEN_B", "NORM_A", "NORM_B", "OUT")}
scalars = {name: "i32" for name in ("A", "B", "stride_na", "stride_wa", "stride_nb", "stride_wb", "stride_o")}
block, num_warps = ms._TILE_CUDA
for symmetric in (True, False):
    constexprs = {"SYMMETRIC": symmetric, "BLOCK_A": block, "BLOCK_B": block}
    source = ASTSource(fn=ms._mesh_similarity_kernel, constexprs=constexprs,
                       signature={**pointers, **scalars, **{name: "constexpr" for name in constexprs}})
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
    print(symmetric, len(compiled.asm["cubin"]) > 0)
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["True", "True", "False", "True"]


# -------------------------------------------------------------------------------------- errors


def ok_pair():
    enc = encode(SMALL, [["D3", "D7"], ["D4"]])
    return enc.nodes.clone(), enc.weights.clone()


def edit(nodes=None, weights=None):
    n, w = ok_pair()
    return (n if nodes is None else nodes(n), w if weights is None else weights(w))


def set_(t, index, value):
    t = t.clone()
    t[index] = value
    return t


@pytest.mark.parametrize(
    "labels, error, match",
    [
        pytest.param([["D1"]], TypeError, r"labels_a must be the EncodedLabels from MeshTree.encode or a \(nodes, weights\) pair.*got list", id="label-lists"),
        pytest.param("D1", TypeError, r"got str", id="str"),
        pytest.param(lambda: ok_pair()[0], TypeError, r"\(nodes, weights\) pair of tensors, got Tensor", id="nodes-only"),
        pytest.param(lambda: edit(nodes=lambda n: n[0], weights=lambda w: w[0]), ValueError,
                     r"labels_a: nodes and weights must be \[B, L\], got shapes \(6,\) and \(6,\); for one document pass \[1, L\]", id="1d"),
        pytest.param(lambda: edit(weights=lambda w: w[:, :3]), ValueError, r"nodes \(2, 6\) and weights \(2, 3\) must have one shape", id="shapes"),
        pytest.param(lambda: edit(nodes=lambda n: n.float()), TypeError, r"nodes must be int32 or int64 node ids, got torch.float32", id="float-nodes"),
        pytest.param(lambda: edit(weights=lambda w: w.long()), TypeError, r"weights must be a floating-point tensor, got torch.int64", id="int-weights"),
        pytest.param(lambda: edit(weights=lambda w: w.to("meta")), ValueError, r"nodes are on .* but weights on meta", id="w-device"),
        pytest.param(lambda: edit(nodes=lambda n: n.flip(1)), ValueError, r"padding \(-1\) before a node id", id="pad-first"),
        pytest.param(lambda: edit(nodes=lambda n: set_(n, (0, 1), 0)), ValueError, r"not strictly ascending within a row \(unsorted or repeated\)", id="unsorted"),
        pytest.param(lambda: edit(nodes=lambda n: set_(n, (1, 0), -5)), ValueError, r"ids below -1 \(padding is -1\)", id="below-pad"),
        pytest.param(lambda: edit(nodes=lambda n: set_(n.long(), (1, 3), 2**40)), ValueError, r"ids beyond int32", id="int64-range"),
        pytest.param(lambda: edit(weights=lambda w: set_(w, (0, 0), -1.0)), ValueError, r"negative or non-finite weights", id="neg-weight"),
        pytest.param(lambda: edit(weights=lambda w: set_(w, (0, 0), float("nan"))), ValueError, r"negative or non-finite weights.*MeshTree.encode", id="nan-weight"),
    ],
)
def test_bad_inputs_are_explained(labels, error, match):
    labels = labels() if callable(labels) else labels
    for fn in (mesh_similarity, mesh_similarity_ref):
        with pytest.raises(error, match=match):
            fn(labels)
        if isinstance(labels, tuple):  # the same check on the b side
            with pytest.raises(error, match=match.replace("labels_a", "labels_b")):
                fn(ok_pair(), labels)


def test_padding_weights_are_ignored():
    nodes, weights = ok_pair()
    garbage = torch.where(nodes >= 0, weights, float("nan"))  # weights at padding are never read
    torch.testing.assert_close(check((nodes, garbage)), mesh_similarity((nodes, weights)), atol=1e-6, rtol=0)


def test_batches_from_different_trees_or_devices_are_refused():
    a = encode(SMALL, [["D1"]])
    b = encode(TREE, [[KEYS[0]]])
    with pytest.raises(ValueError, match=r"encoded with different MeSH trees .*encode both with the same MeshTree"):
        mesh_similarity(a, b)
    with pytest.raises(ValueError, match=r"labels_a is on .* but labels_b on meta; move both to one device"):
        mesh_similarity(a, a.to("meta"))


def test_capacity_error(monkeypatch):
    monkeypatch.setattr(ms, "_MAX_GRID_Y", 1)
    enc = encode(TREE, random_labels(40, 2, seed=9))
    with pytest.raises(RuntimeError, match=r"supports up to \d+ documents in labels_b, got 40; split labels_b"):
        mesh_similarity(enc)
