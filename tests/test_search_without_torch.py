"""Searching vectors needs neither torch, triton nor transformers: the vector-level API (index, store,
filters with MeSH, stored fields, rescoring, the binary stage, BM25, the Ray shard actors' module)
runs with them blocked, and gives bit for bit what it gives with them loaded."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastret

BLOCK = 'import sys\nfor name in ("torch", "triton", "transformers"):\n    sys.modules[name] = None  # import fails\n'

WORK = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import numpy as np
    import fastret
    import fastret.search.distributed  # what each Ray shard actor imports
    from fastret.search.filters import Filter
    from fastret.search.lexical import LexicalIndex

    out = Path(sys.argv[1])
    (out / "mesh.tsv").write_text("mesh_id\\tmesh_name\\tmesh_tree_number\\n"
                                  "D1\\tNeoplasms\\tC04\\nD2\\tCarcinoma\\tC04.557\\nD3\\tHumans\\tB01.050\\n")
    tree = fastret.MeshTree.from_file(out / "mesh.tsv")
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((300, 16)).astype(np.float32)
    queries = rng.standard_normal((4, 16)).astype(np.float32)
    texts = [f"statins cholesterol trial {i % 7} cohort {i % 11}" for i in range(300)]
    index = fastret.Index(16, store_float16=True)
    index.add(vectors, documents=[f"doc{i}" for i in range(300)],
              fields=[{"year": 2000 + i % 25, "mesh": [["Carcinoma"], ["Humans"], []][i % 3]} for i in range(300)])
    index.delete([3, 7, 200])
    (out / "store").mkdir()
    index.save(out / "store")
    index.save(out / "one.frt")
    found = {}
    for name in ("store", "one.frt"):
        loaded = fastret.Index.load(out / name)
        loaded.delete([11])
        found[name] = [
            loaded.search(queries, 5),
            loaded.search(queries, 5, rescore=True),
            loaded.search(queries, 5, first_stage="binary", oversample=3),
            loaded.search(queries, 5, filter={"year": {"$gte": 2020}}),
            loaded.search(queries, 5, filter=Filter({"mesh": {"$under": "C04"}}, mesh=tree)),
        ]
        found[name] = [[scores.tolist(), ids.tolist()] for scores, ids in found[name]]
        found[name].append(loaded.fields([0, 1], names=["year"]))
        found[name].append(loaded.documents([0, 299]).tolist())
    codes, scales = fastret.quantize_int8(vectors)
    lexical = LexicalIndex.build(texts)
    scores, ids = lexical.search(["statins trial 3"], 4)
    found["quantized"] = [codes.tolist(), scales.tolist()]
    found["bm25"] = [scores.tolist(), ids.tolist()]
    found["loaded"] = sorted(name for name in ("torch", "triton", "transformers") if sys.modules.get(name))
    print(json.dumps(found))
""")


def run(script, tmp_path):
    tmp_path.mkdir()
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_vector_level_api_runs_without_torch_and_answers_the_same(tmp_path):
    blocked = run(BLOCK + WORK, tmp_path / "blocked")
    loaded = run("import torch\n" + WORK, tmp_path / "loaded")  # the same work with torch in the process
    assert blocked["loaded"] == [] and loaded["loaded"] == ["torch"]
    for key in ("store", "one.frt", "quantized", "bm25"):
        assert blocked[key] == loaded[key], key


def test_the_names_that_need_torch_load_it_on_first_use():
    done = subprocess.run([sys.executable, "-c", "import sys, fastret\n"
                           "assert 'torch' not in sys.modules\n"
                           "from fastret import Encoder, pool_normalize\n"
                           "assert 'torch' in sys.modules and Encoder.__module__ == 'fastret.encode.encoder'\n"
                           "assert fastret.mesh_similarity.__module__ == 'fastret.kernels.mesh_similarity'\n"
                           "assert 'Encoder' in dir(fastret)\n"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    with pytest.raises(AttributeError, match="module 'fastret' has no attribute 'Encodr'"):
        fastret.Encodr  # noqa: B018


def test_torch_and_numpy_inputs_quantize_to_the_same_codes():
    import torch

    x = np.random.default_rng(4).standard_normal((37, 129)).astype(np.float32)
    x[3] = 0
    codes, scales = fastret.quantize_int8(x)
    torch_codes, torch_scales = fastret.quantize_int8(torch.from_numpy(x))
    np.testing.assert_array_equal(codes, torch_codes.numpy())
    np.testing.assert_array_equal(scales, torch_scales.numpy())
