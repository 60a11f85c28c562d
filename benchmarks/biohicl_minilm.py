"""The documented BioHiCL run: LoRA on all-MiniLM-L6-v2 with the shared MeSH-labelled abstracts.

Trains on the ~2,100 abstracts in ../shared/data/mesh_abstracts (10% held out) against the 2015
MeSH tree, then reports, before and after training, the held-out Spearman correlation of embedding
cosine (SimE) with MeSH label similarity (SimL), and NFCorpus test nDCG@10 with the int8 index.

    .venv/bin/python benchmarks/biohicl_minilm.py --json benchmarks/results/<date>-cpu-biohicl-minilm.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fastret import Encoder  # noqa: E402
from fastret.evaluate import evaluate_retrieval  # noqa: E402
from fastret.presets import default_model_path  # noqa: E402
from fastret.train import TrainConfig, train  # noqa: E402

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def nfcorpus_int8_ndcg(model_dir) -> float:
    from fastret.data import BUNDLED_NFCORPUS

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*were truncated")
        report = evaluate_retrieval(Encoder(model_dir, device="cpu"), BUNDLED_NFCORPUS, methods=("int8",),
                                    show_progress_bar=False)
    return report.metrics["int8"]["nDCG@10"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", type=Path, default=Path("runs/biohicl-minilm"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--skip-nfcorpus", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    base = default_model_path()
    data = sorted(str(p) for p in (SHARED / "mesh_abstracts").glob("*.jsonl"))
    config = TrainConfig(model=str(base), data=data, mesh_tree=str(SHARED / "mesh" / "mesh2015_tree_numbers.tsv"),
                         output_dir=str(args.output_dir), epochs=args.epochs, learning_rate=args.learning_rate,
                         batch_size=args.batch_size, max_length=args.max_length, device="cpu",
                         eval_every=20, checkpoint_every=50)
    before = None if args.skip_nfcorpus else nfcorpus_int8_ndcg(base)
    start = time.perf_counter()
    result = train(config)
    train_minutes = (time.perf_counter() - start) / 60
    after = None if args.skip_nfcorpus else nfcorpus_int8_ndcg(result.model_dir)

    evals = [h for h in result.history if "heldout_spearman" in h]
    report = {
        "command": " ".join([sys.executable, *sys.argv]), "config": {k: (list(v) if isinstance(v, tuple) else v)
                                                                     for k, v in vars(config).items()},
        "train_minutes": train_minutes, "steps": result.steps,
        "heldout_spearman_before": evals[0]["heldout_spearman"], "heldout_spearman_after": evals[-1]["heldout_spearman"],
        "heldout_pairs": evals[-1]["heldout_pairs"],
        "nfcorpus_int8_ndcg10_before": before, "nfcorpus_int8_ndcg10_after": after, "history": result.history,
    }
    print(f"command: {report['command']}")
    print(f"trained {result.steps} steps in {train_minutes:.1f} min (CPU)")
    print(f"held-out Spearman(SimE, SimL) over {report['heldout_pairs']} pairs: "
          f"{report['heldout_spearman_before']:.4f} -> {report['heldout_spearman_after']:.4f}")
    if before is not None:
        print(f"NFCorpus test nDCG@10 (int8 index): {before:.4f} -> {after:.4f} ({after - before:+.4f})")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
