"""What searching vectors costs before the first query: the time and memory of `import fastret`, of
a process that maps a 1M x 384 store and answers 100 filtered queries, and of a Ray shard actor.

    .venv/bin/python benchmarks/import_footprint.py --label after --json benchmarks/results/DATE-cpu-import-footprint.json

Each measurement runs in a fresh process (imports are cached per process). Memory is read from
/proc/self/status: VmHWM (peak resident), VmRSS, and its parts RssAnon (what the process
allocated: Python, libraries, arrays) and RssFile (pages of mapped files: the store's codes a
search touched, shared libraries). `--label` names the run, so that runs of two versions of the
code go side by side into one JSON file (an existing file is updated, not replaced).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from harness import CACHE, cpu_info

ROWS, DIM, SHARD = 1_000_000, 384, 65_536
SEED = 3

MEMORY = textwrap.dedent("""
    def memory():
        fields = {}
        for line in open("/proc/self/status"):
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                fields[key] = round(int(value.split()[0]) / 1024, 1)  # MiB
        return fields
""")

IMPORT = MEMORY + textwrap.dedent("""
    import json, sys, time
    start = time.perf_counter()
    import fastret
    seconds = time.perf_counter() - start
    heavy = sorted(name for name in ("torch", "triton", "transformers") if name in sys.modules)
    print(json.dumps({"seconds": seconds, **memory(), "loaded": heavy}))
""")

SEARCH = MEMORY + textwrap.dedent("""
    import json, sys, time
    import numpy as np
    start = time.perf_counter()
    import fastret
    imported = memory()
    index = fastret.Index.load(sys.argv[1], verify=False)
    queries = np.random.default_rng(1).standard_normal((100, int(sys.argv[2]))).astype(np.float32)
    for query in queries:
        index.search(query, 10, filter={"year": {"$gte": 2023}})
    heavy = sorted(name for name in ("torch", "triton", "transformers") if name in sys.modules)
    print(json.dumps({"seconds": time.perf_counter() - start, "after_import": imported, **memory(),
                      "loaded": heavy}))
""")

ACTOR = MEMORY + textwrap.dedent("""
    import json, sys
    import ray
    from fastret.search.distributed import ShardedIndex
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    sharded = ShardedIndex.load(sys.argv[1], shards=1)
    actor = sharded._actors[0][0]
    def probe(server):
        import sys
        found = memory()
        found["loaded"] = sorted(name for name in ("torch", "triton", "transformers") if name in sys.modules)
        return found
    print(json.dumps(ray.get(actor.__ray_call__.remote(probe))))
    ray.shutdown()
""")


def build_store(directory: Path) -> None:
    """A 1M x 384 store of random unit vectors with a "year" field (1990-2024), made once."""
    from fastret.storage import store
    from fastret.storage.fields import StoredFields
    from fastret.storage.segment_files import add_fields

    if (directory / store.MANIFEST).exists():
        return
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    for number, first in enumerate(range(0, ROWS, SHARD)):
        rows = min(SHARD, ROWS - first)
        vectors = rng.standard_normal((rows, DIM)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        codes = np.clip(np.rint(vectors / (np.abs(vectors).max(axis=1, keepdims=True) / 127)), -127, 127)
        scales = (np.abs(vectors).max(axis=1) / 127).astype(np.float32)
        store.write_shard(directory, number, [f"pmid-{first + i}" for i in range(rows)], first,
                          codes.astype(np.int8), scales, None)
        add_fields(directory / f"{store.shard_name(number)}.frt",
                   StoredFields.from_records([{"year": int(y)} for y in rng.integers(1990, 2025, rows)]))
    store.write_manifest(directory, {"dim": DIM, "float16": False, "synthetic_seed": SEED}, complete=True)


def run(script: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", required=True, help="the name of this run (e.g. before, after)")
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes timing `import fastret`")
    parser.add_argument("--store", type=Path, default=CACHE / "footprint-store-1m")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    build_store(args.store)
    imports = [run(IMPORT) for _ in range(args.repeats)]
    result = {
        "import_fastret": {"median_seconds": round(statistics.median(r["seconds"] for r in imports), 3),
                           "peak_rss_mib": max(r["VmHWM"] for r in imports), "loaded": imports[0]["loaded"]},
        "store_1m_100_filtered_queries": run(SEARCH, str(args.store), str(DIM)),
        "ray_shard_actor": run(ACTOR, str(args.store)),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        report = json.loads(args.json.read_text()) if args.json.exists() else {}
        report.setdefault("runs", {})[args.label] = result
        report.update({"command": "benchmarks/import_footprint.py --label LABEL --json " + str(args.json),
                       "machine": cpu_info()})
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
