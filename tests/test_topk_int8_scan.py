"""The fused int8 scan + top-k kernel (fastret.kernels.topk_int8_scan) and the CUDA search path that
uses it, in Triton's interpreter at tiny sizes (conftest sets TRITON_INTERPRET=1 without a GPU):
ids and scores exactly those of the C++ core, ties to the lower id, deleted and filtered rows
skipped, several segments merged as one index."""

import numpy as np
import pytest
import torch

import fastret
from fastret import _core
from fastret.kernels.topk_int8_scan import MAX_K, ScanBlocks, id_order, topk_int8_scan, topk_int8_scan_ref
from fastret.search.core import core_candidates, narrowed
from fastret.search.rules import query_codes
from fastret.search.torch_backend import resident_rows, search_kernel, skip_bitmap, torch_candidates
from fastret.storage.segment import bitmap

from conftest import HAS_CUDA, unit_rows

DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")


def tensors(*arrays):
    return [torch.from_numpy(np.ascontiguousarray(a)).to(DEVICE) for a in arrays]


def corpus(rng, n, dim, copies=0):
    """Codes and scales of n unit rows, the first `copies` repeated mid-way (tied scores), and
    shuffled ids."""
    vectors = unit_rows(rng, n, dim)
    vectors[n // 2: n // 2 + copies] = vectors[:copies]
    codes, scales = fastret.quantize_int8(vectors)
    return np.asarray(codes), np.asarray(scales), rng.permutation(3 * n)[:n].astype(np.int64), vectors


def core_topk(q_codes, q_scales, codes, scales, ids, k, skipped=None):
    """The C++ core's (scores, ids) with `skipped` rows (bool [n]) passed as its deletion bitmap."""
    words = None if skipped is None else bitmap(skipped)
    scores, rows = _core.topk_int8(q_codes, q_scales, [(codes, scales, ids, words)], k)
    return scores, ids[rows]


def scan(q_codes, q_scales, codes, scales, ids, k, skipped=None, blocks=None):
    """topk_int8_scan's (scores, ids) as numpy arrays (ids -1 past the rows that pass)."""
    skip = None if skipped is None else tensors(np.packbits(skipped, bitorder="little"))[0]
    q_codes, q_scales, codes, scales, ids_t = tensors(q_codes, q_scales, codes, scales, ids)
    scores, rows = topk_int8_scan(q_codes, q_scales, codes, scales, k, id_order=id_order(ids_t), skip=skip,
                                  blocks=blocks)
    rows = rows.cpu().numpy()
    return scores.cpu().numpy(), np.where(rows >= 0, ids[rows], -1)


def assert_same(got, expected):
    np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_array_equal(got[0], expected[0])


@pytest.mark.parametrize("n_queries, n, dim, k", [(1, 37, 8, 1), (3, 150, 20, 10), (17, 97, 33, 5),
                                                  (2, 260, 40, 100)])
def test_scan_equals_the_core(rng, n_queries, n, dim, k):
    """Irregular shapes (a partial query block, a partial last tile, dims off the block), tied
    scores straddling the k-th place, ids in shuffled order; one query block and several."""
    codes, scales, ids, _ = corpus(rng, n, dim, copies=n // 5)
    q_codes, q_scales = fastret.quantize_queries(unit_rows(rng, n_queries, dim))
    q_codes[0] = codes[0]  # the first query's best rows are tied copies
    assert_same(scan(q_codes, q_scales, codes, scales, ids, k), core_topk(q_codes, q_scales, codes, scales, ids, k))


def test_scan_equals_the_reference_with_row_order_ids(rng):
    """Without id_order the rows rank ties themselves (the kernel reads no ranks), as the reference."""
    codes, scales, _, _ = corpus(rng, 90, 16, copies=30)
    q_codes, q_scales = fastret.quantize_queries(unit_rows(rng, 4, 16))
    q_codes[1] = codes[2]
    args = tensors(q_codes, q_scales, codes, scales)
    got = topk_int8_scan(*args, 12)
    assert_same([t.cpu().numpy() for t in got], [t.cpu().numpy() for t in topk_int8_scan_ref(*args, 12)])
    assert_same([t.cpu().numpy() for t in got], core_topk(q_codes, q_scales, codes, scales, np.arange(90), 12))


def test_scan_skips_rows_and_whole_tiles(rng):
    """Skipped rows are never returned; a run of skipped rows longer than a tile (not read at all)
    and a filter passing fewer than k rows, whose last columns are (-inf, -1)."""
    codes, scales, ids, _ = corpus(rng, 200, 24, copies=20)
    q_codes, q_scales = fastret.quantize_queries(unit_rows(rng, 3, 24))
    skipped = rng.random(200) < 0.3
    skipped[40:120] = True
    for k in (1, 10):
        assert_same(scan(q_codes, q_scales, codes, scales, ids, k, skipped),
                    core_topk(q_codes, q_scales, codes, scales, ids, k, skipped))
    few = np.ones(200, bool)
    few[[3, 150, 199]] = False
    scores, found = scan(q_codes, q_scales, codes, scales, ids, 5, few)
    expected = core_topk(q_codes, q_scales, codes, scales, ids, 3, few)
    assert_same((scores[:, :3], found[:, :3]), expected)
    assert (found[:, 3:] == -1).all() and np.isneginf(scores[:, 3:]).all()


def test_scan_with_one_split_keeps_the_bounds_through_many_tiles(rng):
    """One program over many small tiles: later tiles enter only through the running bound."""
    codes, scales, ids, _ = corpus(rng, 300, 16, copies=40)
    q_codes, q_scales = fastret.quantize_queries(unit_rows(rng, 2, 16))
    q_codes[1] = codes[1]
    blocks = ScanBlocks(block_q=16, block_n=16, block_d=16, splits=1, num_warps=1, num_stages=1)
    assert_same(scan(q_codes, q_scales, codes, scales, ids, 16, blocks=blocks),
                core_topk(q_codes, q_scales, codes, scales, ids, 16))


def test_scan_ranks_negative_zero_as_zero(rng):
    """Scores that underflow to -0.0 and +0.0 are one score: ties go to the lower id, as the core."""
    codes, scales, ids, _ = corpus(rng, 60, 8)
    scales = np.full(60, 1e-30, np.float32)
    q_codes, q_scales = fastret.quantize_queries(unit_rows(rng, 2, 8))
    q_scales = np.full(2, 1e-30, np.float32)
    scores, found = scan(q_codes, q_scales, codes, scales, ids, 10)
    assert (scores == 0).all()
    assert (found == np.sort(ids)[:10]).all()
    assert_same((scores, found), core_topk(q_codes, q_scales, codes, scales, ids, 10))


def test_scan_refuses_bad_input(rng):
    codes, scales, ids, _ = corpus(rng, 20, 8)
    q_codes, q_scales = fastret.quantize_queries(unit_rows(rng, 2, 8))
    q, qs, c, s = tensors(q_codes, q_scales, codes, scales)
    with pytest.raises(TypeError, match="codes must be a torch.int8 tensor"):
        topk_int8_scan(q, qs, c.float(), s, 3)
    with pytest.raises(ValueError, match="need one d"):
        topk_int8_scan(q[:, :4], qs, c, s, 3)
    with pytest.raises(ValueError, match=f"k must be an int in \\[1, {MAX_K}\\]"):
        topk_int8_scan(q, qs, c, s, MAX_K + 1)
    with pytest.raises(ValueError, match="k must be an int"):
        topk_int8_scan(q, qs, c, s, 0)
    with pytest.raises(ValueError, match="skip holds 2 bytes, 3 needed for 20 rows"):
        topk_int8_scan(q, qs, c, s, 3, skip=torch.zeros(2, dtype=torch.uint8, device=DEVICE))
    with pytest.raises(TypeError, match="id_order must be"):
        topk_int8_scan(q, qs, c, s, 3, id_order=(torch.zeros(20, dtype=torch.int64), torch.zeros(20)))
    with pytest.raises(ValueError, match="scan blocks need block_q, block_n and block_d >= 16"):
        topk_int8_scan(q, qs, c, s, 10, blocks=ScanBlocks(16, 8, 16, 1, 1, 1))


def test_search_kernel_picks_the_scan_on_cuda_up_to_max_k(rng):
    assert search_kernel(torch.device("cuda"), 10) == "scan"
    assert search_kernel(torch.device("cuda", 0), MAX_K) == "scan"
    assert search_kernel(torch.device("cuda"), MAX_K + 1) == "torch"
    assert search_kernel(torch.device("cpu"), 10) == "torch"
    index = fastret.Index(8)
    index.add(unit_rows(rng, 5, 8))
    q_codes, q_scales, _ = query_codes(unit_rows(rng, 1, 8), 8)
    with pytest.raises(ValueError, match="kernel must be one of 'scan', 'torch' or None"):
        torch_candidates(index.segments, *tensors(q_codes, q_scales), 3, kernel="matmul")


def test_scan_over_segments_equals_the_core(rng, tmp_path):
    """The CUDA search path with the scan kernel: a mapped segment and an in-memory one, deletes in
    both, ties across them, a filter; rows copied once per segment, a delete uploads only a bitmap."""
    dim = 24
    docs = unit_rows(rng, 300, dim)
    docs[200:230] = docs[0]  # ties within and across segments
    ids = rng.permutation(300).astype(np.int64) + 10
    first = fastret.Index(dim, store_float16=True)
    first.add(docs[:150], ids[:150])
    first.save(tmp_path / "a.frt")
    index = fastret.Index.load(tmp_path / "a.frt")
    index.add(docs[150:], ids[150:])
    index.delete(ids[[0, 5, 160, 200]])
    queries = unit_rows(rng, 3, dim)
    queries[0] = docs[0]
    q_codes, q_scales, q_floats = query_codes(queries, dim)
    device_queries = tensors(q_codes, q_scales)

    def compare(segments, allowed=None, cs=(1, 10, 100)):
        for c in cs:
            expected = core_candidates(segments, q_codes, q_scales, c, q_floats, allowed)
            got = torch_candidates(segments, *device_queries, c, tensors(q_floats)[0], allowed, kernel="scan")
            assert_same(got[:2], expected[:2])
            np.testing.assert_allclose(got[2], expected[2], rtol=1e-5, atol=1e-7)  # torch sums in its own order

    segments = index.segments
    compare(segments)
    rows = [resident_rows(s, DEVICE) for s in segments]
    assert [len(r[0]) for r in rows] == [150, 150]  # every row, deleted ones too
    index.delete(ids[[1, 2]])
    renewed = index.segments
    assert resident_rows(renewed[0], DEVICE) is rows[0]  # the rows stay; the deletion bitmap is new
    assert int(skip_bitmap(renewed[0], None, DEVICE)[0]) & 0b111 == 0b111
    compare(renewed, cs=(10,))
    masks = [rng.random(len(s)) < 0.5 for s in renewed]
    masks[0][:] = False
    masks[0][[3, 7, 8]] = True  # fewer rows than c pass
    kept, allowed, passing = narrowed(renewed, masks, pick=False)
    compare(kept, allowed, cs=(1, min(10, passing)))


COMPILE = """
import json, sys
import torch, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from fastret.kernels.topk_int8_scan import _EMPTY, _pow2, _scan_kernel, scan_blocks

report = []
for n_queries, k, rank_is_row, has_skip in json.loads(sys.argv[1]):
    blocks = scan_blocks(n_queries, 1_000_000, 768, k, torch.device("cuda"), multiprocessors=132)
    pointers = {"Q": "*i8", "QS": "*fp32", "C": "*i8", "CS": "*fp32", "RANK": "*i32", "SKIP": "*u8", "OUT": "*i64"}
    scalars = dict.fromkeys(["n_queries", "n_rows", "dim", "stride_q", "stride_c", "tiles_per_split"], "i32")
    constexprs = {"EMPTY": _EMPTY, "RANK_IS_ROW": rank_is_row, "HAS_SKIP": has_skip, "KB": _pow2(k),
                  "BLOCK_Q": blocks.block_q, "BLOCK_N": blocks.block_n, "BLOCK_D": blocks.block_d}
    signature = {**pointers, **scalars, **dict.fromkeys(constexprs, "constexpr")}
    aligned = {(i,): [["tt.divisibility", 16]] for i in (0, 2, 4, 5, 6, 9, 10, 11)}
    source = ASTSource(fn=_scan_kernel, signature=signature, constexprs=constexprs, attrs=aligned)
    kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                            options={"num_warps": blocks.num_warps, "num_stages": blocks.num_stages})
    report.append({"blocks": blocks._asdict(), "shared": kernel.metadata.shared,
                   "int8_mma": "mma" in kernel.asm["ptx"] and ".s8.s8" in kernel.asm["ptx"]})
print(json.dumps(report))
"""


def test_kernel_compiles_for_hopper(tmp_path):
    """The configurations scan_blocks picks on an H100 (132 multiprocessors: one query and a batch,
    k 1 / 10 / 100 / 256) compile to sm_90 code with int8 tensor-core instructions and fit its
    shared memory: what the interpreter cannot show (Triton's compiler runs without a GPU)."""
    pytest.importorskip("triton.backends.nvidia", reason="triton without its NVIDIA backend")
    import json
    import os
    import subprocess
    import sys

    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    cases = [(1, 10, False, True), (1, 1, True, False), (1000, 10, True, False), (1000, 100, False, True),
             (1000, 256, False, False)]
    done = subprocess.run([sys.executable, "-c", COMPILE, json.dumps(cases)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.splitlines()[-1])
    assert len(report) == len(cases)
    for case in report:
        assert case["int8_mma"], case
        assert case["shared"] <= 227 * 1024, case  # an H100's shared memory per block
