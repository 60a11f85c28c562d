"""NFCorpus nDCG@10 with the int8 index on the dev, train and test splits, for trained models.

The BioHiCL runs choose their settings by the train and dev queries, never by test; this scores
models that already exist (for example the sweep's exports) on every split from one corpus encoding.

    .venv/bin/python benchmarks/nfcorpus_splits.py runs/biohicl-sweep/*/model --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from biohicl_minilm import nfcorpus_int8_ndcg  # noqa: E402
from fastret.encode.presets import default_model_path  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="model directories (the default model is scored first)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    report = {"command": " ".join([sys.executable, *sys.argv]), "models": {}}
    for model in [str(default_model_path()), *args.models]:
        report["models"][model] = ndcg = nfcorpus_int8_ndcg(model)
        print(f"{model}: " + ", ".join(f"{split} {value:.4f}" for split, value in ndcg.items()), flush=True)
        if args.json:
            args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
