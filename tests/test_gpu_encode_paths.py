"""benchmarks/gpu_encode_paths.py --dry-run: the packed encoding paths that a GPU run measures, at
tiny sizes on the CPU (pooling in Triton's interpreter), against the padded reference."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_dry_run_finds_packed_equal_to_padded(tmp_path):
    out = tmp_path / "paths.json"
    done = subprocess.run([sys.executable, "gpu_encode_paths.py", str(out), "--dry-run"], cwd=REPO / "benchmarks",
                          env={**os.environ, "PYTHONWARNINGS": "ignore"}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["ok"]
    assert set(report) == {"ok", "bert_mean", "bert_cls", "gpt_neox_last", "llama_last"}
    assert list(report["bert_mean"]["rows"]) == [
        "packed/padded", "packed/nested", "packed/padded/fuse_qkv=False", "packed/padded/fuse_add_norm=True",
        "packed/padded/fuse_bias_gelu=True", "packed/padded/compile=True"]
    assert list(report["gpt_neox_last"]["rows"]) == ["packed/padded", "packed/padded/compile=True"]
    for case in ("bert_mean", "gpt_neox_last"):  # compiled, its first pass timed apart
        compiled = report[case]["rows"]["packed/padded/compile=True"]
        # 7 texts, 3 a batch: the batches of three share one graph, the last (one text) has its own
        assert compiled["graphs"] == 2 and compiled["graph_breaks"] == 0 and compiled["first_pass_s"] > 0
    for case in ("bert_mean", "bert_cls", "gpt_neox_last", "llama_last"):
        result = report[case]
        assert result["tokens"] < result["padded_tokens"]  # the padded path did pad
        for row in result["rows"].values():
            assert row["max_abs_diff"] <= 1e-5 and row["min_cosine"] >= 0.99999
