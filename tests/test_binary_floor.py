"""benchmarks/binary_floor.py on a tiny store: the script that says where a binary query's time goes
at 10M runs end to end and reports what its docs table shows, so it cannot rot between the runs
on large machines."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fastret.search import binary

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("rows", [4_000, 60])  # 60: fewer rows than the defaults' candidates, all of them kept
def test_a_small_run_reports_every_search_and_what_they_allow(tmp_path, rows):
    k = 5
    done = subprocess.run([sys.executable, "binary_floor.py", "--n", str(rows), "--shards", "2", "--dir",
                           str(tmp_path / "store"), "--threads", "1,2", "--rounds", "2", "--singles", "2", "--k", str(k),
                           "--json", str(tmp_path / "floor.json")],
                          cwd=REPO / "benchmarks", capture_output=True, text=True, timeout=300)
    assert done.returncode in (0, 1), done.stdout[-3000:] + done.stderr[-3000:]  # 1: the 5x check failed
    report = json.loads((tmp_path / "floor.json").read_text())
    assert report["n"] == rows and report["k"] == k and [check["status"] for check in report["acceptance"]] in (
        ["PASS"], ["FAIL"])
    assert set(report["by_threads"]) == {"1", "2"}
    for row in report["by_threads"].values():
        for search in ("exact int8", "scan", "defaults"):
            assert len(row[search]["rounds_ms"]) == 2 and row[search]["single_ms"] > 0
        assert row["candidates"] == min(k * binary.auto_oversample(rows, k), rows)
        assert row["speedup_defaults"] == row["exact int8"]["single_ms"] / row["defaults"]["single_ms"]
        assert row["per_candidate_us"] >= 0


def test_bad_thread_counts_are_refused_with_what_was_expected():
    for threads in ("0", "two"):
        done = subprocess.run([sys.executable, "binary_floor.py", "--threads", threads], cwd=REPO / "benchmarks",
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and "--threads must be" in done.stderr
