"""The binary first stage on a GPU: the popcount kernel (fastret.kernels.binary_scores) against the
numpy reference, and the candidates it leads to (torch_backend.binary_scan_candidates) against the
C++ core's binary_candidates, in Triton's interpreter at tiny sizes (conftest sets TRITON_INTERPRET=1
without a GPU)."""

import numpy as np
import pytest
import torch

import fastret
from fastret.kernels.binary_scores import binary_scores, binary_scores_ref
from fastret.search import binary
from fastret.search.core import binary_candidates, narrowed
from fastret.search.rules import query_codes
from fastret.search.torch_backend import binary_scan_candidates
from fastret.storage import sign_bits

from conftest import HAS_CUDA, unit_rows

DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")


@pytest.mark.parametrize("n, dim, query_bits", [(1, 8, 1), (37, 16, 4), (300, 100, 1), (1030, 384, 4), (9, 130, 8)])
def test_scores_equal_the_reference(rng, n, dim, query_bits):
    """Irregular row counts (a partial block of 8, a partial program), dims off a word, every B."""
    codes = rng.integers(-127, 128, (n, dim)).astype(np.int8)
    q_codes = rng.integers(-63, 64, (3, dim)).astype(np.int8)
    planes = binary.query_planes(q_codes, query_bits)
    expected = binary.binary_scores_ref(planes, sign_bits.sign_bit_rows(codes), dim)
    args = (torch.from_numpy(planes.view(np.int64)).to(DEVICE),
            torch.from_numpy(sign_bits.sign_bits(codes).view(np.int64)).to(DEVICE), n, dim)
    got = binary_scores(*args)
    assert got.dtype == torch.int32
    np.testing.assert_array_equal(got.cpu().numpy(), expected)
    np.testing.assert_array_equal(binary_scores_ref(*args).cpu().numpy(), expected)


def test_scores_refuse_bad_input(rng):
    planes = torch.zeros((2, 4, 1), dtype=torch.int64)
    bits = torch.zeros((2, 1, 8), dtype=torch.int64)
    with pytest.raises(TypeError, match="planes must be an int64 tensor"):
        binary_scores(planes.int(), bits, 10, 16)
    with pytest.raises(ValueError, match="planes must be \\[q >= 1, 1 <= B <= 8, 2\\] for dim 65"):
        binary_scores(planes, bits, 10, 65)
    with pytest.raises(ValueError, match="bits must be \\[>= 3, 1, 8\\] for 17 rows"):
        binary_scores(planes, bits, 17, 16)


@pytest.mark.parametrize("oversample", [1, 3, 1000])
def test_candidates_equal_the_core(rng, tmp_path, oversample):
    """Two segments (a mapped file with its bits, an in-memory one), deletes in both, duplicated
    rows (ties in both stages), 1-bit and 4-bit queries, a filter; oversample 1 (the first stage
    alone decides), a few, and past every row (the exact search)."""
    dim = 40
    docs = unit_rows(rng, 240, dim)
    docs[150:180] = docs[:30]
    ids = rng.permutation(240).astype(np.int64) + 5
    first = fastret.Index(dim, store_float16=True)
    first.add(docs[:120], ids[:120])
    first.save(tmp_path / "a.frt")
    index = fastret.Index.load(tmp_path / "a.frt")
    index.add(docs[120:], ids[120:])
    index.delete(ids[[0, 3, 130, 151]])
    queries = unit_rows(rng, 3, dim)
    queries[1] = docs[1]
    q_codes, q_scales, q_floats = query_codes(queries, dim)
    on_device = [torch.from_numpy(a).to(DEVICE) for a in (q_codes, q_scales, q_floats)]
    segments = index.segments
    mask = [rng.random(len(s)) < 0.6 for s in segments]
    kept, allowed, _ = narrowed(segments, mask, pick=False)
    for searched, selection in ((segments, None), (kept, allowed)):
        for c, query_bits in ((1, 4), (10, 1), (10, 4)):
            expected = binary_candidates(searched, q_codes, q_scales, c, q_floats, selection, oversample=oversample,
                                         query_bits=query_bits)
            got = binary_scan_candidates(searched, *on_device[:2], c, on_device[2], selection, oversample=oversample,
                                         query_bits=query_bits)
            np.testing.assert_array_equal(got[1], expected[1])
            np.testing.assert_array_equal(got[0], expected[0])
            np.testing.assert_allclose(got[2], expected[2], rtol=1e-5, atol=1e-7)  # torch sums in its own order


COMPILE = """
import json
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from fastret.kernels.binary_scores import _binary_scores_kernel

report = []
for words, query_bits in ((6, 4), (12, 1), (2, 8)):
    signature = {"PLANES": "*i64", "BITS": "*i64", "OUT": "*i32", "n_rows": "i32", "dim": "i32",
                 "WORDS": "constexpr", "QUERY_BITS": "constexpr", "BLOCK_R": "constexpr"}
    source = ASTSource(fn=_binary_scores_kernel, signature=signature,
                       constexprs={"WORDS": words, "QUERY_BITS": query_bits, "BLOCK_R": 256},
                       attrs={(i,): [["tt.divisibility", 16]] for i in (0, 1, 2)})
    kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    report.append({"words": words, "popc": "popc" in kernel.asm["ptx"]})
print(json.dumps(report))
"""


def test_kernel_compiles_for_hopper(tmp_path):
    """The popcount kernel compiles to sm_90 code (384-, 768- and 128-dim rows; 4, 1 and 8 query
    bits), the SWAR count turned into the popc instruction: what the interpreter cannot show."""
    pytest.importorskip("triton.backends.nvidia", reason="triton without its NVIDIA backend")
    import json
    import os
    import subprocess
    import sys

    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    done = subprocess.run([sys.executable, "-c", COMPILE], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.splitlines()[-1])
    assert [case["words"] for case in report] == [6, 12, 2] and all(case["popc"] for case in report)
