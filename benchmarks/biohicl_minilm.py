"""The documented BioHiCL run: LoRA on all-MiniLM-L6-v2 with the shared MeSH-labelled abstracts.

Trains on the ~2,100 abstracts in ../shared/data/mesh_abstracts (10% held out) against the 2015
MeSH tree, then reports, before and after training, the held-out Spearman correlation of embedding
cosine (SimE) with MeSH label similarity (SimL), and NFCorpus nDCG@10 with the int8 index (the
train and dev queries are what `biohicl_sweep.py` chooses settings by; test is the reported figure).

    .venv/bin/python benchmarks/biohicl_minilm.py --json benchmarks/results/<date>-cpu-biohicl-minilm.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from fastret import Encoder  # noqa: E402
from fastret.encode.presets import default_model_path  # noqa: E402
from fastret.train import TrainConfig, train  # noqa: E402

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def nfcorpus_int8_ndcg(model_dir, splits: tuple[str, ...] = ("dev", "train", "test")) -> dict[str, float]:
    """NFCorpus nDCG@10 with the int8 index on each split, from one corpus encoding. Training never
    sees NFCorpus: its train and dev queries (2,914) choose settings, test is the reported figure."""
    from fastret.corpus import load_beir
    from fastret.evaluate import as_run, trec_metrics
    from fastret.search.index import Index

    encoder = Encoder(model_dir, device="cpu")
    datasets = {split: load_beir(SHARED / "nfcorpus", split) for split in splits}  # with train qrels
    corpus = datasets[splits[0]].corpus
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*were truncated")
        index = Index(encoder.dim)
        index.add(encoder.encode(corpus.documents(), batch_size=32))
        ndcg = {}
        for split, dataset in datasets.items():
            query_ids = list(dataset.queries)
            scores, rows = index.search(encoder.encode([dataset.queries[q] for q in query_ids]), 100)
            ndcg[split] = trec_metrics(dataset.qrels, as_run(query_ids, corpus.ids, scores, rows))["nDCG@10"]
    return ndcg


def training_config(output_dir: Path, **settings) -> TrainConfig:
    """The documented run's TrainConfig: the shared MeSH-labelled abstracts and 2015 tree, on the CPU."""
    data = sorted(str(p) for p in (SHARED / "mesh_abstracts").glob("*.jsonl"))
    return TrainConfig(model=str(default_model_path()), data=data,
                       mesh_tree=str(SHARED / "mesh" / "mesh2015_tree_numbers.tsv"), output_dir=str(output_dir),
                       device="cpu", eval_every=20, checkpoint_every=50, **settings)


def run_once(config: TrainConfig, ndcg_before: dict[str, float] | None) -> dict:
    """Train, export, and measure: a JSON-able report with before/after figures and the history."""
    start = time.perf_counter()
    result = train(config)
    train_minutes = (time.perf_counter() - start) / 60
    evals = [h for h in result.history if "heldout_spearman" in h]
    return {
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(config).items()},
        "train_minutes": train_minutes, "steps": result.steps,
        "heldout_spearman_before": evals[0]["heldout_spearman"], "heldout_spearman_after": evals[-1]["heldout_spearman"],
        "heldout_pairs": evals[-1]["heldout_pairs"],
        "nfcorpus_int8_ndcg10_before": ndcg_before,
        "nfcorpus_int8_ndcg10_after": None if ndcg_before is None else nfcorpus_int8_ndcg(result.model_dir),
        "history": result.history,
    }


def summary(report: dict) -> str:
    """Before -> after lines for a report of `run_once`."""
    lines = [f"trained {report['steps']} steps in {report['train_minutes']:.1f} min (CPU)",
             f"held-out Spearman(SimE, SimL) over {report['heldout_pairs']} pairs: "
             f"{report['heldout_spearman_before']:.4f} -> {report['heldout_spearman_after']:.4f}"]
    before, after = report["nfcorpus_int8_ndcg10_before"], report["nfcorpus_int8_ndcg10_after"]
    if before is not None:
        for split in after:
            lines.append(f"NFCorpus {split} nDCG@10 (int8 index): {before[split]:.4f} -> {after[split]:.4f} "
                         f"({after[split] - before[split]:+.4f})")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", type=Path, default=Path("runs/biohicl-minilm"),
                        help="checkpoints and the exported model (replaced on every run)")
    # defaults: the setting benchmarks/biohicl_sweep.py chose (docs/benchmarks.md, "BioHiCL on all-MiniLM-L6-v2")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--lambda-con", type=float, default=TrainConfig.lambda_con)
    parser.add_argument("--lambda-anchor", type=float, default=50.0)
    parser.add_argument("--skip-nfcorpus", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    config = training_config(args.output_dir, epochs=args.epochs, learning_rate=args.learning_rate,
                             batch_size=args.batch_size, max_length=args.max_length, lambda_con=args.lambda_con,
                             lambda_anchor=args.lambda_anchor)
    shutil.rmtree(args.output_dir / "checkpoints", ignore_errors=True)  # a fresh run each time
    before = None if args.skip_nfcorpus else nfcorpus_int8_ndcg(config.model)
    report = {"command": " ".join([sys.executable, *sys.argv]), **run_once(config, before)}
    print(f"command: {report['command']}")
    print(summary(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
