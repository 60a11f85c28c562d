"""Choose the BioHiCL settings for the documented MiniLM run by NFCorpus train and dev, not test.

Each setting trains LoRA on the shared MeSH-labelled abstracts (as `biohicl_minilm.py` does) and is
scored by held-out Spearman(SimE, SimL) and NFCorpus nDCG@10 with the int8 index on every split
(training never sees NFCorpus). The pick: the highest held-out Spearman among settings whose train
and dev nDCG@10 each fall by at most `--max-drop` (default 0: no loss at all on those 2,914
queries, as test can differ from them by a few thousandths); its test figures are the ones to
report. The JSON is rewritten after every run.

    .venv/bin/python benchmarks/biohicl_sweep.py --json benchmarks/results/<date>-cpu-biohicl-sweep.json \\
        --settings 2e-4:2:0.1 2e-4:2:0.1:10 2e-4:2:0.1:50
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from biohicl_minilm import nfcorpus_int8_ndcg, run_once, summary, training_config  # noqa: E402


def parse_setting(text: str) -> dict:
    """"LR:EPOCHS:LAMBDA_CON[:LAMBDA_ANCHOR]" -> TrainConfig fields."""
    try:
        lr, epochs, lambda_con, *rest = text.split(":")
        if len(rest) > 1:
            raise ValueError
        return {"learning_rate": float(lr), "epochs": int(epochs), "lambda_con": float(lambda_con),
                "lambda_anchor": float(rest[0]) if rest else 0.0}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LR:EPOCHS:LAMBDA_CON[:LAMBDA_ANCHOR] such as 2e-4:1:0.1:1, "
                                         f"got {text!r}") from None


def pick(runs: list[dict], max_drop: float) -> dict | None:
    """The run with the highest held-out Spearman whose NFCorpus train and dev nDCG@10 drops are
    within bounds."""
    def worst_drop(run):
        before, after = run["nfcorpus_int8_ndcg10_before"], run["nfcorpus_int8_ndcg10_after"]
        return max(before[split] - after[split] for split in ("train", "dev"))

    allowed = [run for run in runs if worst_drop(run) <= max_drop]
    return max(allowed, key=lambda run: run["heldout_spearman_after"], default=None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", type=parse_setting, nargs="+", required=True, metavar="LR:EPOCHS:LAMBDA_CON[:LAMBDA_ANCHOR]")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--max-drop", type=float, default=0.0)
    parser.add_argument("--output-dir", type=Path, default=Path("runs/biohicl-sweep"))
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()

    base = training_config(args.output_dir)
    before = nfcorpus_int8_ndcg(base.model)
    print("base model NFCorpus nDCG@10 (int8 index): " + ", ".join(f"{k} {v:.4f}" for k, v in before.items()), flush=True)
    sweep = {"command": " ".join([sys.executable, *sys.argv]), "nfcorpus_int8_ndcg10_before": before, "runs": []}
    for setting in args.settings:
        name = "lr{learning_rate:g}-ep{epochs}-con{lambda_con:g}-anchor{lambda_anchor:g}".format(**setting)
        config = training_config(args.output_dir / name, max_length=args.max_length, **setting)
        shutil.rmtree(args.output_dir / name / "checkpoints", ignore_errors=True)  # a fresh run each time
        report = {"name": name, **run_once(config, before)}
        sweep["runs"].append(report)
        print(f"== {name}\n{summary(report)}", flush=True)
        chosen = pick(sweep["runs"], args.max_drop)
        sweep["chosen"] = None if chosen is None else chosen["name"]
        args.json.write_text(json.dumps(sweep, indent=1) + "\n")
    print(f"chosen (highest held-out Spearman, NFCorpus train and dev drops <= {args.max_drop}): {sweep['chosen']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
